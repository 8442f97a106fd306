//! Fault promises of the circuit breaker, through the public API: a panic in `call`, a panic
//! while the inner future is polled, a response future dropped at any point in any state, a
//! probe that never finishes, and keyed breakers under pressure. Whatever happens, the breaker
//! must not wedge.

mod common;

use std::{
    future::{Future, pending},
    panic::{AssertUnwindSafe, catch_unwind},
    pin::Pin,
    sync::Arc,
    task::Context,
    time::Duration,
};

use common::breakers::one_probe;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_rampart::{
    BoxError,
    circuit_breaker::{
        Breaker, CircuitBreakerHandle, CircuitBreakerLayer, CircuitOpen, Config, State,
    },
    classify::Outcome,
};

/// What the inner service does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    Ok,
    Fail,
    /// Never completes, as a stuck downstream would.
    Hang,
    /// Panics inside `call`, before any future exists.
    PanicInCall,
    /// Panics the first time the future is polled.
    PanicInPoll,
}

type Fut = Pin<Box<dyn Future<Output = Result<&'static str, &'static str>> + Send>>;

fn inner(act: Act) -> Fut {
    match act {
        Act::Ok => Box::pin(async { Ok("ok") }),
        Act::Fail => Box::pin(async { Err("boom") }),
        Act::Hang => Box::pin(pending()),
        Act::PanicInCall => panic!("inner call panicked (expected by the test)"),
        Act::PanicInPoll => {
            Box::pin(async { panic!("inner future panicked (expected by the test)") })
        }
    }
}

/// Whether the call was refused by the breaker (as opposed to reaching the inner service).
fn refused(result: &Result<&'static str, BoxError>) -> bool {
    matches!(result, Err(e) if e.downcast_ref::<CircuitOpen>().is_some())
}

/// Opens at the first failure for `open`, then lets `probes` probes in, with no half-open max
/// wait: a probe that is held keeps the breaker half-open.
fn without_max_wait(open: Duration, probes: u32) -> Config {
    one_probe(open)
        .half_open_permits(probes)
        .half_open_max_wait(None)
        .build()
        .unwrap()
}

/// `one_probe` for 1 s, named `name` (a keyed breaker's name prefix).
fn named(name: &str) -> Config {
    one_probe(Duration::from_secs(1))
        .name(name)
        .build()
        .unwrap()
}

/// A breaker over `inner`, and its handle.
fn guarded(
    config: Config,
) -> (
    CircuitBreakerHandle,
    impl Service<Act, Response = &'static str, Error = BoxError, Future: Unpin + Send + 'static>,
) {
    let layer = CircuitBreakerLayer::new(config);
    (layer.handle(), layer.layer(service_fn(inner)))
}

/// One call through `svc` once it is ready.
async fn send<S: Service<R, Response = &'static str, Error = BoxError>, R>(
    svc: &mut S,
    req: R,
) -> Result<&'static str, BoxError> {
    svc.ready().await.unwrap().call(req).await
}

/// Opens a breaker that opens at the first failure for 1 s, and waits until it lets probes in.
async fn open_until_half_open<S: Service<Act, Response = &'static str, Error = BoxError>>(
    svc: &mut S,
) {
    send(svc, Act::Fail).await.unwrap_err();
    tokio::time::advance(Duration::from_secs(1)).await;
}

/// Takes a permit of the bare breaker `b` at `t` and records `outcome` for it at once.
fn settle(b: &Breaker, outcome: &Outcome, t: Instant) {
    let p = b.try_acquire(|| t).unwrap();
    b.record(p, outcome, || t);
}

/// Polls `fut` once; it must still be pending.
fn poll_once<F: Future + Unpin>(fut: &mut F) {
    let waker = futures_util::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    assert!(
        Pin::new(fut).poll(&mut cx).is_pending(),
        "expected a pending call"
    );
}

