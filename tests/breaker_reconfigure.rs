//! Reconfiguring running breakers: keyed families retune like single breakers, a replacement
//! never loses an opening of the breaker it replaces, keyed eviction never orphans calls in
//! flight, and every kind of breaker layer offers a handle.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::SeqCst},
    },
    thread,
    time::Duration,
};

use tokio::time::Instant;
use tower_rampart::{
    circuit_breaker::{
        Breaker, CircuitBreakerHandle, CircuitBreakerLayer, Config, LiveBreaker, Reconfigured,
        State,
    },
    classify::Outcome,
    registry::Registry,
};

fn fail(b: &Breaker) {
    let p = b.try_acquire(Instant::now).expect("admitted");
    b.record(p, &Outcome::FAILURE, Instant::now);
}

fn in_a_row(n: u32) -> Config {
    Config::builder()
        .name("hosts")
        .consecutive_failures(n)
        .build()
        .unwrap()
}

/// Issue #14 item 9: threshold 5 -> 3 after two failures, then one more failure.
#[test]
fn a_keyed_family_retunes_a_new_consecutive_threshold_keeping_the_runs() {
    let layer = CircuitBreakerLayer::keyed(in_a_row(5), |k: &String| k.clone());
    let family = layer.breakers();
    let b = family.get_or_insert("a".to_owned(), Instant::now());
    fail(&b);
    fail(&b);
    let r = family.reconfigure(in_a_row(3));
    fail(&family.get_or_insert("a".to_owned(), Instant::now()));
    let state = family.get("a").unwrap().state();
    assert_eq!((r, state), (Reconfigured::Retuned, State::Open));
    assert!(Arc::ptr_eq(
        &b,
        &family.get_or_insert("a".to_owned(), Instant::now())
    ));
}

/// The same through the registry's client stack, whose per-host breakers are a keyed family.
#[test]
fn a_registry_client_stack_retunes_a_new_consecutive_threshold() {
    let file = |n: u32| {
        serde_json::json!({
            "policies": {"payments": {"circuit_breaker": {"consecutive_failures": n}}},
        })
    };
    let registry = Registry::from_value(file(5)).unwrap();
    let family = registry.client("payments").unwrap().breakers();
    let host = axum::http::uri::Authority::from_static("pay.example:443");
    let b = family.get_or_insert(host.clone(), Instant::now());
    fail(&b);
    fail(&b);
    registry.reload_value(file(3)).unwrap();
    fail(&family.get_or_insert(host.clone(), Instant::now()));
    assert_eq!(family.get(&host).unwrap().state(), State::Open);
}

/// Issue #14 item 12a: an opening of the replaced breaker is never lost. A call admitted before
/// the reload that fails after it opens the old breaker: its successor opens too, as it would
/// have had the failure come a moment earlier.
#[test]
fn a_replaced_live_breaker_that_opens_afterwards_opens_its_successor() {
    let live = LiveBreaker::new(in_a_row(1));
    let old = live.current();
    let in_flight = old.try_acquire(Instant::now).unwrap();
    let other_window = Config::builder()
        .name("hosts")
        .count_window(10)
        .minimum_calls(5)
        .build()
        .unwrap();
    assert_eq!(live.reconfigure(other_window), Reconfigured::Replaced);
    assert_eq!(live.current().state(), State::Closed);
    old.record(in_flight, &Outcome::FAILURE, Instant::now);
    assert_eq!(old.state(), State::Open);
    assert_eq!(
        live.current().state(),
        State::Open,
        "the opening reached the breaker now serving"
    );
}

