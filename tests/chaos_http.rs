//! Fault injection over real HTTP: an axum server on 127.0.0.1 with a `ChaosLayer`, a reqwest
//! client. The injection rate on a seeded source, predicates, the run-time handle, and a client
//! breaker that opens under injected faults and closes once they are switched off. Latency and
//! aborted calls on tokio's paused clock.

mod common;

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

use axum::{Router, extract::Request, routing::get};
use common::http::{client, serve};
use futures_util::{StreamExt, stream};
use http::StatusCode;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_rampart::{
    chaos::{ChaosLayer, Config, Fault, Injected, PROBLEM_TYPE},
    circuit_breaker::{self, CircuitBreakerLayer, CircuitOpen, State},
    classify::HttpStatus,
};

fn config(fault: Fault, rate: f64, enabled: bool, seed: u64) -> Config {
    Config::builder()
        .name("test")
        .fault(fault)
        .injection_rate(rate)
        .enabled(enabled)
        .seed(seed)
        .build()
        .unwrap()
}

/// The `type` of a problem+json answer, if it is one.
fn problem_type(headers: &http::HeaderMap, body: &str) -> Option<String> {
    let is_problem = headers
        .get("content-type")
        .is_some_and(|v| v == "application/problem+json");
    is_problem.then(|| {
        let v: serde_json::Value = serde_json::from_str(body).expect("problem+json is JSON");
        v["type"].as_str().expect("a problem type").to_owned()
    })
}

fn unavailable() -> Fault {
    Fault::http(StatusCode::SERVICE_UNAVAILABLE)
}

/// `GET /` and `GET /orders` answering 200 "ok", counting the calls that reach the handler.
fn app(hits: Arc<AtomicUsize>) -> Router {
    let handler = move || {
        let hits = hits.clone();
        async move {
            hits.fetch_add(1, SeqCst);
            "ok"
        }
    };
    Router::new()
        .route("/", get(handler.clone()))
        .route("/orders", get(handler.clone()))
        .route("/health", get(handler))
}