/// A synchronous panic in the inner `call()` of a half-open probe must give the permit back:
/// with one permit and no max wait, a lost permit would refuse every call forever.
#[tokio::test(start_paused = true)]
async fn a_panic_in_call_gives_the_probe_permit_back() {
    let (handle, mut svc) = guarded(without_max_wait(Duration::from_secs(1), 1));
    assert!(!refused(&send(&mut svc, Act::Fail).await));
    assert_eq!(handle.state(), State::Open);
    tokio::time::advance(Duration::from_secs(1)).await;

    let svc_ref = svc.ready().await.unwrap();
    let panicked = catch_unwind(AssertUnwindSafe(|| svc_ref.call(Act::PanicInCall)));
    assert!(panicked.is_err(), "the inner call panicked");
    assert_eq!(handle.state(), State::HalfOpen);

    let probe = send(&mut svc, Act::Ok).await;
    assert_eq!(
        probe.unwrap(),
        "ok",
        "the permit came back and the probe ran"
    );
    assert_eq!(handle.state(), State::Closed);
}

/// A panic in `call()` while closed leaves the breaker working and records nothing.
#[tokio::test(start_paused = true)]
async fn a_panic_in_call_while_closed_records_nothing() {
    let (handle, mut svc) = guarded(one_probe(Duration::from_secs(1)).build().unwrap());
    let svc_ref = svc.ready().await.unwrap();
    assert!(catch_unwind(AssertUnwindSafe(|| svc_ref.call(Act::PanicInCall))).is_err());
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(handle.snapshot().calls, 0);
    assert_eq!(send(&mut svc, Act::Ok).await.unwrap(), "ok");
}

/// A probe whose future panics while polled (the task dies, its future is dropped) gives its
/// permit back too.
#[tokio::test(start_paused = true)]
async fn a_panic_while_polling_a_probe_gives_the_permit_back() {
    let (handle, mut svc) = guarded(without_max_wait(Duration::from_secs(1), 1));
    open_until_half_open(&mut svc).await;

    let probe = svc.ready().await.unwrap().call(Act::PanicInPoll);
    assert_eq!(handle.state(), State::HalfOpen);
    let joined = tokio::spawn(probe).await;
    assert!(joined.unwrap_err().is_panic());
    assert_eq!(handle.state(), State::HalfOpen, "a panic decides nothing");

    assert_eq!(send(&mut svc, Act::Ok).await.unwrap(), "ok");
    assert_eq!(handle.state(), State::Closed);
}

/// Drops the response future before it completes, either never polled or after one poll, in
/// every state that admits calls, and checks the breaker still admits afterwards.
#[tokio::test(start_paused = true)]
async fn cancellation_at_every_await_in_every_state() {
    for polled in [false, true] {
        for state in [
            State::Closed,
            State::HalfOpen,
            State::Disabled,
            State::MetricsOnly,
        ] {
            let (handle, mut svc) = guarded(without_max_wait(Duration::from_secs(1), 2));
            match state {
                State::Closed => {}
                State::HalfOpen => open_until_half_open(&mut svc).await,
                State::Disabled => handle.disable(),
                State::MetricsOnly => handle.metrics_only(),
                _ => unreachable!(),
            }
            // Take every permit there is (two probes when half-open), then cancel them all.
            for round in 0..3 {
                let mut calls: Vec<_> = (0..2).map(|_| svc.call(Act::Hang)).collect::<Vec<_>>();
                if polled {
                    calls.iter_mut().for_each(poll_once);
                }
                assert_eq!(handle.state(), state, "round {round}");
                if state == State::HalfOpen {
                    let third = send(&mut svc, Act::Ok).await;
                    assert!(refused(&third), "only two probes at a time");
                }
                drop(calls);
            }
            assert_eq!(handle.state(), state, "cancelled calls decide nothing");
            let ok = send(&mut svc, Act::Ok).await;
            assert_eq!(
                ok.unwrap(),
                "ok",
                "{state} after cancellations (polled: {polled})"
            );
        }
    }
}

