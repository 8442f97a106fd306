//! The Redis store against real redis-servers that the tests start on free ports: the store
//! contract, round trips, two app instances sharing one Redis, an outage and recovery, and a
//! three-node Redis Cluster. (The layer's own rules run on Redis in idempotency_layer.rs.)

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    time::{Duration, Instant},
};

use axum::http::StatusCode;
use common::{
    http::{client, serve},
    ledger::counting,
    redis_server::{RedisCluster, RedisServer},
    store_contract::contract,
};
use tower_rampart::idempotency::{
    IDEMPOTENT_REPLAYED, IdempotencyLayer, OnStoreError, RedisStore, Store,
};

const LEASE: Duration = Duration::from_millis(300);
const TTL: Duration = Duration::from_millis(600);

async fn real_sleep(d: Duration) {
    tokio::time::sleep(d).await
}

#[tokio::test]
async fn redis_store_keeps_the_contract() {
    let redis = RedisServer::start();
    let store = RedisStore::connect(&redis.url()).await.unwrap();
    contract(store, LEASE, TTL, real_sleep).await;
}

/// An app whose `/pay` counts executions in `runs`, taking `work`.
async fn app(
    store: impl Store + Clone,
    runs: Arc<AtomicUsize>,
    work: Duration,
    fail_open: bool,
) -> String {
    let layer = IdempotencyLayer::builder()
        .store(store)
        .global_keys()
        .store_timeout(Duration::from_secs(1))
        .on_store_error(if fail_open {
            OnStoreError::FailOpen
        } else {
            OnStoreError::FailClosed
        })
        .build()
        .unwrap();
    let router = counting(runs, work).layer(layer);
    format!("{}/pay", serve(router).await)
}

async fn pay(url: &str, key: &str) -> reqwest::Response {
    client()
        .post(url)
        .header("idempotency-key", key)
        .body("{\"amount\":1}")
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_replay_is_one_round_trip_and_a_new_key_two() {
    let redis = RedisServer::start();
    let store = RedisStore::connect(&redis.url()).await.unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let url = app(store, runs.clone(), Duration::ZERO, false).await;
    // Load the scripts once (a first EVALSHA answers NOSCRIPT and the script is loaded).
    assert_eq!(pay(&url, "warm-up").await.status(), StatusCode::CREATED);

    let before = redis.calls("evalsha");
    assert_eq!(pay(&url, "new").await.status(), StatusCode::CREATED);
    assert_eq!(redis.calls("evalsha") - before, 2, "claim + complete");

    let before = redis.calls("evalsha");
    let res = pay(&url, "new").await;
    assert_eq!(res.headers()[IDEMPOTENT_REPLAYED], "true");
    assert_eq!(
        redis.calls("evalsha") - before,
        1,
        "one claim answers the replay"
    );
    assert_eq!(runs.load(SeqCst), 2);
}

#[tokio::test]
async fn two_instances_sharing_redis_run_once() {
    let redis = RedisServer::start();
    let runs = Arc::new(AtomicUsize::new(0));
    let a = app(
        RedisStore::connect(&redis.url()).await.unwrap(),
        runs.clone(),
        Duration::from_millis(200),
        false,
    )
    .await;
    let b = app(
        RedisStore::connect(&redis.url()).await.unwrap(),
        runs.clone(),
        Duration::from_millis(200),
        false,
    )
    .await;
    let calls: Vec<_> = (0..20)
        .map(|i| {
            let url = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move { pay(&url, "shared").await.status() })
        })
        .collect();
    let mut created = 0;
    for c in calls {
        match c.await.unwrap() {
            StatusCode::CREATED => created += 1,
            StatusCode::CONFLICT => {}
            other => panic!("{other}"),
        }
    }
    assert!(created >= 1);
    assert_eq!(runs.load(SeqCst), 1, "one execution across both instances");
    let from_b = pay(&b, "shared").await;
    assert_eq!(from_b.headers()[IDEMPOTENT_REPLAYED], "true");
    let from_a = pay(&a, "shared").await;
    assert_eq!(from_a.text().await.unwrap(), from_b.text().await.unwrap());
}

#[tokio::test]
async fn a_redis_outage_fails_closed_and_the_server_recovers_by_itself() {
    let mut redis = RedisServer::start();
    let runs = Arc::new(AtomicUsize::new(0));
    let store = RedisStore::connect(&redis.url()).await.unwrap();
    let url = app(store.clone(), runs.clone(), Duration::ZERO, false).await;
    let open_url = app(store, runs.clone(), Duration::ZERO, true).await;
    assert_eq!(pay(&url, "before").await.status(), StatusCode::CREATED);

    redis.kill();
    let start = Instant::now();
    let res = pay(&url, "during").await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(res.headers().get("retry-after").is_some());
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(runs.load(SeqCst), 1, "fail closed: nothing ran");
    assert_eq!(
        pay(&open_url, "during").await.status(),
        StatusCode::CREATED,
        "fail open ran it"
    );
    assert_eq!(runs.load(SeqCst), 2);

    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = pay(&url, "after").await.status();
        if status == StatusCode::CREATED {
            break;
        }
        assert!(Instant::now() < deadline, "did not recover: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        pay(&url, "after").await.headers()[IDEMPOTENT_REPLAYED],
        "true"
    );
}

#[tokio::test]
async fn redis_cluster_keeps_the_contract() {
    let cluster = RedisCluster::start(3, None);
    let urls = cluster.urls();
    let refs: Vec<&str> = urls.iter().map(String::as_str).collect();
    let store = RedisStore::connect_cluster(&refs).await.unwrap();
    contract(store, LEASE, TTL, real_sleep).await;
}
