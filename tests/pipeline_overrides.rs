//! Stage overrides of the standard pipelines change what they name and keep every other default
//! (issue 9, item 5). Real layers: a reqwest client through `StandardClientLayer` against an
//! axum server on 127.0.0.1, in-process services on paused time, an axum router behind
//! `StandardServerLayer`.
//!
//! The pipeline's retry defaults differ from `RetryLayer::builder()`'s by the budget (the
//! pipeline's has a 20 % budget, the plain builder none), and its breaker defaults from
//! `Config::builder()`'s by the window, the minimum calls, the open duration and the probes: the
//! tests below observe exactly those, which a whole replacement (the old `.retry(builder)` and
//! `.circuit_breaker(builder)`, now `replace_retry` and `replace_circuit_breaker`) drops.

mod common;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Router, http::StatusCode, routing::get};
use common::{
    flaky::{counting_server, status},
    http::{client as http, get_text, serve_addr as serve},
};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_rampart::{
    BoxError,
    backoff::Backoff,
    circuit_breaker::{self, CircuitOpen, Config, State, WindowKind},
    pipeline::{StandardClient, StandardClientLayer, StandardServerLayer},
    retry::{self, EventKind, GiveUp, RetryLayer},
};

/// One call through `svc` once it is ready.
async fn send<S: Service<R>, R>(svc: &mut S, req: R) -> Result<S::Response, S::Error>
where
    S::Error: std::fmt::Debug,
{
    svc.ready().await.unwrap().call(req).await
}

/// The authority of `addr`, a per-host breaker's key.
fn authority(addr: &str) -> http::uri::Authority {
    http::uri::Authority::try_from(addr).unwrap()
}

/// Sends `n` GETs to a server that always answers 503, through `layer`, with the per-host
/// breaker disabled after the first call (so that only the retry stage decides); the server's
/// hits for each call.
async fn hits_per_call(layer: StandardClientLayer, n: usize) -> Vec<usize> {
    let (app, hits) = counting_server(|_| status(StatusCode::SERVICE_UNAVAILABLE));
    let addr = serve(app).await;
    let breakers = layer.breakers();
    let client = http();
    let mut svc = ServiceBuilder::new().layer(layer).service(client.clone());
    let mut per_call = Vec::with_capacity(n);
    for i in 0..n {
        let before = hits.count();
        let req = client.get(format!("http://{addr}/")).build().unwrap();
        let res = send(&mut svc, req).await.unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        per_call.push(hits.count() - before);
        if i == 0 {
            breakers
                .get(&authority(&addr.to_string()))
                .expect("the host's breaker")
                .disable();
        }
    }
    per_call
}

/// Overriding the backoff alone keeps the pipeline's 3 attempts and its budget: 20 % of the
/// requests plus 10 retries a second over 10 s (100 retries here), so of 70 calls that each
/// want 2 retries, the first ones get 3 attempts and the budget refuses the rest.
#[tokio::test]
async fn a_retry_override_of_one_field_keeps_the_default_attempts_and_budget() {
    let layer = StandardClientLayer::builder()
        .retry(|defaults: retry::Builder| {
            defaults.backoff(Backoff::constant(Duration::from_millis(1)))
        })
        .build()
        .unwrap();
    let per_call = hits_per_call(layer, 70).await;
    assert!(
        per_call[..40].iter().all(|&h| h == 3),
        "3 attempts (the default) while the budget lasts: {per_call:?}"
    );
    let retries: usize = per_call.iter().map(|h| h - 1).sum();
    // 100 retries of reserve + 20 % of 70 requests = 114 (one more may be granted at a bucket
    // edge); without a budget, 140.
    assert!(
        (100..=116).contains(&retries),
        "the default budget caps retries: {retries} retries, {per_call:?}"
    );
    assert_eq!(*per_call.last().unwrap(), 1, "budget spent: no retry");
}

/// What the old `.retry(builder)` did, and `replace_retry` still does on purpose: the whole
/// stage is the given builder, with no budget. The test above fails this way against it.
#[tokio::test]
async fn replace_retry_drops_the_default_budget() {
    let layer = StandardClientLayer::builder()
        .replace_retry(RetryLayer::builder().backoff(Backoff::constant(Duration::from_millis(1))))
        .build()
        .unwrap();
    let per_call = hits_per_call(layer, 70).await;
    assert!(per_call.iter().all(|&h| h == 3), "{per_call:?}");
}