/// A probe cancelled after its half-open period ended must not hand a permit to the next
/// period: its release is fenced by the generation.
#[tokio::test(start_paused = true)]
async fn a_cancelled_probe_from_an_earlier_period_gives_nothing_to_the_next() {
    let (handle, mut svc) = guarded(without_max_wait(Duration::from_secs(1), 2));
    open_until_half_open(&mut svc).await;
    let mut stale = svc.ready().await.unwrap().call(Act::Hang);
    poll_once(&mut stale);
    // The other probe fails: open again, then a new half-open period with both permits taken.
    assert!(!refused(&send(&mut svc, Act::Fail).await));
    assert_eq!(handle.state(), State::Open);
    tokio::time::advance(Duration::from_secs(1)).await;
    let held: Vec<_> = (0..2).map(|_| svc.call(Act::Hang)).collect();
    assert_eq!(handle.state(), State::HalfOpen);
    drop(stale);
    assert!(
        refused(&send(&mut svc, Act::Ok).await),
        "the stale probe's release must not free a permit of this period"
    );
    drop(held);
    assert_eq!(send(&mut svc, Act::Ok).await.unwrap(), "ok");
}

/// With the default configuration a probe that never completes and is never dropped does not
/// wedge the breaker: after the half-open max wait it opens again, then probes again.
#[tokio::test(start_paused = true)]
async fn a_hung_probe_held_forever_does_not_wedge_the_breaker() {
    let config = one_probe(Duration::from_secs(1)).build().unwrap();
    let max_wait = config
        .half_open_max_wait()
        .expect("half-open max wait is on by default");
    let (handle, mut svc) = guarded(config);
    open_until_half_open(&mut svc).await;

    let mut hung = svc.ready().await.unwrap().call(Act::Hang);
    poll_once(&mut hung);
    assert_eq!(handle.state(), State::HalfOpen);
    tokio::time::advance(max_wait - Duration::from_millis(1)).await;
    let err = send(&mut svc, Act::Ok).await.unwrap_err();
    let open = err.downcast_ref::<CircuitOpen>().expect("refused");
    assert_eq!(open.state(), State::HalfOpen, "still waiting for the probe");

    tokio::time::advance(Duration::from_millis(1)).await;
    let err = send(&mut svc, Act::Ok).await.unwrap_err();
    let open = err.downcast_ref::<CircuitOpen>().expect("refused");
    assert_eq!(open.state(), State::Open, "no decision within the max wait");
    assert_eq!(open.retry_after(), Some(Duration::from_secs(1)));

    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(send(&mut svc, Act::Ok).await.unwrap(), "ok");
    assert_eq!(handle.state(), State::Closed);
    // The hung probe, still held, belongs to an earlier period and changes nothing.
    poll_once(&mut hung);
    drop(hung);
    assert_eq!(handle.state(), State::Closed);
}

/// The same on the bare state machine with a fake clock, default configuration.
#[test]
fn a_hung_probe_on_the_bare_breaker_recovers_after_the_default_max_wait() {
    let config = Config::builder().consecutive_failures(1).build().unwrap();
    let wait = config.half_open_max_wait().expect("on by default");
    let open = config.open_duration_after(1);
    let b = Breaker::new(config);
    let t0 = Instant::now();
    settle(&b, &Outcome::FAILURE, t0);
    let mut t = t0 + open;
    // Every permit is taken by a probe that never finishes.
    let mut held_forever = Vec::new();
    while let Ok(p) = b.try_acquire(|| t) {
        held_forever.push(p);
    }
    assert_eq!(held_forever.len(), 3, "the default number of probes");
    assert_eq!(b.state(), State::HalfOpen);
    t += wait;
    let rej = b.try_acquire(|| t).unwrap_err();
    assert_eq!(rej.state(), State::Open);
    t += open;
    let probe = b.try_acquire(|| t).expect("probes again");
    assert!(probe.is_probe());
    b.record(probe, &Outcome::Success, || t);
    // The hung probes finally give up: their period is over, so they change nothing.
    for p in held_forever {
        b.release(p);
    }
    assert_eq!(b.state(), State::HalfOpen);
}

/// Turning the max wait off keeps the old behaviour: a held probe keeps the breaker half-open.
#[test]
fn the_max_wait_can_be_turned_off() {
    let config = without_max_wait(Duration::from_secs(1), 1);
    assert_eq!(config.half_open_max_wait(), None);
    let b = Breaker::new(config);
    let t0 = Instant::now();
    settle(&b, &Outcome::FAILURE, t0);
    let held = b.try_acquire(|| t0 + Duration::from_secs(1)).unwrap();
    let much_later = t0 + Duration::from_secs(365 * 24 * 3600);
    assert_eq!(
        b.try_acquire(|| much_later).unwrap_err().state(),
        State::HalfOpen
    );
    b.release(held);
    assert!(b.try_acquire(|| much_later).is_ok());
}