/// The race the issue describes, run many times: a failure that opens the breaker races a
/// reload that replaces it; whichever wins, the breaker serving afterwards is open.
#[test]
fn an_opening_racing_a_replacement_is_never_lost() {
    for i in 0..300 {
        let live = LiveBreaker::new(in_a_row(1));
        let old = live.current();
        let permit = old.try_acquire(Instant::now).unwrap();
        let go = Arc::new(AtomicBool::new(false));
        let g = go.clone();
        let failing = thread::spawn(move || {
            while !g.load(SeqCst) {
                std::hint::spin_loop();
            }
            old.record(permit, &Outcome::FAILURE, Instant::now);
        });
        let size = 10 + (i % 7);
        let config = Config::builder()
            .count_window(size)
            .minimum_calls(5)
            .build()
            .unwrap();
        go.store(true, SeqCst);
        assert_eq!(live.reconfigure(config), Reconfigured::Replaced);
        failing.join().unwrap();
        assert_eq!(live.current().state(), State::Open, "round {i}");
    }
}

/// Issue #14 item 12b: a keyed breaker with a call in flight is not evicted (idle or to make
/// room): the call's outcome lands in the breaker its key uses.
#[tokio::test(start_paused = true)]
async fn keyed_eviction_keeps_breakers_with_calls_in_flight() {
    let layer = CircuitBreakerLayer::keyed(in_a_row(1), |k: &String| k.clone())
        .max_keys(1)
        .idle_timeout(Duration::from_secs(60));
    let family = layer.breakers();
    let slow = family.get_or_insert("slow".to_owned(), Instant::now());
    let permit = slow.try_acquire(Instant::now).unwrap();
    // A long call: idle timeout passes, and another key wants the only slot.
    tokio::time::advance(Duration::from_secs(120)).await;
    family.evict_idle(Instant::now());
    let other = family.get_or_insert("other".to_owned(), Instant::now());
    assert!(
        family.get("slow").is_some(),
        "a breaker with a call in flight stays"
    );
    assert_eq!(
        other.name(),
        "hosts/(other)",
        "no slot: the overflow breaker"
    );
    slow.record(permit, &Outcome::FAILURE, Instant::now);
    drop(slow);
    let b = family.get_or_insert("slow".to_owned(), Instant::now());
    assert_eq!(b.state(), State::Open, "the failure counted for its key");
}

/// Issue #14 item 17: every breaker layer offers `handle()`, the registry's included, and a
/// live breaker's handle follows replacements.
#[test]
fn every_breaker_layer_offers_a_handle() {
    let registry = Registry::from_value(serde_json::json!({
        "policies": {"payments": {"circuit_breaker": {"consecutive_failures": 2}}},
    }))
    .unwrap();
    let layer = registry.circuit_breaker("payments").unwrap();
    let handle: CircuitBreakerHandle = layer.handle();
    handle.force_open();
    assert_eq!(
        registry
            .circuit_breaker("payments")
            .unwrap()
            .handle()
            .state(),
        State::ForcedOpen
    );
    handle.reset();

    let live = LiveBreaker::new(in_a_row(1));
    let handle = CircuitBreakerLayer::live(live.clone()).handle();
    live.reconfigure(
        Config::builder()
            .name("hosts")
            .count_window(5)
            .minimum_calls(5)
            .build()
            .unwrap(),
    );
    handle.force_open();
    assert_eq!(
        live.current().state(),
        State::ForcedOpen,
        "the handle follows the replacement"
    );
    assert_eq!(handle.snapshot().state, State::ForcedOpen);
    assert_eq!(live.handle().name(), "hosts");

    let leaked = CircuitBreakerLayer::new(in_a_row(1)).leak();
    assert_eq!(leaked.handle().name(), "hosts");
    let keyed = CircuitBreakerLayer::keyed(in_a_row(1), |k: &String| k.clone());
    keyed.handle().get_or_insert("a".to_owned(), Instant::now());
    assert_eq!(keyed.breakers().keys(), ["a"]);
    let keyed = keyed
        .classify(tower_rampart::classify::HttpStatus::default())
        .respond_http();
    assert_eq!(keyed.handle().len(), 1);
    let plain = CircuitBreakerLayer::new(in_a_row(1)).respond_http();
    assert_eq!(plain.handle().name(), "hosts");
}
