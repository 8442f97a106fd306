//! A full memory store as clients see it, on a real axum server over loopback with a real HTTP
//! client: the 503 carries the store's own `Retry-After` (when room really frees up), and keys
//! completed past the retention floor make room instead of blocking new keys.

mod common;

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering::SeqCst},
};

use axum::{Router, http::StatusCode, routing::post};
use common::http::{client, serve};
use tower_rampart::idempotency::{IdempotencyLayer, MemoryStore};

async fn app(store: MemoryStore) -> (String, Arc<AtomicUsize>) {
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    let layer = IdempotencyLayer::builder()
        .global_keys()
        .store(store)
        .build()
        .unwrap();
    let router = Router::new()
        .route(
            "/payments",
            post(move || {
                let runs = counted.clone();
                async move {
                    runs.fetch_add(1, SeqCst);
                    (StatusCode::CREATED, "{}")
                }
            }),
        )
        .layer(layer);
    (serve(router).await, runs)
}

/// Before the fix the layer answered every full store with `Retry-After: 1`, although no room
/// could free up before the oldest record passed the floor (an hour here): clients retried
/// every second for an hour.
#[tokio::test]
async fn a_full_store_answers_503_with_when_room_frees_up() {
    let (base, runs) = app(MemoryStore::with_max_bytes(16 * 1024)).await;
    let client = client();
    let mut answers = Vec::new();
    for i in 0..100 {
        let res = client
            .post(format!("{base}/payments"))
            .header("idempotency-key", format!("key-{i}"))
            .body("{}")
            .send()
            .await
            .unwrap();
        if res.status() == StatusCode::SERVICE_UNAVAILABLE {
            let retry_after = res.headers()["retry-after"].to_str().unwrap().to_owned();
            answers.push(retry_after);
            break;
        }
        assert_eq!(res.status(), StatusCode::CREATED, "key-{i}");
    }
    let stored = runs.load(SeqCst);
    assert!(stored > 5, "{stored} keys were stored");
    // Every record is younger than the one-hour floor: room frees up when the oldest one,
    // completed moments ago, passes it.
    let secs: u64 = answers
        .first()
        .expect("the store filled up")
        .parse()
        .unwrap();
    assert!((3500..=3600).contains(&secs), "Retry-After: {secs}");

    // A replay of a stored key still works meanwhile.
    let res = client
        .post(format!("{base}/payments"))
        .header("idempotency-key", "key-0")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(res.headers()["idempotent-replayed"], "true");
    assert_eq!(runs.load(SeqCst), stored);
}