/// Keyed breakers: an open breaker is never evicted to make room, so a host known to be down is
/// not called again just because other hosts arrived.
#[test]
fn keyed_eviction_keeps_open_breakers() {
    let layer = CircuitBreakerLayer::keyed(named("hosts"), |k: &&'static str| *k).max_keys(2);
    let breakers = layer.breakers();
    let t = Instant::now();
    let down = breakers.get_or_insert("down", t);
    settle(&down, &Outcome::FAILURE, t);
    assert_eq!(down.state(), State::Open);
    // "up" is used more recently than "down": a plain LRU would evict "down".
    let later = t + Duration::from_millis(10);
    let up = breakers.get_or_insert("up", later);
    settle(&up, &Outcome::Success, later);
    // Nothing holds "up" any more: no call in flight, so it may go.
    drop(up);

    let new = breakers.get_or_insert("new", later + Duration::from_millis(10));
    assert_eq!(new.name(), "hosts/new");
    assert_eq!(breakers.len(), 2);
    let again = breakers.get_or_insert("down", later + Duration::from_millis(20));
    assert!(Arc::ptr_eq(&again, &down), "the open breaker was kept");
    assert_eq!(again.state(), State::Open);
    assert!(breakers.get("up").is_none(), "the closed one was evicted");
}

/// When every slot holds an open breaker, a new key is served by the shared overflow breaker
/// (named `<name>/(other)`) instead of evicting one of them.
#[tokio::test(start_paused = true)]
async fn keyed_new_keys_share_an_overflow_breaker_when_every_slot_is_open() {
    let layer =
        CircuitBreakerLayer::keyed(named("hosts"), |req: &(&'static str, Act)| req.0).max_keys(2);
    let breakers = layer.breakers();
    let mut svc = layer.layer(service_fn(|req: (&'static str, Act)| inner(req.1)));
    for host in ["a", "b"] {
        assert!(!refused(&send(&mut svc, (host, Act::Fail)).await));
    }
    for host in ["a", "b"] {
        let r = send(&mut svc, (host, Act::Ok)).await;
        assert!(refused(&r), "{host} is open and stays so");
    }
    // A third host: both slots hold open breakers, so it goes through the overflow breaker.
    let r = send(&mut svc, ("c", Act::Fail)).await;
    assert_eq!(r.unwrap_err().to_string(), "boom", "c reached its service");
    let r = send(&mut svc, ("d", Act::Ok)).await;
    let err = r.unwrap_err();
    let open = err
        .downcast_ref::<CircuitOpen>()
        .expect("overflow breaker open");
    assert_eq!(open.breaker(), "hosts/(other)");
    let mut keys = breakers.keys();
    keys.sort();
    assert_eq!(keys, ["a", "b"]);
    // Once a slot frees (a breaker closes and goes idle), new keys get their own breaker again.
    tokio::time::advance(Duration::from_secs(1)).await;
    for host in ["a", "e"] {
        assert_eq!(
            send(&mut svc, (host, Act::Ok)).await.unwrap(),
            "ok",
            "{host}"
        );
    }
    let mut keys = breakers.keys();
    keys.sort();
    assert_eq!(keys, ["b", "e"]);
}

#[cfg(feature = "metrics")]
mod keyed_metrics {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    use tower_rampart::circuit_breaker::metric_names;

    use super::*;

    /// `(breaker label, state label, value)` of every state gauge.
    fn state_gauges(
        snapshotter: &metrics_util::debugging::Snapshotter,
    ) -> Vec<(String, String, f64)> {
        snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter(|(k, ..)| k.key().name() == metric_names::STATE)
            .map(|(k, _, _, v)| {
                let label = |name: &str| {
                    k.key()
                        .labels()
                        .find(|l| l.key() == name)
                        .map(|l| l.value().to_owned())
                        .unwrap_or_default()
                };
                let DebugValue::Gauge(g) = v else {
                    panic!("state is a gauge")
                };
                // Keyed breakers carry their key in a label of its own: `name/key` here.
                let breaker = match label("key") {
                    key if key.is_empty() => label("breaker"),
                    key => format!("{}/{key}", label("breaker")),
                };
                (breaker, label("state"), g.into_inner())
            })
            .collect()
    }

    /// Keys churning through a small keyed layer: evicted breakers' state gauges drop to zero and
    /// the number of breaker labels stays bounded (`max_keys` own labels plus one shared one).
    #[test]
    fn evicted_keys_zero_their_gauges_and_labels_stay_bounded() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let layer =
                CircuitBreakerLayer::keyed(named("churn"), |k: &String| k.clone()).max_keys(3);
            let breakers = layer.breakers();
            let t0 = Instant::now();
            for i in 0..50u64 {
                let t = t0 + Duration::from_millis(10 * i);
                settle(
                    &breakers.get_or_insert(format!("host{i}"), t),
                    &Outcome::Success,
                    t,
                );
            }
            // One of the live ones opens.
            let t = t0 + Duration::from_secs(1);
            settle(
                &breakers.get_or_insert("host49".to_owned(), t),
                &Outcome::FAILURE,
                t,
            );
            assert_eq!(breakers.len(), 3);

            let gauges = state_gauges(&snapshotter);
            let mut labels: Vec<&str> = gauges.iter().map(|g| g.0.as_str()).collect();
            labels.sort();
            labels.dedup();
            assert!(
                labels.len() <= 3 + 1,
                "breaker labels must stay bounded, got {labels:?}"
            );
            let total =
                |state: &str| -> f64 { gauges.iter().filter(|g| g.1 == state).map(|g| g.2).sum() };
            assert_eq!(total("closed"), 2.0, "two live closed breakers: {gauges:?}");
            assert_eq!(total("open"), 1.0, "one live open breaker: {gauges:?}");
            for (breaker, state, v) in &gauges {
                assert!(*v >= 0.0, "{breaker} {state} = {v}");
            }
            // The first keys had their own labels and were evicted long ago.
            for (breaker, _, v) in gauges.iter().filter(|g| g.0 == "churn/host0") {
                assert_eq!(*v, 0.0, "{breaker} was evicted");
            }
        });
    }
}

async fn panicking_handler() -> &'static str {
    panic!("handler panicked (expected by the test)")
}

/// Over real HTTP: a server-side breaker whose half-open probe's handler panics (hyper drops the
/// connection, and with it the call's future) still lets the next probe in and closes.
#[tokio::test]
async fn a_handler_panicking_on_a_probe_over_http_does_not_wedge_the_server_breaker() {
    use axum::{Router, http::StatusCode, routing::get};
    use common::{
        breakers::server_side,
        http::{client, serve},
    };

    let layer = server_side(without_max_wait(Duration::from_millis(50), 1));
    let handle = layer.handle();
    let app = Router::new()
        .route("/ok", get(|| async { "ok" }))
        .route("/fail", get(|| async { StatusCode::INTERNAL_SERVER_ERROR }))
        .route("/panic", get(panicking_handler))
        .layer(layer);
    let base = serve(app).await;
    let http = client();
    let get = |path: &str| http.get(format!("{base}{path}")).send();

    assert_eq!(get("/fail").await.unwrap().status(), 500);
    assert_eq!(handle.state(), State::Open);
    assert_eq!(
        get("/ok").await.unwrap().status(),
        503,
        "refused while open"
    );
    tokio::time::sleep(handle.snapshot().retry_after.unwrap() + Duration::from_millis(20)).await;

    assert!(
        get("/panic").await.is_err(),
        "the connection died with the handler"
    );
    assert_eq!(handle.state(), State::HalfOpen, "a panic decides nothing");
    let probe = get("/ok").await.unwrap();
    assert_eq!(
        probe.status(),
        200,
        "the panicked probe gave its permit back"
    );
    assert_eq!(handle.state(), State::Closed);
}
