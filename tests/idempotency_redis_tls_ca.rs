//! `RedisStore::connect_tls` and `connect_cluster_tls`: a private CA passed in (no system
//! roots involved), a certificate from another CA refused, and `wait_for_replicas` on a TLS
//! cluster whose replication also runs over TLS.

mod common;

use std::time::Duration;

use common::{
    redis_server::{RedisCluster, RedisServer, TlsFiles},
    store_contract::{created, fp},
};
use tower_rampart::idempotency::{Claim, OwnerToken, RedisStore, Store};

const LEASE: Duration = Duration::from_secs(5);

fn trusting(tls: &TlsFiles) -> redis::TlsCertificates {
    redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(tls.ca_pem.clone()),
    }
}

fn certificates(name: &str) -> TlsFiles {
    TlsFiles::make(
        &std::env::temp_dir().join(format!("rampart-tls-ca-{name}-{}", std::process::id())),
    )
}

#[tokio::test]
async fn a_private_ca_is_trusted_and_another_refused() {
    let tls = certificates("ours");
    let redis = RedisServer::start_tls(&tls, &[]);

    let store = RedisStore::connect_tls(&redis.url(), trusting(&tls))
        .await
        .unwrap();
    store
        .ready()
        .await
        .expect("our CA signed the server's certificate");
    let token = OwnerToken::new();
    assert_eq!(
        store.claim("k", &fp(1), token, LEASE).await.unwrap(),
        Claim::New
    );
    assert!(
        store
            .complete("k", &fp(1), token, &created("{}"), LEASE)
            .await
            .unwrap()
    );

    let other = certificates("other");
    let stranger = RedisStore::connect_tls(&redis.url(), trusting(&other))
        .await
        .unwrap();
    let err = stranger
        .ready()
        .await
        .expect_err("a certificate from another CA is refused");
    assert!(
        format!("{err:?}").to_lowercase().contains("certificate"),
        "{err:?}"
    );
    let err = stranger
        .claim("k", &fp(1), OwnerToken::new(), LEASE)
        .await
        .expect_err("no claim over an untrusted connection");
    assert!(
        format!("{err:?}").to_lowercase().contains("certificate"),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_waits_for_the_keys_replica_only() {
    let tls = certificates("cluster");
    let files = tls.clone();
    let cluster = tokio::task::spawn_blocking(move || {
        let mut c = RedisCluster::start(3, Some(&files));
        c.add_replica(0);
        c
    })
    .await
    .unwrap();
    let urls = cluster.urls();
    assert!(urls.iter().all(|u| u.starts_with("rediss://")));
    let refs: Vec<&str> = urls.iter().map(String::as_str).collect();
    let store = RedisStore::connect_cluster_tls(&refs, trusting(&tls))
        .await
        .unwrap()
        .wait_for_replicas(1, Duration::from_millis(500))
        .unwrap();
    store.ready().await.unwrap();

    let key = cluster.key_where("idempotency:t", |owner| owner == 0);
    let key = key.strip_prefix("idempotency:").unwrap();
    let token = OwnerToken::new();
    assert_eq!(
        store.claim(key, &fp(1), token, LEASE).await.unwrap(),
        Claim::New
    );
    assert!(
        store
            .complete(key, &fp(1), token, &created("{}"), LEASE)
            .await
            .unwrap()
    );
    let replica = cluster.nodes.last().unwrap();
    assert_eq!(replica.cli(&["DBSIZE"]).as_deref(), Some("1"));

    let lonely = cluster.key_where("idempotency:l", |owner| owner == 2);
    let lonely = lonely.strip_prefix("idempotency:").unwrap();
    store
        .claim(lonely, &fp(1), OwnerToken::new(), LEASE)
        .await
        .expect_err("the key's primary has no replica");
}
