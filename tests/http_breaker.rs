//! End to end over loopback: real axum servers on OS-assigned ports, real reqwest clients, and the
//! circuit breaker in between (server side in 503 mode, client side in error mode).

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

use axum::{
    Router,
    http::{StatusCode, header},
    routing::get,
};
use common::{
    breakers::{server_side, window_of_ten},
    events::transitions,
    flaky::{counting_server, status},
    http::{client, serve, serve_addr},
};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_rampart::{
    BoxError,
    circuit_breaker::{CircuitBreakerLayer, CircuitOpen, Config, PROBLEM_TYPE, State},
    classify::HttpStatus,
};

/// (a) An axum `Router` layers each route separately; one breaker layer must still be one
/// breaker. Failures on `/a` open it, and `/b` and `/c` are then refused with the breaker's own
/// 503 (with `Retry-After` and a problem+json body) without reaching their handlers.
#[tokio::test]
async fn one_breaker_guards_every_route_of_a_router() {
    let layer = server_side(window_of_ten("app").build().unwrap());
    let handle = layer.handle();

    let b_hits = Arc::new(AtomicUsize::new(0));
    let b_seen = b_hits.clone();
    let app = Router::new()
        .route(
            "/a",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "a is broken") }),
        )
        .route(
            "/b",
            get(move || async move {
                b_seen.fetch_add(1, SeqCst);
                "b"
            }),
        )
        .route("/c", get(|| async { "c" }))
        .layer(layer);
    let base = serve(app).await;
    let http = client();
    let get = |path: &str| http.get(format!("{base}{path}")).send();

    // Two healthy calls, then failures on /a. With 5 calls minimum and a 50 % threshold, the
    // third failure (3 of 5 calls) opens the breaker, and not one call earlier.
    assert_eq!(get("/b").await.unwrap().status(), StatusCode::OK);
    assert_eq!(get("/c").await.unwrap().status(), StatusCode::OK);
    for n in 1..=3 {
        assert_eq!(handle.state(), State::Closed, "open before failure {n}");
        let res = get("/a").await.unwrap();
        // The handler's own 500: the call was made and recorded.
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(res.text().await.unwrap(), "a is broken");
    }
    assert_eq!(handle.state(), State::Open);
    let snap = handle.snapshot();
    assert_eq!((snap.calls, snap.failures), (5, 3), "{snap:?}");
    assert_eq!(snap.failure_rate, Some(0.6));
    assert!(
        snap.retry_after
            .is_some_and(|d| d <= Duration::from_secs(30))
    );

    // Every route is refused now, including the two that never failed.
    for path in ["/a", "/b", "/c"] {
        let res = get(path).await.unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
        let retry_after: u64 = res.headers()[header::RETRY_AFTER]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=30).contains(&retry_after), "{path}: {retry_after}");
        assert_eq!(
            res.headers()[header::CONTENT_TYPE],
            "application/problem+json",
            "{path}"
        );
        let body = res.text().await.unwrap();
        assert!(body.contains(PROBLEM_TYPE), "{path}: {body}");
        assert!(body.contains("\"status\":503"), "{path}: {body}");
        assert!(body.contains("`app`"), "{path}: {body}");
    }
    assert_eq!(
        b_hits.load(SeqCst),
        1,
        "/b's handler ran while the breaker was open"
    );
    let snap = handle.snapshot();
    assert_eq!(snap.not_permitted, 3);
    // Refused calls are not recorded as outcomes.
    assert_eq!((snap.calls, snap.failures), (5, 3));
}

/// (b) A healthy app never trips: many 200s, concurrent, and 404s (a client's mistake, not a
/// sick server) all count as successes.
#[tokio::test]
async fn healthy_app_stays_closed() {
    let layer = server_side(window_of_ten("healthy").build().unwrap());
    let handle = layer.handle();
    let app = Router::new()
        .route("/ok", get(|| async { "ok" }))
        .route(
            "/gone",
            get(|| async { (StatusCode::NOT_FOUND, "no such thing") }),
        )
        .layer(layer);
    let base = serve(app).await;
    let http = client();

    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let req = http.get(format!("{base}/ok")).send();
        calls.spawn(async move { req.await.unwrap().status() });
    }
    while let Some(status) = calls.join_next().await {
        assert_eq!(status.unwrap(), StatusCode::OK);
    }
    assert_eq!(handle.state(), State::Closed);
    let snap = handle.snapshot();
    assert_eq!((snap.calls, snap.failures), (10, 0), "{snap:?}");

    // A window full of 404s from a route: recorded, and successes.
    for _ in 0..20 {
        let res = http.get(format!("{base}/gone")).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
    }
    // A path with no route at all: axum's fallback 404.
    let res = http.get(format!("{base}/nowhere")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);

    let snap = handle.snapshot();
    assert_eq!(snap.state, State::Closed);
    assert_eq!((snap.calls, snap.failures), (10, 0), "{snap:?}");
    assert_eq!(snap.failure_rate, Some(0.0));
    assert_eq!(snap.not_permitted, 0);
}