/// An in-process downstream that answers every request with 503 after counting it.
fn unavailable(
    calls: Arc<AtomicUsize>,
) -> impl Service<
    http::Request<String>,
    Response = http::Response<String>,
    Error = BoxError,
    Future = impl Future<Output = Result<http::Response<String>, BoxError>> + Send,
> + Clone {
    tower::service_fn(move |_: http::Request<String>| {
        calls.fetch_add(1, Ordering::SeqCst);
        async {
            Ok::<_, BoxError>(
                http::Response::builder()
                    .status(StatusCode::SERVICE_UNAVAILABLE)
                    .body(String::new())
                    .unwrap(),
            )
        }
    })
}

fn get_req() -> http::Request<String> {
    http::Request::get("http://downstream.test/")
        .body(String::new())
        .unwrap()
}

/// Overrides add up: 5 attempts, then a short backoff, then a listener, each call changing one
/// thing; the budget stays, and refuses once 4 retries a call exceed it (its refusals are
/// `GiveUp::Budget` events).
#[tokio::test(start_paused = true)]
async fn retry_overrides_add_up_and_keep_the_budget() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let layer = StandardClientLayer::builder()
        .name("adds-up")
        .retry(|defaults| defaults.max_attempts(5))
        .retry(|defaults| defaults.backoff(Backoff::constant(Duration::from_millis(1))))
        .retry(move |defaults| {
            defaults.on_event(move |e: &retry::Event<'_>| {
                assert_eq!(e.retry, "adds-up", "named after the pipeline");
                seen.lock().unwrap().push(e.kind);
            })
        })
        .build()
        .unwrap();
    let breakers = layer.breakers();
    let calls = Arc::new(AtomicUsize::new(0));
    let mut svc: StandardClient<_> = ServiceBuilder::new()
        .layer(layer)
        .service(unavailable(calls.clone()));
    let mut per_call = Vec::new();
    for i in 0..40 {
        let before = calls.load(Ordering::SeqCst);
        let res = send(&mut svc, get_req()).await.unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        per_call.push(calls.load(Ordering::SeqCst) - before);
        if i == 0 {
            breakers
                .get(&authority("downstream.test"))
                .unwrap()
                .disable();
        }
    }
    assert!(per_call[..20].iter().all(|&n| n == 5), "{per_call:?}");
    let gave_up = |reason: GiveUp| {
        events
            .lock()
            .unwrap()
            .iter()
            .filter(|k| matches!(k, EventKind::GaveUp { reason: r, .. } if *r == reason))
            .count()
    };
    assert!(gave_up(GiveUp::Budget) > 0, "{per_call:?}");
    assert_eq!(
        gave_up(GiveUp::Budget) + gave_up(GiveUp::Attempts),
        40,
        "every call gave up on attempts or budget"
    );
}

/// A replacement drops the overrides made before it; overrides made after it apply to it, and
/// the pipeline names it.
#[tokio::test(start_paused = true)]
async fn replace_retry_then_override_applies_in_call_order() {
    let names = Arc::new(Mutex::new(Vec::new()));
    let seen = names.clone();
    let layer = StandardClientLayer::builder()
        .name("ordered")
        .retry(|defaults| defaults.max_attempts(5))
        .replace_retry(
            RetryLayer::builder()
                .name("ignored")
                .max_attempts(2)
                .backoff(Backoff::constant(Duration::from_millis(1)))
                .on_event(move |e: &retry::Event<'_>| {
                    seen.lock().unwrap().push(e.retry.to_owned())
                }),
        )
        .retry(|replaced| replaced.max_attempts(4))
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let mut svc = ServiceBuilder::new()
        .layer(layer)
        .service(unavailable(calls.clone()));
    send(&mut svc, get_req()).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 4, "the later override wins");
    assert!(names.lock().unwrap().iter().all(|n| n == "ordered"));
}

