//! The server pipeline's Idempotency-Key stage, over real HTTP (axum on 127.0.0.1, reqwest): it
//! sits inside the pipeline's timeout, so the timeout bounds the caller's wait while the
//! detached handler runs on, and its answer is what the retry gets. Breaker refusals are never
//! stored, and replays do not count as calls of the handler.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

use axum::{Router, extract::State as Shared, http::StatusCode, routing::post};
use common::http::{client as http, serve};
use tokio::sync::watch;
use tower_rampart::{
    circuit_breaker::State,
    idempotency::{IDEMPOTENT_REPLAYED, IdempotencyLayer},
    pipeline::StandardServerLayer,
};

/// How many runs of the handler started, a count of the finished ones, and the gate they wait
/// for before they finish.
#[derive(Clone)]
struct Runs {
    started: Arc<AtomicUsize>,
    finished: watch::Sender<usize>,
    gate: watch::Sender<bool>,
}

impl Runs {
    /// Runs that finish at once (`open`) or once [`open`](Self::open) is called.
    fn new(open: bool) -> Self {
        Runs {
            started: Arc::new(AtomicUsize::new(0)),
            finished: watch::Sender::new(0),
            gate: watch::Sender::new(open),
        }
    }

    /// Lets the runs finish.
    fn open(&self) {
        self.gate.send_replace(true);
    }

    /// Waits until `n` runs have finished (at most 10 s, so a broken build fails, not hangs).
    async fn finished(&self, n: usize) {
        let mut rx = self.finished.subscribe();
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|f| *f >= n))
            .await
            .expect("the handler finishes")
            .unwrap();
    }
}

/// A payment: waits for the gate, then answers 201 naming its run.
async fn pay(Shared(runs): Shared<Runs>) -> (StatusCode, String) {
    let run = runs.started.fetch_add(1, SeqCst) + 1;
    let _ = runs.gate.subscribe().wait_for(|open| *open).await;
    runs.finished.send_modify(|n| *n += 1);
    (StatusCode::CREATED, format!("paid, run {run}"))
}

fn idempotency() -> IdempotencyLayer {
    IdempotencyLayer::builder()
        .global_keys()
        // A retry that arrives while the first run is being stored waits for its answer
        // instead of a 409: no race in the assertions.
        .wait_for_in_flight(Duration::from_secs(5))
        .build()
        .unwrap()
}

async fn send_payment(
    client: &reqwest::Client,
    url: &str,
    key: &str,
) -> (StatusCode, bool, String) {
    let res = client
        .post(url)
        .header("idempotency-key", format!("\"{key}\""))
        .body("{\"amount\":10}")
        .send()
        .await
        .unwrap();
    let replayed = res.headers().get(IDEMPOTENT_REPLAYED).is_some();
    (res.status(), replayed, res.text().await.unwrap())
}

/// The case: a handler slower than the pipeline's 200 ms timeout (it finishes only
/// once the first caller has had its answer). The first caller gets the 504 at the timeout,
/// the handler completes once, detached, and the retry gets its answer.
#[tokio::test]
async fn the_timeout_answers_the_caller_while_the_handler_completes_once() {
    let runs = Runs::new(false);
    let layer = StandardServerLayer::builder()
        .timeout(Duration::from_millis(200))
        .idempotency(idempotency())
        .build()
        .unwrap();
    let app = Router::new()
        .route("/payments", post(pay))
        .with_state(runs.clone())
        .layer(layer);
    let url = format!("{}/payments", serve(app).await);
    let client = http();

    let (status, replayed, _) = send_payment(&client, &url, "pay-1").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert!(!replayed);
    assert_eq!(*runs.finished.borrow(), 0, "the handler is still running");

    runs.open();
    runs.finished(1).await;
    let (status, replayed, body) = send_payment(&client, &url, "pay-1").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(replayed, "the retry gets the stored answer");
    assert_eq!(body, "paid, run 1");
    assert_eq!(runs.started.load(SeqCst), 1, "the handler ran exactly once");
    assert_eq!(*runs.finished.borrow(), 1);
}

/// The breaker sits outside the stage: a call it refuses never reaches the store, so the key
/// stays free and the retry, once the breaker lets it through, runs the handler.
#[tokio::test]
async fn a_breaker_refusal_is_never_stored() {
    let runs = Runs::new(true);
    let layer = StandardServerLayer::builder()
        .circuit_breaker(|defaults| defaults.name("payments"))
        .idempotency(idempotency())
        .build()
        .unwrap();
    let app = Router::new()
        .route("/payments", post(pay))
        .with_state(runs.clone())
        .layer(layer.clone());
    let url = format!("{}/payments", serve(app).await);
    let client = http();

    layer.breaker().force_open();
    let (status, replayed, _) = send_payment(&client, &url, "pay-2").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(!replayed);
    assert_eq!(runs.started.load(SeqCst), 0);

    layer.breaker().reset();
    let (status, replayed, body) = send_payment(&client, &url, "pay-2").await;
    assert_eq!((status, replayed), (StatusCode::CREATED, false), "{body}");
    assert_eq!(body, "paid, run 1");
}

/// A replay answers from the store without calling the handler: it tells the breaker nothing
/// about the handler's health. A stored 500 replayed again and again must not open it.
#[tokio::test]
async fn replays_are_not_counted_by_the_breaker() {
    let layer = StandardServerLayer::builder()
        .circuit_breaker(|defaults| defaults.consecutive_failures(2))
        .idempotency(idempotency())
        .build()
        .unwrap();
    let app = Router::new()
        .route(
            "/payments",
            post(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "declined") }),
        )
        .layer(layer.clone());
    let url = format!("{}/payments", serve(app).await);
    let client = http();

    let (status, replayed, _) = send_payment(&client, &url, "pay-3").await;
    assert_eq!(
        (status, replayed),
        (StatusCode::INTERNAL_SERVER_ERROR, false)
    );
    for _ in 0..3 {
        let (status, replayed, _) = send_payment(&client, &url, "pay-3").await;
        assert_eq!(
            (status, replayed),
            (StatusCode::INTERNAL_SERVER_ERROR, true)
        );
    }
    // One real failure: below the threshold of two in a row.
    assert_eq!(layer.breaker().state(), State::Closed);
    assert_eq!(layer.breaker().snapshot().failures, 1);
}