/// (c) A reqwest client behind one breaker per authority, talking to two real servers: the one
/// that always answers 503 gets its breaker opened and is then no longer called at all; the
/// healthy one is never refused.
#[tokio::test]
async fn keyed_client_isolates_the_failing_host() {
    let (bad, bad_hits) = counting_server(|_| status(StatusCode::SERVICE_UNAVAILABLE));
    let (good, good_hits) = counting_server(|_| status(StatusCode::OK));
    let (bad, good) = (serve_addr(bad).await, serve_addr(good).await);
    // Same host, different ports: different authorities, different breakers.
    assert_ne!(bad.port(), good.port());

    let layer =
        CircuitBreakerLayer::keyed_by_authority(window_of_ten("upstreams").build().unwrap())
            .classify(HttpStatus::default());
    let breakers = layer.breakers();
    let http = client();
    let mut svc = ServiceBuilder::new().layer(layer).service(http.clone());

    let (bad_url, good_url) = (format!("http://{bad}/"), format!("http://{good}/"));
    let (bad_key, good_key) = (bad.to_string(), good.to_string());
    let authority = |k: &str| http::uri::Authority::try_from(k).unwrap();
    for round in 1..=10 {
        let req = http.get(&good_url).build().unwrap();
        let res = svc.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "round {round}");

        let req = http.get(&bad_url).build().unwrap();
        let result: Result<reqwest::Response, BoxError> =
            svc.ready().await.unwrap().call(req).await;
        if round <= 5 {
            // The server's own 503, passed through (error mode keeps responses as they are).
            assert_eq!(result.unwrap().status(), StatusCode::SERVICE_UNAVAILABLE);
        } else {
            let err = result.unwrap_err();
            let open = err
                .downcast_ref::<CircuitOpen>()
                .unwrap_or_else(|| panic!("round {round}: not a CircuitOpen: {err}"));
            assert_eq!(open.breaker(), format!("upstreams/{bad_key}"));
            assert_eq!(open.state(), State::Open);
            assert!(
                open.retry_after()
                    .is_some_and(|d| d > Duration::ZERO && d <= Duration::from_secs(30))
            );
        }
        let expected_bad_hits = round.min(5);
        assert_eq!(bad_hits.count(), expected_bad_hits, "round {round}");
    }
    assert_eq!(bad_hits.count(), 5, "the open breaker let calls through");
    assert_eq!(good_hits.count(), 10);

    let mut keys: Vec<String> = breakers.keys().iter().map(|a| a.to_string()).collect();
    keys.sort();
    let mut expected = vec![bad_key.clone(), good_key.clone()];
    expected.sort();
    assert_eq!(keys, expected);
    assert_eq!(breakers.len(), 2);

    let bad_breaker = breakers.get(&authority(&bad_key)).unwrap();
    let bad_snap = bad_breaker.snapshot();
    assert_eq!(bad_snap.state, State::Open);
    assert_eq!((bad_snap.calls, bad_snap.failures), (5, 5));
    assert_eq!(bad_snap.not_permitted, 5);

    let good_breaker = breakers.get(&authority(&good_key)).unwrap();
    let good_snap = good_breaker.snapshot();
    assert_eq!(good_snap.state, State::Closed);
    assert_eq!((good_snap.calls, good_snap.failures), (10, 0));
    assert_eq!(good_snap.not_permitted, 0);
    assert_eq!(good_breaker.name(), format!("upstreams/{good_key}"));
}