/// Overriding the breaker's failure rate keeps the pipeline's other breaker defaults: a 30 s
/// time window, at least 100 calls before it may open, open for 5 s, 1 probe.
#[tokio::test(start_paused = true)]
async fn a_breaker_override_of_the_threshold_keeps_the_other_defaults() {
    let layer = StandardClientLayer::builder()
        .name("threshold")
        .retry(|defaults| defaults.max_attempts(1))
        .circuit_breaker(|defaults: circuit_breaker::Builder| defaults.failure_rate(0.5))
        .build()
        .unwrap();
    let breakers = layer.breakers();
    let calls = Arc::new(AtomicUsize::new(0));
    let mut svc = ServiceBuilder::new()
        .layer(layer)
        .service(unavailable(calls.clone()));
    // Every call fails; the breaker stays closed until the 100th (Config::builder()'s own
    // default would open it at the 20th).
    for n in 1..=99 {
        let res = send(&mut svc, get_req()).await.unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE, "call {n}");
    }
    let breaker = breakers.get(&authority("downstream.test")).unwrap();
    assert_eq!(
        breaker.state(),
        State::Closed,
        "99 calls: under the minimum"
    );
    send(&mut svc, get_req()).await.unwrap();
    assert_eq!(breaker.state(), State::Open, "100 calls, all failed: open");
    assert_eq!(calls.load(Ordering::SeqCst), 100);
    let err = send(&mut svc, get_req()).await.unwrap_err();
    assert!(err.downcast_ref::<CircuitOpen>().is_some(), "{err}");

    let config = breaker.breaker().config();
    assert_eq!(config.name(), "threshold/downstream.test");
    assert_eq!(
        config.window(),
        WindowKind::Time {
            duration: Duration::from_secs(30),
            buckets: 10
        }
    );
    assert_eq!(config.open_duration_after(1), Duration::from_secs(5));
    let debug = format!("{config:?}");
    assert!(debug.contains("failure_rate: 0.5"), "{debug}");
    assert!(debug.contains("half_open_permits: 1,"), "{debug}");

    // Open 5 s (not Config::builder()'s 10 s): then one probe goes through.
    tokio::time::advance(Duration::from_millis(4_900)).await;
    assert!(send(&mut svc, get_req()).await.is_err(), "still open");
    tokio::time::advance(Duration::from_millis(200)).await;
    let res = send(&mut svc, get_req()).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE, "the probe");
    assert_eq!(calls.load(Ordering::SeqCst), 101);
}

/// The server pipeline: a breaker override turns the breaker on from the breaker's own defaults
/// (named `server`): one field changed, the minimum of 20 calls kept.
#[tokio::test]
async fn a_server_breaker_override_keeps_the_other_defaults() {
    let resilience = StandardServerLayer::builder()
        .circuit_breaker(|defaults: circuit_breaker::Builder| defaults.failure_rate(0.9))
        .build()
        .unwrap();
    let breaker = resilience.breaker();
    assert_eq!(breaker.name(), "server");
    let config = breaker.breaker().config();
    assert_eq!(config.window(), WindowKind::Count { size: 100 });
    assert_eq!(config.open_duration_after(1), Duration::from_secs(10));
    let app = Router::new()
        .route("/fail", get(|| async { StatusCode::INTERNAL_SERVER_ERROR }))
        .layer(resilience);
    let addr = serve(app).await;
    let client = http();
    for n in 1..=19 {
        let (code, _) = get_text(&client, format!("http://{addr}/fail")).await;
        assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR, "call {n}");
    }
    assert_eq!(breaker.state(), State::Closed, "under the 20 calls minimum");
    get_text(&client, format!("http://{addr}/fail")).await;
    assert_eq!(breaker.state(), State::Open);
    let (code, _) = get_text(&client, format!("http://{addr}/fail")).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "refused");
}

/// The server pipeline's whole replacement keeps the given builder as it is (its name too), and
/// overrides after it apply to it.
#[tokio::test]
async fn a_server_breaker_replacement_is_whole() {
    let resilience = StandardServerLayer::builder()
        .circuit_breaker(|defaults| defaults.consecutive_failures(50))
        .replace_circuit_breaker(Config::builder().name("whole").consecutive_failures(2))
        .circuit_breaker(|replaced| replaced.open_duration(Duration::from_secs(60)))
        .build()
        .unwrap();
    let breaker = resilience.breaker();
    assert_eq!(breaker.name(), "whole");
    assert_eq!(
        breaker.breaker().config().open_duration_after(1),
        Duration::from_secs(60)
    );
    let app = Router::new()
        .route("/fail", get(|| async { StatusCode::INTERNAL_SERVER_ERROR }))
        .layer(resilience);
    let addr = serve(app).await;
    let client = http();
    for _ in 0..2 {
        get_text(&client, format!("http://{addr}/fail")).await;
    }
    assert_eq!(
        breaker.state(),
        State::Open,
        "two in a row: the replacement's rule"
    );
}