/// The number of faults the layer injects into `n` calls with this seed and rate, counted in
/// process: what the server must do over HTTP.
async fn expected_injections(seed: u64, rate: f64, n: usize) -> usize {
    let mut svc = ChaosLayer::new(config(Fault::Error, rate, true, seed))
        .layer(service_fn(|_: ()| async { Ok::<_, Infallible>(()) }));
    let mut failed = 0;
    for _ in 0..n {
        if svc.ready().await.unwrap().call(()).await.is_err() {
            failed += 1;
        }
    }
    failed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_injection_rate_is_respected_on_a_seeded_source() {
    const CALLS: usize = 1000;
    const RATE: f64 = 0.3;
    let expected = expected_injections(7, RATE, CALLS).await;
    // Binomial(1000, 0.3): mean 300, standard deviation 14.5; five deviations either side.
    assert!((228..=372).contains(&expected), "{expected}");

    let hits = Arc::new(AtomicUsize::new(0));
    let chaos = ChaosLayer::new(config(unavailable(), RATE, true, 7)).respond_http();
    let handle = chaos.handle();
    let base = serve(app(hits.clone()).layer(chaos)).await;
    let http = client();

    // Eight calls at a time: the interleaving varies, the count does not.
    let statuses: Vec<(StatusCode, Option<String>)> = stream::iter(0..CALLS)
        .map(|_| {
            let (http, url) = (http.clone(), format!("{base}/"));
            async move {
                let res = http.get(url).send().await.unwrap();
                let (status, headers) = (res.status(), res.headers().clone());
                (status, problem_type(&headers, &res.text().await.unwrap()))
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let injected: Vec<_> = statuses
        .iter()
        .filter(|(s, _)| *s != StatusCode::OK)
        .collect();
    assert_eq!(injected.len(), expected);
    for (status, kind) in &injected {
        assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(kind.as_deref(), Some(PROBLEM_TYPE));
    }
    // Injected calls never reached the handler.
    assert_eq!(hits.load(SeqCst), CALLS - expected);
    assert_eq!(handle.injected(), expected as u64);
    assert_eq!(handle.decisions(), CALLS as u64);
}

#[tokio::test]
async fn a_predicate_limits_injection_to_matching_requests() {
    let hits = Arc::new(AtomicUsize::new(0));
    let by_header = ChaosLayer::new(config(
        Fault::plain_http(StatusCode::TOO_MANY_REQUESTS).with_retry_after(Duration::from_secs(3)),
        1.0,
        true,
        1,
    ))
    .respond_http()
    .when(|req: &Request| req.headers().contains_key("x-chaos"));
    let by_route = ChaosLayer::new(config(unavailable(), 1.0, true, 1))
        .respond_http()
        .when(|req: &Request| req.uri().path().starts_with("/orders"));
    let (header_handle, route_handle) = (by_header.handle(), by_route.handle());
    let base = serve(app(hits.clone()).layer(by_header).layer(by_route)).await;
    let http = client();

    for _ in 0..10 {
        let res = http.get(format!("{base}/")).header("x-chaos", "1");
        let res = res.send().await.unwrap();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.headers()["retry-after"], "3");
        assert!(res.text().await.unwrap().is_empty());

        let res = http.get(format!("{base}/")).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let res = http.get(format!("{base}/health")).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let res = http.get(format!("{base}/orders")).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    // Only matching requests took a decision.
    assert_eq!(header_handle.decisions(), 10);
    assert_eq!(route_handle.decisions(), 10);
    assert_eq!(route_handle.injected(), 10);
    assert_eq!(hits.load(SeqCst), 20);
}

#[tokio::test]
async fn the_handle_switches_every_route_at_run_time() {
    let hits = Arc::new(AtomicUsize::new(0));
    let chaos = ChaosLayer::new(config(unavailable(), 1.0, false, 3)).respond_http();
    // Two routes, each with its own `Layer::layer` call on a clone of the layer.
    let h = {
        let hits = hits.clone();
        move || {
            let hits = hits.clone();
            async move {
                hits.fetch_add(1, SeqCst);
                "ok"
            }
        }
    };
    let app = Router::new()
        .route("/a", get(h.clone()).layer(chaos.clone()))
        .route("/b", get(h).layer(chaos.clone()));
    let handle = chaos.clone().handle();
    drop(chaos);
    let base = serve(app).await;
    let http = client();
    let statuses = || {
        let http = http.clone();
        let base = base.clone();
        async move {
            let mut out = Vec::new();
            for path in ["a", "b"] {
                let res = http.get(format!("{base}/{path}")).send().await.unwrap();
                out.push(res.status().as_u16());
            }
            out
        }
    };

    // Off unless enabled.
    assert_eq!(statuses().await, [200, 200]);
    handle.enable();
    assert_eq!(statuses().await, [503, 503]);
    handle
        .set_fault(Fault::plain_http(StatusCode::BAD_GATEWAY))
        .unwrap();
    assert_eq!(statuses().await, [502, 502]);
    handle.set_injection_rate(0.0).unwrap();
    assert_eq!(statuses().await, [200, 200]);
    handle.apply(&config(Fault::Error, 1.0, true, 9));
    assert_eq!(statuses().await, [500, 500]);
    handle.disable();
    assert_eq!(statuses().await, [200, 200]);
    // Invalid settings change nothing.
    assert!(handle.set_fault(Fault::http(StatusCode::OK)).is_err());
    assert!(handle.set_injection_rate(f64::NAN).is_err());
    assert_eq!(handle.config().fault(), &Fault::Error);
    assert_eq!(handle.name(), "test");
    assert_eq!(hits.load(SeqCst), 6);
    assert_eq!(handle.injected(), 6);
}

#[tokio::test]
async fn a_client_breaker_opens_under_injected_faults_and_closes_after_they_stop() {
    let hits = Arc::new(AtomicUsize::new(0));
    let chaos = ChaosLayer::new(config(unavailable(), 1.0, false, 5)).respond_http();
    let faults = chaos.handle();
    let base = serve(app(hits.clone()).layer(chaos)).await;

    let breaker = CircuitBreakerLayer::new(
        circuit_breaker::Config::builder()
            .name("chaos-test")
            .consecutive_failures(3)
            .open_duration(Duration::from_millis(200))
            .half_open_permits(1)
            .build()
            .unwrap(),
    )
    .classify(HttpStatus::default());
    let breaker_handle = breaker.handle();
    let http = client();
    let mut svc = breaker.layer(http.clone());
    let mut get = async || {
        let req = http.get(format!("{base}/")).build().unwrap();
        svc.ready().await.unwrap().call(req).await
    };

    assert_eq!(get().await.unwrap().status(), StatusCode::OK);
    faults.enable();
    for _ in 0..3 {
        assert_eq!(
            get().await.unwrap().status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    assert_eq!(breaker_handle.state(), State::Open);
    // Open: refused without a request reaching the server.
    let err = get().await.unwrap_err();
    assert!(err.downcast_ref::<CircuitOpen>().is_some(), "{err}");
    assert_eq!(faults.decisions(), 3);

    faults.disable();
    // Past the open duration, the probe finds the server healthy again.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(get().await.unwrap().status(), StatusCode::OK);
    assert_eq!(breaker_handle.state(), State::Closed);
    assert_eq!(get().await.unwrap().status(), StatusCode::OK);
    assert_eq!(hits.load(SeqCst), 3);
}

#[tokio::test]
async fn an_aborted_call_never_answers() {
    let hits = Arc::new(AtomicUsize::new(0));
    let chaos = ChaosLayer::new(config(Fault::Abort, 1.0, true, 1)).respond_http();
    let base = serve(app(hits.clone()).layer(chaos)).await;
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let err = http.get(format!("{base}/")).send().await.unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert_eq!(hits.load(SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn latency_delays_the_call_on_the_paused_clock() {
    let started = Arc::new(AtomicBool::new(false));
    let seen = started.clone();
    let inner = service_fn(move |n: u32| {
        let seen = seen.clone();
        async move {
            seen.store(true, SeqCst);
            Ok::<_, Infallible>(n * 2)
        }
    });
    let layer = ChaosLayer::new(config(
        Fault::Latency(Duration::from_millis(200)),
        1.0,
        true,
        1,
    ));
    let handle = layer.handle();
    let mut svc = layer.layer(inner);

    let start = Instant::now();
    let fut = svc.ready().await.unwrap().call(21);
    tokio::pin!(fut);
    assert!(futures_util::poll!(&mut fut).is_pending());
    tokio::time::advance(Duration::from_millis(199)).await;
    assert!(futures_util::poll!(&mut fut).is_pending());
    assert!(!started.load(SeqCst), "the call ran before the delay");
    assert_eq!(fut.await.unwrap(), 42);
    assert_eq!(start.elapsed(), Duration::from_millis(200));

    // Disabled: no delay.
    handle.disable();
    let start = Instant::now();
    assert_eq!(svc.ready().await.unwrap().call(1).await.unwrap(), 2);
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn error_mode_fails_with_injected_and_abort_waits_for_a_timeout() {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let inner = service_fn(move |()| {
        seen.fetch_add(1, SeqCst);
        async { Ok::<_, Infallible>("real") }
    });
    let layer = ChaosLayer::new(config(unavailable(), 1.0, true, 1));
    let handle = layer.handle();
    let mut svc = layer.layer(inner);

    let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
    let injected = err.downcast_ref::<Injected>().unwrap();
    assert_eq!(injected.fault(), &unavailable());
    assert_eq!(injected.layer(), "test");

    handle.set_fault(Fault::Abort).unwrap();
    let call = svc.ready().await.unwrap().call(());
    let out = tokio::time::timeout(Duration::from_secs(3600), call).await;
    assert!(out.is_err(), "an aborted call completed");
    assert_eq!(calls.load(SeqCst), 0);
}