/// (d) Recovery against a real server that fails four times, then heals: open, a failed probe,
/// open again, a good probe, closed. Real time: two open periods of 200 ms.
#[tokio::test]
async fn recovers_through_half_open_probes() {
    let (app, hits) = counting_server(|n| {
        if n <= 4 {
            status(StatusCode::INTERNAL_SERVER_ERROR)
        } else {
            status(StatusCode::OK)
        }
    });
    let url = format!("{}/", serve(app).await);

    let (transitions, on_transition) = transitions();
    let layer = CircuitBreakerLayer::new(
        Config::builder()
            .name("flaky")
            .consecutive_failures(3)
            .open_duration(Duration::from_millis(200))
            .half_open_permits(1)
            .on_event(on_transition)
            .build()
            .unwrap(),
    )
    .classify(HttpStatus::default());
    let handle = layer.handle();
    let http = client();
    let mut svc = ServiceBuilder::new().layer(layer).service(http.clone());
    let mut call = async || {
        let req = http.get(&url).build().unwrap();
        svc.ready().await.unwrap().call(req).await
    };
    let started = tokio::time::Instant::now();

    // Three failures in a row: open.
    for _ in 0..3 {
        assert_eq!(
            call().await.unwrap().status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
    assert_eq!(handle.state(), State::Open);
    let err = call().await.unwrap_err();
    assert!(err.downcast_ref::<CircuitOpen>().is_some(), "{err}");
    assert_eq!(hits.count(), 3);

    // After the open duration: one probe, which fails (the server's 4th answer), so open again.
    tokio::time::sleep(handle.snapshot().retry_after.unwrap() + Duration::from_millis(20)).await;
    assert_eq!(
        call().await.unwrap().status(),
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(handle.state(), State::Open);
    assert_eq!(hits.count(), 4);
    let err = call().await.unwrap_err();
    assert!(err.downcast_ref::<CircuitOpen>().is_some(), "{err}");
    assert_eq!(hits.count(), 4);

    // The next probe meets a healed server: closed, and traffic flows again.
    tokio::time::sleep(handle.snapshot().retry_after.unwrap() + Duration::from_millis(20)).await;
    assert_eq!(call().await.unwrap().status(), StatusCode::OK);
    assert_eq!(handle.state(), State::Closed);
    for _ in 0..3 {
        assert_eq!(call().await.unwrap().status(), StatusCode::OK);
    }
    assert_eq!(hits.count(), 8);
    assert!(started.elapsed() < Duration::from_secs(2));

    use State::*;
    assert_eq!(
        *transitions.lock().unwrap(),
        [
            (Closed, Open),
            (Open, HalfOpen),
            (HalfOpen, Open),
            (Open, HalfOpen),
            (HalfOpen, Closed),
        ]
    );
}

/// (e) A downstream that answers `503 Retry-After: 120` knows best: the breaker it trips stays
/// open for about two minutes although the configuration says one second; with
/// `respect_retry_after(false)` the configuration wins.
#[tokio::test]
async fn downstream_retry_after_lengthens_the_open_duration() {
    let (app, hits) = counting_server(|_| {
        axum::response::IntoResponse::into_response((
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "120")],
            "busy",
        ))
    });
    let url = format!("{}/", serve(app).await);
    let http = client();

    for respect in [true, false] {
        let layer = CircuitBreakerLayer::new(
            Config::builder()
                .name("busy")
                .count_window(5)
                .minimum_calls(3)
                .failure_rate(0.5)
                .open_duration(Duration::from_secs(1))
                .respect_retry_after(respect)
                .build()
                .unwrap(),
        )
        .classify(HttpStatus::default());
        let handle = layer.handle();
        let mut svc = ServiceBuilder::new().layer(layer).service(http.clone());
        for _ in 0..3 {
            let req = http.get(&url).build().unwrap();
            let res = svc.ready().await.unwrap().call(req).await.unwrap();
            assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(res.headers()[header::RETRY_AFTER], "120");
        }
        assert_eq!(handle.state(), State::Open, "respect = {respect}");
        let open_for = handle.snapshot().retry_after.unwrap();
        let req = http.get(&url).build().unwrap();
        let err = svc.ready().await.unwrap().call(req).await.unwrap_err();
        let told = err
            .downcast_ref::<CircuitOpen>()
            .unwrap()
            .retry_after()
            .unwrap();
        if respect {
            assert!(open_for > Duration::from_secs(100), "{open_for:?}");
            assert!(open_for <= Duration::from_secs(120), "{open_for:?}");
            assert!(told > Duration::from_secs(100), "{told:?}");
        } else {
            assert!(open_for <= Duration::from_secs(1), "{open_for:?}");
            assert!(told <= Duration::from_secs(1), "{told:?}");
        }
    }
    assert_eq!(hits.count(), 6);
}

/// (e, server side) The same hint through an axum app in 503 mode: the breaker's own 503 passes
/// the downstream's two minutes on to its callers in `Retry-After`.
#[tokio::test]
async fn server_side_503_carries_the_downstream_retry_after() {
    let layer = server_side(
        Config::builder()
            .name("gateway")
            .consecutive_failures(2)
            .open_duration(Duration::from_secs(1))
            .build()
            .unwrap(),
    );
    let handle = layer.handle();
    let app = Router::new()
        .route(
            "/",
            get(|| async {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [(header::RETRY_AFTER, "120")],
                    "busy",
                )
            }),
        )
        .layer(layer);
    let url = format!("{}/", serve(app).await);
    let http = client();

    for _ in 0..2 {
        let res = http.get(&url).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.text().await.unwrap(), "busy");
    }
    assert_eq!(handle.state(), State::Open);
    assert!(handle.snapshot().retry_after.unwrap() > Duration::from_secs(100));

    let res = http.get(&url).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        res.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );
    let retry_after: u64 = res.headers()[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((101..=120).contains(&retry_after), "{retry_after}");
}
