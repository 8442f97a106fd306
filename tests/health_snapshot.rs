//! Breaker snapshots read on the clock, listing of keyed breakers, and reset events.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;
use tower::{Service, ServiceExt, service_fn};
use tower_rampart::{
    circuit_breaker::{Breaker, CircuitBreakerLayer, Config, EventKind, State},
    classify::Outcome,
};

const OPEN: Duration = Duration::from_secs(5);
const MAX_WAIT: Duration = Duration::from_secs(10);

fn config(name: &str) -> tower_rampart::circuit_breaker::Builder {
    Config::builder()
        .name(name)
        .consecutive_failures(1)
        .open_duration(OPEN)
        .half_open_permits(2)
        .half_open_max_wait(MAX_WAIT)
}

#[tokio::test(start_paused = true)]
async fn open_breaker_reads_half_open_once_its_wait_is_over() {
    let layer = CircuitBreakerLayer::new(config("ledger").build().unwrap());
    let handle = layer.handle();
    let mut svc = tower::ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(|fail: bool| async move {
            if fail { Err("down") } else { Ok(()) }
        }));
    svc.ready().await.unwrap().call(true).await.unwrap_err();
    let opened = Instant::now();

    tokio::time::advance(Duration::from_secs(2)).await;
    let s = handle.snapshot();
    assert_eq!(&*s.name, "ledger");
    assert_eq!((s.state, s.awaiting_call), (State::Open, false));
    assert_eq!(s.since, opened);
    assert_eq!(s.time_in_state, Duration::from_secs(2));
    assert_eq!(s.retry_after, Some(Duration::from_secs(3)));
    assert_eq!(s.half_open_permits_free, None);

    // No call is made: the clock alone makes the next call a probe.
    tokio::time::advance(Duration::from_secs(4)).await;
    let s = handle.snapshot();
    assert_eq!((s.state, s.awaiting_call), (State::HalfOpen, true));
    assert_eq!(s.since, opened + OPEN);
    assert_eq!(s.time_in_state, Duration::from_secs(1));
    assert_eq!(s.retry_after, None);
    assert_eq!(s.half_open_permits_free, Some(2));
    assert_eq!(
        handle.state(),
        State::Open,
        "the breaker moves at its next call"
    );

    // A due half-open period does not time out before it starts.
    tokio::time::advance(MAX_WAIT * 3).await;
    assert_eq!(handle.snapshot().state, State::HalfOpen);

    // The next call is indeed a probe.
    svc.ready().await.unwrap().call(false).await.unwrap();
    let s = handle.snapshot();
    assert_eq!(handle.state(), State::HalfOpen);
    assert_eq!((s.state, s.awaiting_call), (State::HalfOpen, false));
    assert_eq!(s.half_open_permits_free, Some(1), "one of two probes spent");
}

#[tokio::test(start_paused = true)]
async fn half_open_breaker_reads_open_past_its_max_wait() {
    let layer = CircuitBreakerLayer::new(config("ledger").build().unwrap());
    let handle = layer.handle();
    let breaker = handle.breaker();
    let p = breaker.try_acquire(Instant::now).unwrap();
    breaker.record(p, &Outcome::FAILURE, Instant::now);
    tokio::time::advance(OPEN).await;
    // A probe that hangs, holding its permit.
    let probe = breaker.try_acquire(Instant::now).expect("probe");
    assert!(probe.is_probe());
    let half_open_at = Instant::now();
    let s = handle.snapshot();
    assert_eq!((s.state, s.awaiting_call), (State::HalfOpen, false));
    assert_eq!(s.half_open_permits_free, Some(1));

    tokio::time::advance(MAX_WAIT - Duration::from_millis(1)).await;
    assert_eq!(handle.snapshot().state, State::HalfOpen);
    tokio::time::advance(Duration::from_millis(2)).await;
    let s = handle.snapshot();
    assert_eq!((s.state, s.awaiting_call), (State::Open, true));
    assert_eq!(s.since, half_open_at + MAX_WAIT);
    assert_eq!(s.time_in_state, Duration::from_millis(1));
    assert_eq!(
        s.retry_after,
        Some(OPEN),
        "the next call opens it for the open duration"
    );
    assert_eq!(s.half_open_permits_free, None);
    assert_eq!(handle.state(), State::HalfOpen);

    // The next call makes it so, and is refused for the time the snapshot announced.
    let refused = breaker.try_acquire(Instant::now).unwrap_err();
    assert_eq!(refused.state(), State::Open);
    assert_eq!(refused.retry_after(), Some(OPEN));
    assert_eq!(handle.state(), State::Open);
    breaker.release(probe);
}

