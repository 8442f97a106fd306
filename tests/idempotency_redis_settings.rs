//! The Redis store's own settings are bounded when the store is built: durations of zero or
//! above one year are refused with an error naming the setting, and the longest accepted
//! expiry still keeps an unreadable record from running.

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use common::{
    flaky::{counting_server, status},
    http::{Answer, client, serve},
    redis_server::RedisServer,
};
use tower_rampart::{
    MAX_DURATION,
    idempotency::{IdempotencyLayer, OnStoreError, RedisStore, problem_types},
};

#[tokio::test]
async fn durations_out_of_range_are_refused_when_built() {
    let redis = RedisServer::start();
    let store = RedisStore::connect(&redis.url()).await.unwrap();
    let too_long = MAX_DURATION + Duration::from_nanos(1);

    let err = store.clone().unreadable_ttl(too_long).unwrap_err();
    assert_eq!(err.setting(), Some("unreadable_ttl"), "{err}");
    assert!(err.to_string().contains("at most one year"), "{err}");
    let err = store.clone().unreadable_ttl(Duration::ZERO).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid Redis store configuration: unreadable_ttl must be more than zero"
    );

    let err = store.clone().wait_for_replicas(1, too_long).unwrap_err();
    assert_eq!(err.setting(), Some("wait_for_replicas timeout"), "{err}");
    assert!(err.to_string().contains("at most one year"), "{err}");
    // WAIT with a zero timeout blocks forever: refused rather than sent.
    let err = store
        .clone()
        .wait_for_replicas(1, Duration::ZERO)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid Redis store configuration: wait_for_replicas timeout must be more than zero"
    );

    assert!(store.clone().unreadable_ttl(MAX_DURATION).is_ok());
    assert!(store.wait_for_replicas(0, MAX_DURATION).is_ok());
}

#[tokio::test]
async fn the_longest_unreadable_ttl_still_never_runs_the_key() {
    let redis = RedisServer::start();
    // A foreign value without an expiry where the layer's key `k` lives.
    let key = "idempotency:0::k";
    assert_eq!(redis.cli(&["SET", key, "foreign"]).as_deref(), Some("OK"));
    let store = RedisStore::connect(&redis.url())
        .await
        .unwrap()
        .unreadable_ttl(MAX_DURATION)
        .unwrap();
    let layer = IdempotencyLayer::builder()
        .store(store)
        .global_keys()
        // Even failing open: an unreadable record is never a store outage.
        .on_store_error(OnStoreError::FailOpen)
        .build()
        .unwrap();
    // Counts the handler's runs ("/", any method).
    let (router, runs) = counting_server(|_| status(StatusCode::CREATED));
    let url = format!("{}/", serve(router.layer(layer)).await);
    let res = client()
        .post(&url)
        .header("idempotency-key", "k")
        .body("{}")
        .send()
        .await
        .unwrap();
    let (status, headers) = (res.status(), res.headers().clone());
    let a = Answer::new(status, &headers, res.text().await.unwrap());
    assert!(a.is_problem(problem_types::UNREADABLE_RECORD), "{a:?}");
    assert_eq!(runs.count(), 0, "an unreadable record never runs");
    let pttl: u64 = redis.cli(&["PTTL", key]).unwrap().parse().unwrap();
    assert!(
        pttl > MAX_DURATION.as_millis() as u64 - 60_000,
        "expires in a year: {pttl} ms"
    );
}
