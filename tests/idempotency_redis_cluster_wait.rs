//! `wait_for_replicas` on a real Redis Cluster: `WAIT` goes to the primary that owns the key,
//! on the connection that made the write, not to every primary. (The fault matrix's row for
//! `WAIT` on a cluster whose other primaries have no replica; the single-server rows are in
//! idempotency_redis_faults.rs.)

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use common::{
    flaky::{counting_server, status},
    http::{Answer, serve},
    ledger::post_key,
    redis_server::RedisCluster,
    store_contract::{created, fp},
};
use redis::cluster_async::ClusterConnection;
use tower_rampart::idempotency::{
    Claim, IdempotencyLayer, OwnerToken, RedisStore, Store, problem_types,
};

const LEASE: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_replicas_on_a_cluster_asks_only_the_keys_primary() {
    let (cluster, store) = cluster_with_one_replica().await;
    let replicated = cluster.key_where("idempotency:w", |owner| owner == 0);
    let key = replicated.strip_prefix("idempotency:").unwrap().to_owned();

    let waits: Vec<u64> = cluster.nodes[..3].iter().map(|n| n.calls("wait")).collect();
    let token = OwnerToken::new();
    let claim = store.claim(&key, &fp(1), token, LEASE).await;
    assert_eq!(
        claim.as_ref().ok(),
        Some(&Claim::New),
        "the key's primary has its replica: {claim:?}"
    );
    assert_eq!(
        store
            .complete(&key, &fp(1), token, &created("{}"), LEASE)
            .await
            .ok(),
        Some(true),
        "the completion is replicated too"
    );
    let replica = cluster.nodes.last().unwrap();
    assert_eq!(
        replica.cli(&["DBSIZE"]).as_deref(),
        Some("1"),
        "the replica has the key"
    );
    let after: Vec<u64> = cluster.nodes[..3].iter().map(|n| n.calls("wait")).collect();
    assert_eq!(
        (
            after[0] - waits[0],
            after[1] - waits[1],
            after[2] - waits[2]
        ),
        (2, 0, 0),
        "one WAIT per write, on the key's primary only"
    );

    // A key whose primary has no replica is still refused: WAIT is not skipped.
    let lonely = cluster.key_where("idempotency:l", |owner| owner == 1);
    let lonely = lonely.strip_prefix("idempotency:").unwrap();
    let err = store
        .claim(lonely, &fp(1), OwnerToken::new(), LEASE)
        .await
        .expect_err("no replica acknowledged");
    assert!(err.to_string().contains("0 of 1 replicas"), "{err}");
}

/// Three primaries, the first with a replica; a store on it that waits for one replica.
async fn cluster_with_one_replica() -> (RedisCluster, RedisStore<ClusterConnection>) {
    let cluster = tokio::task::spawn_blocking(|| {
        let mut c = RedisCluster::start(3, None);
        c.add_replica(0);
        c
    })
    .await
    .unwrap();
    let urls = cluster.urls();
    let refs: Vec<&str> = urls.iter().map(String::as_str).collect();
    let store = RedisStore::connect_cluster(&refs)
        .await
        .unwrap()
        .wait_for_replicas(1, Duration::from_millis(500))
        .unwrap();
    (cluster, store)
}

async fn send(url: &str, key: &str) -> Answer {
    post_key(url, key, None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_on_a_replicated_primary_runs_once_through_the_layer() {
    let (cluster, store) = cluster_with_one_replica().await;
    let layer = IdempotencyLayer::builder()
        .store(store)
        .global_keys()
        .store_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    // Counts the handler's runs ("/", any method).
    let (router, runs) = counting_server(|_| status(StatusCode::CREATED));
    let url = format!("{}/", serve(router.layer(layer)).await);
    // The layer's Redis key of client key `k` with global keys is `idempotency:0::k`.
    let replicated = cluster.key_where("idempotency:0::r", |owner| owner == 0);
    let replicated = replicated.strip_prefix("idempotency:0::").unwrap();
    let lonely = cluster.key_where("idempotency:0::l", |owner| owner == 1);
    let lonely = lonely.strip_prefix("idempotency:0::").unwrap();

    let a = send(&url, replicated).await;
    assert_eq!((a.status, a.replayed), (201, false), "{a:?}");
    let a = send(&url, replicated).await;
    assert_eq!((a.status, a.replayed), (201, true), "{a:?}");
    assert_eq!(runs.count(), 1);

    // Its primary has no replica: refused before the handler runs, as on one server.
    let a = send(&url, lonely).await;
    assert!(a.is_problem(problem_types::STORE_UNAVAILABLE), "{a:?}");
    assert_eq!(runs.count(), 1, "not run");
}