#[test]
fn snapshots_follow_a_fake_clock() {
    let b = Breaker::new(config("fake").build().unwrap());
    let t0 = Instant::now();
    let p = b.try_acquire(|| t0).unwrap();
    b.record(p, &Outcome::FAILURE, || t0);
    assert_eq!(
        b.snapshot(t0 + OPEN - Duration::from_nanos(1)).state,
        State::Open
    );
    let s = b.snapshot(t0 + OPEN);
    assert_eq!(
        (s.state, s.awaiting_call, s.since),
        (State::HalfOpen, true, t0 + OPEN)
    );
    // Readings change nothing.
    assert_eq!(b.state(), State::Open);
    let t1 = t0 + OPEN * 2;
    let probe = b.try_acquire(|| t1).unwrap();
    assert_eq!(b.snapshot(t1 + MAX_WAIT).state, State::Open);
    assert_eq!(
        b.snapshot(t1 + MAX_WAIT - Duration::from_nanos(1)).state,
        State::HalfOpen
    );
    b.release(probe);

    // Without a half-open max wait a half-open breaker waits for its probes.
    let b = Breaker::new(config("patient").half_open_max_wait(None).build().unwrap());
    let t0 = Instant::now();
    let p = b.try_acquire(|| t0).unwrap();
    b.record(p, &Outcome::FAILURE, || t0);
    let probe = b.try_acquire(|| t0 + OPEN).unwrap();
    assert_eq!(b.snapshot(t0 + OPEN * 100).state, State::HalfOpen);
    b.release(probe);
}

#[test]
fn reset_emits_an_event_from_every_state() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let layer = CircuitBreakerLayer::new(
        config("reset")
            .on_event(move |e| {
                if matches!(
                    e.kind,
                    EventKind::Transition { .. } | EventKind::Reset { .. }
                ) {
                    log.lock().unwrap().push(e.kind);
                }
            })
            .build()
            .unwrap(),
    );
    let h = layer.handle();
    let b = h.breaker();
    let t0 = Instant::now();
    let take = || std::mem::take(&mut *seen.lock().unwrap());
    let moved = |from| {
        vec![
            EventKind::Transition {
                from,
                to: State::Closed,
            },
            EventKind::Reset { from },
        ]
    };

    h.reset();
    assert_eq!(
        take(),
        [EventKind::Reset {
            from: State::Closed
        }]
    );

    let p = b.try_acquire(|| t0).unwrap();
    b.record(p, &Outcome::FAILURE, || t0);
    take();
    h.reset();
    assert_eq!(take(), moved(State::Open));

    let p = b.try_acquire(|| t0).unwrap();
    b.record(p, &Outcome::FAILURE, || t0);
    let probe = b.try_acquire(|| t0 + OPEN * 10).unwrap();
    assert_eq!(h.state(), State::HalfOpen);
    take();
    h.reset();
    assert_eq!(take(), moved(State::HalfOpen));
    b.release(probe);

    for (steer, state) in [
        (&(|| h.force_open()) as &dyn Fn(), State::ForcedOpen),
        (&|| h.disable(), State::Disabled),
        (&|| h.metrics_only(), State::MetricsOnly),
    ] {
        steer();
        take();
        h.reset();
        assert_eq!(take(), moved(state), "reset from {state}");
    }
    h.reset();
    h.reset();
    assert_eq!(take().len(), 2, "every reset emits one");
}

#[tokio::test(start_paused = true)]
async fn keyed_breakers_are_listed_with_their_snapshots() {
    let layer = CircuitBreakerLayer::keyed(
        config("api").build().unwrap(),
        |req: &(&'static str, bool)| req.0,
    )
    .max_keys(2);
    let breakers = layer.breakers();
    let mut svc = tower::ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(|(_, fail): (&'static str, bool)| async move {
            if fail { Err("down") } else { Ok::<_, &str>(()) }
        }));
    for (host, fail) in [("a", false), ("b", true), ("c", true), ("d", false)] {
        let _ = svc.ready().await.unwrap().call((host, fail)).await;
    }
    // "a" was evicted for "c"; "d" found both slots open and went to the overflow breaker.
    let mut listed: Vec<_> = breakers
        .snapshots(Instant::now())
        .into_iter()
        .map(|(k, s)| (k, s.name.to_string(), s.state))
        .collect();
    listed.sort_by(|x, y| x.1.cmp(&y.1));
    assert_eq!(
        listed,
        [
            (None, "api/(other)".to_owned(), State::Closed),
            (Some("b"), "api/b".to_owned(), State::Open),
            (Some("c"), "api/c".to_owned(), State::Open),
        ]
    );
    tokio::time::advance(OPEN).await;
    assert!(
        breakers
            .handles()
            .iter()
            .filter(|(k, _)| k.is_some())
            .all(|(_, h)| h.snapshot().state == State::HalfOpen)
    );
}
