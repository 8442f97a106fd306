//! The crate's own refusals and timeouts, placed inside the Idempotency-Key layer, are never
//! stored as the key's answer: a breaker's 503 (the handler never ran) frees the key, a
//! timeout's 504 (the handler was cancelled part-way) completes it as "outcome unknown", never
//! replayed and never run again. Real axum server, real reqwest client.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

use axum::{Router, http::StatusCode, routing::post};
use common::http::{Answer, client, http_timeout, serve};
use tower_rampart::{
    circuit_breaker::{CircuitBreakerLayer, Config},
    classify::HttpStatus,
    idempotency::{EventKind, IdempotencyLayer, MemoryStore, RedisStore, Store, problem_types},
};

async fn send(client: &reqwest::Client, url: &str, key: &str) -> Answer {
    let res = client
        .post(url)
        .header("idempotency-key", key)
        .body("{\"amount\":10}")
        .send()
        .await
        .unwrap();
    let (status, headers) = (res.status(), res.headers().clone());
    Answer::new(status, &headers, res.text().await.unwrap())
}

/// Idempotency outside a 200 ms server timeout around a 300 ms handler (the 2 s / 3 s,
/// shortened): the handler is cancelled part-way, the first caller gets the timeout's 504, and
/// the retry is told the outcome is unknown: never a replayed 504, never a second run.
async fn a_cancelled_handler_completes_as_outcome_unknown<St: Store>(store: St) {
    let (started, completed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (s, c) = (started.clone(), completed.clone());
    let kinds = Arc::new(std::sync::Mutex::new(Vec::new()));
    let k = kinds.clone();
    let layer = IdempotencyLayer::builder()
        .store(store)
        .global_keys()
        .on_event(move |e| k.lock().unwrap().push(e.kind))
        .build()
        .unwrap();
    let app = Router::new()
        .route(
            "/payments",
            post(move || {
                let (s, c) = (s.clone(), c.clone());
                async move {
                    s.fetch_add(1, SeqCst);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    c.fetch_add(1, SeqCst);
                    (StatusCode::CREATED, "paid")
                }
            }),
        )
        .layer(http_timeout(Duration::from_millis(200)))
        .layer(layer);
    let url = format!("{}/payments", serve(app).await);
    let client = client();

    let first = send(&client, &url, "pay-1").await;
    assert_eq!(
        first.status, 504,
        "the first caller gets the timeout's answer"
    );
    assert!(!first.replayed);
    // Longer than the handler would have taken: it was cancelled, not merely slow.
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!((started.load(SeqCst), completed.load(SeqCst)), (1, 0));

    for _ in 0..2 {
        let retry = send(&client, &url, "pay-1").await;
        assert_eq!(retry.status, 409, "{retry:?}");
        assert!(!retry.replayed, "the timeout's 504 is never replayed");
        assert_eq!(
            retry.problem.as_deref(),
            Some(problem_types::OUTCOME_UNKNOWN)
        );
    }
    assert_eq!(started.load(SeqCst), 1, "never run again");
    let kinds = kinds.lock().unwrap().clone();
    assert!(kinds.contains(&EventKind::CutOff), "{kinds:?}");
    assert!(kinds.contains(&EventKind::OutcomeUnknown), "{kinds:?}");
}

#[tokio::test]
async fn outcome_unknown_on_the_memory_store() {
    a_cancelled_handler_completes_as_outcome_unknown(MemoryStore::new()).await;
}

/// The new kind of record, through Redis's encoding.
#[tokio::test]
async fn outcome_unknown_on_redis() {
    let server = common::redis_server::RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    a_cancelled_handler_completes_as_outcome_unknown(store).await;
}

/// A breaker inside the layer refused the call: the handler never ran, so the key is freed and
/// the retry (once the breaker lets calls through) runs it.
#[tokio::test]
async fn a_breaker_refusal_frees_the_key() {
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let breaker = CircuitBreakerLayer::new(Config::builder().name("payments").build().unwrap())
        .classify(HttpStatus::default())
        .respond_http();
    let handle = breaker.handle();
    handle.force_open();
    let layer = IdempotencyLayer::builder().global_keys().build().unwrap();
    let app = Router::new()
        .route(
            "/payments",
            post(move || {
                let r = r.clone();
                async move {
                    let run = r.fetch_add(1, SeqCst) + 1;
                    (StatusCode::CREATED, format!("run {run}"))
                }
            }),
        )
        .layer(breaker)
        .layer(layer);
    let url = format!("{}/payments", serve(app).await);
    let client = client();

    let refused = send(&client, &url, "pay-2").await;
    assert_eq!(refused.status, 503);
    assert_eq!(
        refused.problem.as_deref(),
        Some(tower_rampart::problems::CIRCUIT_OPEN)
    );
    let again = send(&client, &url, "pay-2").await;
    assert_eq!(
        again.status, 503,
        "still refused by the breaker, not replayed"
    );
    assert!(!again.replayed, "{again:?}");

    handle.reset();
    let ran = send(&client, &url, "pay-2").await;
    assert_eq!((ran.status, ran.body.as_str()), (201, "run 1"), "{ran:?}");
    assert!(!ran.replayed);
    let replayed = send(&client, &url, "pay-2").await;
    assert_eq!((replayed.status, replayed.replayed), (201, true));
    assert_eq!(runs.load(SeqCst), 1);
}

/// The same with the timeout in error mode (a tower stack, not a router): its `Elapsed` error
/// reaches the first caller, and the key completes as "outcome unknown".
#[tokio::test(start_paused = true)]
async fn a_timeout_error_inside_completes_as_outcome_unknown() {
    use http_body_util::{BodyExt, Full};
    use tower::{Layer, ServiceExt, service_fn};
    use tower_rampart::{BoxError, replay::Buffered, timeout::TimeoutLayer};

    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let handler = service_fn(move |_: http::Request<Buffered<Full<bytes::Bytes>>>| {
        let r = r.clone();
        async move {
            r.fetch_add(1, SeqCst);
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok::<_, BoxError>(http::Response::new(Full::new(bytes::Bytes::from("paid"))))
        }
    });
    let timed = TimeoutLayer::new(Duration::from_millis(200))
        .unwrap()
        .layer(handler);
    let layer = IdempotencyLayer::builder().global_keys().build().unwrap();
    let svc = layer.layer(timed);
    let req = || {
        http::Request::post("/pay")
            .header("idempotency-key", "pay-3")
            .body(Full::new(bytes::Bytes::from("{}")))
            .unwrap()
    };
    let err = svc.clone().oneshot(req()).await.unwrap_err();
    assert!(err.is::<tower_rampart::timeout::Elapsed>(), "{err}");
    let retry = svc.clone().oneshot(req()).await.unwrap();
    assert_eq!(retry.status(), 409);
    let body = retry.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains(problem_types::OUTCOME_UNKNOWN), "{body}");
    assert_eq!(runs.load(SeqCst), 1);
}
