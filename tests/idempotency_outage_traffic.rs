//! Store traffic during an outage (issue #14, item 5): how many commands per second the layer
//! sends to a Redis that stopped answering, under 500 requests per second.
//!
//! A measurement, not a check (it runs on the real clock for seconds): ignored by default.
//!
//! ```text
//! cargo test --release --all-features --test idempotency_outage_traffic -- --ignored --nocapture
//! ```
//!
//! A real redis-server on a free port; the layer over `RedisStore` (default lease 10 s, store
//! timeout 1 s) behind a counting store; a handler that takes 1 s (so 500 owners are in flight
//! when Redis stops); 500 new keys per second. After 2 s Redis is paused with
//! `CLIENT PAUSE 5000 ALL`; the calls the layer starts during those 5 s are counted by kind.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use axum::{Router, body::Body, http::Request, http::StatusCode, routing::post};
use common::redis_server::RedisServer;
use tower::ServiceExt;
use tower_rampart::idempotency::{
    Claim, Completion, Fingerprint, IdempotencyLayer, OwnerToken, RedisStore, Store, StoreError,
};

/// Counts the calls that reach the store, by operation.
#[derive(Clone)]
struct Counting<St> {
    inner: St,
    /// claim, complete, release, renew
    calls: Arc<[AtomicU64; 4]>,
}

impl<St: Store> Store for Counting<St> {
    async fn claim(
        &self,
        key: &str,
        fingerprint: &Fingerprint,
        token: OwnerToken,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        self.calls[0].fetch_add(1, Relaxed);
        self.inner.claim(key, fingerprint, token, lease).await
    }

    async fn complete(
        &self,
        key: &str,
        fingerprint: &Fingerprint,
        token: OwnerToken,
        completion: &Completion,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.calls[1].fetch_add(1, Relaxed);
        self.inner
            .complete(key, fingerprint, token, completion, ttl)
            .await
    }

    async fn release(&self, key: &str, token: OwnerToken) -> Result<bool, StoreError> {
        self.calls[2].fetch_add(1, Relaxed);
        self.inner.release(key, token).await
    }

    async fn renew(
        &self,
        key: &str,
        token: OwnerToken,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        self.calls[3].fetch_add(1, Relaxed);
        self.inner.renew(key, token, lease).await
    }
}

fn snapshot(calls: &[AtomicU64; 4]) -> [u64; 4] {
    [0, 1, 2, 3].map(|i| calls[i].load(Relaxed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement on the real clock; run with --ignored --nocapture"]
async fn commands_per_second_reaching_a_paused_redis() {
    const RATE: u64 = 500;
    const PAUSE_MS: u64 = 5000;
    let redis = RedisServer::start();
    let calls = Arc::new([0, 0, 0, 0].map(AtomicU64::new));
    let store = Counting {
        inner: RedisStore::connect(&redis.url()).await.unwrap(),
        calls: calls.clone(),
    };
    let layer = IdempotencyLayer::builder()
        .store(store)
        .global_keys()
        .build()
        .unwrap();
    let app = Router::new()
        .route(
            "/pay",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                (StatusCode::CREATED, "{}")
            }),
        )
        .layer(layer);

    let statuses = Arc::new([0, 0, 0, 0, 0, 0].map(AtomicU64::new));
    let driver = {
        let (app, statuses) = (app.clone(), statuses.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
            for i in 0u64.. {
                tick.tick().await;
                let (app, statuses) = (app.clone(), statuses.clone());
                tokio::spawn(async move {
                    let req = Request::post("/pay")
                        .header("idempotency-key", format!("key-{i}"))
                        .body(Body::from("{}"))
                        .unwrap();
                    let status = app.oneshot(req).await.unwrap().status().as_u16();
                    statuses[(status / 100) as usize].fetch_add(1, Relaxed);
                });
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = snapshot(&calls);
    let paused = redis.cli(&["CLIENT", "PAUSE", &PAUSE_MS.to_string(), "ALL"]);
    assert_eq!(paused.as_deref(), Some("OK"));
    tokio::time::sleep(Duration::from_millis(PAUSE_MS)).await;
    let during = snapshot(&calls);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = snapshot(&calls);
    driver.abort();

    let secs = PAUSE_MS as f64 / 1000.0;
    let names = ["claim", "complete", "release", "renew"];
    let mut total = 0;
    println!("store calls per second while Redis was paused ({RATE} req/s, {secs} s):");
    for (i, name) in names.iter().enumerate() {
        let n = during[i] - before[i];
        total += n;
        println!("  {name:>8}: {:>8.0}/s", n as f64 / secs);
    }
    println!("     total: {:>8.0}/s", total as f64 / secs);
    let tail: u64 = (0..4).map(|i| after[i] - during[i]).sum();
    println!(
        "store calls per second in the 3 s after: {:.0}/s",
        tail as f64 / 3.0
    );
    let by_class: Vec<_> = (2..6)
        .map(|c| (c * 100, statuses[c].load(Relaxed)))
        .collect();
    println!("answers by class: {by_class:?}");
}
