//! The Idempotency-Key layer tells its listeners what it did with each request, and the outcome
//! of its lease and completion, with the scoped key.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, body::Body, http::Request, routing::post};
use tower::ServiceExt;
use tower_rampart::idempotency::{
    EventKind, IdempotencyLayer, MemoryStore,
    testing::{Fault, FaultyStore, Op},
};

type Seen = Arc<Mutex<Vec<(Option<String>, EventKind)>>>;

fn app(store: FaultyStore<MemoryStore>, seen: Seen, work: Duration) -> Router {
    let layer = IdempotencyLayer::builder()
        .store(store)
        .global_keys()
        .lease(Duration::from_secs(1))
        .store_timeout(Duration::from_millis(100))
        .on_event(move |e| {
            seen.lock()
                .unwrap()
                .push((e.key.map(str::to_owned), e.kind));
        })
        .build()
        .unwrap();
    Router::new()
        .route(
            "/pay",
            post(move || async move {
                tokio::time::sleep(work).await;
                "paid"
            }),
        )
        .layer(layer)
}

async fn send(app: &Router, key: Option<&str>, body: &'static str) -> u16 {
    let mut req = Request::post("/pay");
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    let res = app
        .clone()
        .oneshot(req.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    res.status().as_u16()
}

fn kinds(seen: &Seen) -> Vec<EventKind> {
    seen.lock().unwrap().iter().map(|(_, k)| *k).collect()
}

#[tokio::test(start_paused = true)]
async fn every_outcome_is_an_event_with_its_key() {
    let seen = Seen::default();
    let app = app(
        FaultyStore::new(MemoryStore::new()),
        seen.clone(),
        Duration::from_millis(300),
    );
    let first = tokio::spawn({
        let app = app.clone();
        async move { send(&app, Some("k1"), "{}").await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(send(&app, Some("k1"), "{}").await, 409);
    assert_eq!(first.await.unwrap(), 200);
    assert_eq!(send(&app, Some("k1"), "{}").await, 200);
    assert_eq!(send(&app, Some("k1"), "{\"other\":1}").await, 422);
    assert_eq!(send(&app, None, "{}").await, 400);
    assert_eq!(send(&app, Some("a b"), "{}").await, 400);
    assert_eq!(
        kinds(&seen),
        [
            EventKind::New,
            EventKind::Conflict,
            EventKind::Replayed,
            EventKind::Mismatch,
            EventKind::MissingKey,
            EventKind::InvalidKey,
        ]
    );
    let keys: Vec<_> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|(k, _)| k.clone())
        .collect();
    // Redacted by default: the scoped key's hash, never the key (nor a principal in it).
    let hashed = format!("blake3:{}", &blake3::hash(b"0::k1").to_hex()[..12]);
    assert_eq!(
        keys[0].as_deref(),
        Some(hashed.as_str()),
        "the scoped key, hashed"
    );
    assert!(keys.iter().flatten().all(|k| !k.contains("k1")), "{keys:?}");
    assert_eq!(keys[4], None, "no key yet");
}

/// With `log_raw_keys(true)`, events carry the scoped key as stored.
#[tokio::test(start_paused = true)]
async fn raw_keys_when_asked() {
    let seen = Seen::default();
    let s = seen.clone();
    let layer = IdempotencyLayer::builder()
        .scope(|_| Some("alice".to_owned()))
        .log_raw_keys(true)
        .on_event(move |e| s.lock().unwrap().push((e.key.map(str::to_owned), e.kind)))
        .build()
        .unwrap();
    let app = Router::new()
        .route("/pay", post(|| async { "paid" }))
        .layer(layer);
    assert_eq!(send(&app, Some("k1"), "{}").await, 200);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen, [(Some("5:alice:k1".to_owned()), EventKind::New)]);
}

#[tokio::test(start_paused = true)]
async fn a_lost_lease_and_a_failing_store_are_events() {
    let seen = Seen::default();
    let store = FaultyStore::new(MemoryStore::new());
    store.inject(Op::Renew, 0..1, Fault::ExpireLease);
    store.inject(Op::Claim, 1..2, Fault::Fail);
    let app = app(store, seen.clone(), Duration::from_secs(2));
    assert_eq!(send(&app, Some("k2"), "{}").await, 200);
    assert_eq!(send(&app, Some("k3"), "{}").await, 503);
    let kinds = kinds(&seen);
    assert!(kinds.contains(&EventKind::LeaseLost), "{kinds:?}");
    assert!(kinds.contains(&EventKind::StoreError), "{kinds:?}");
    assert_eq!(EventKind::LeaseLost.as_str(), "lease_lost");
}
