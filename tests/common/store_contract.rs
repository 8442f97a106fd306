//! The store contract, written against `impl Store` so that every store runs the same checks.
//! `wait` moves time forward: tokio's paused clock for the memory store, real time for Redis
//! (whose expirations run on the server's clock).

use std::{future::Future, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use tower_rampart::idempotency::{
    Claim, Completion, Fingerprint, OwnerToken, Store, StoredResponse,
};

pub fn fp(n: u8) -> Fingerprint {
    Fingerprint::from_bytes([n; 32])
}

pub fn created(body: &'static str) -> Completion {
    Completion::Response(StoredResponse {
        status: StatusCode::CREATED,
        headers: HeaderMap::new(),
        body: Bytes::from_static(body.as_bytes()),
    })
}

async fn owned(store: &impl Store, key: &str, f: Fingerprint, lease: Duration) -> OwnerToken {
    match store.claim(key, &f, lease).await.unwrap() {
        Claim::New(t) => t,
        other => panic!("{key}: expected a new claim, got {other:?}"),
    }
}

/// Runs every rule. `lease` and `ttl` are the durations to use; `wait` advances time.
pub async fn contract<W, F>(store: impl Store, lease: Duration, ttl: Duration, wait: W)
where
    W: Fn(Duration) -> F,
    F: Future<Output = ()>,
{
    // New, then in flight for the same request, mismatch for another.
    let t = owned(&store, "a", fp(1), lease).await;
    wait(lease / 4).await;
    match store.claim("a", &fp(1), lease).await.unwrap() {
        Claim::InFlight { retry_after } => {
            assert!(
                retry_after <= lease * 3 / 4 && retry_after > lease / 4,
                "{retry_after:?}"
            )
        }
        other => panic!("expected in flight, got {other:?}"),
    }
    assert_eq!(
        store.claim("a", &fp(2), lease).await.unwrap(),
        Claim::Mismatch
    );

    // Completed: replayed for the same request, mismatch for another; the owner only completes.
    assert!(
        !store
            .complete("a", OwnerToken::new(), &created("x"), ttl)
            .await
            .unwrap()
    );
    assert!(
        store
            .complete("a", t, &created("{\"id\":1}"), ttl)
            .await
            .unwrap()
    );
    assert_eq!(
        store.claim("a", &fp(1), lease).await.unwrap(),
        Claim::Completed(created("{\"id\":1}"))
    );
    assert_eq!(
        store.claim("a", &fp(2), lease).await.unwrap(),
        Claim::Mismatch
    );
    assert!(
        !store
            .complete("a", t, &created("again"), ttl)
            .await
            .unwrap(),
        "done once"
    );
    assert!(
        !store.release("a", t).await.unwrap(),
        "a completed key is not released"
    );

    // Release frees the key; a stranger cannot release it.
    let t = owned(&store, "b", fp(1), lease).await;
    assert!(!store.release("b", OwnerToken::new()).await.unwrap());
    assert!(store.release("b", t).await.unwrap());
    let _ = owned(&store, "b", fp(2), lease).await;

    // An abandoned claim frees the key after its lease; the old owner can no longer complete.
    let crashed = owned(&store, "c", fp(1), lease).await;
    wait(lease + lease / 10).await;
    let next = owned(&store, "c", fp(1), lease).await;
    assert!(
        !store
            .complete("c", crashed, &created("stale"), ttl)
            .await
            .unwrap()
    );
    assert!(
        store
            .complete("c", next, &created("fresh"), ttl)
            .await
            .unwrap()
    );

    // Renewals keep a slow handler's key past several leases.
    let slow = owned(&store, "d", fp(1), lease).await;
    for _ in 0..4 {
        wait(lease / 2).await;
        assert!(store.renew("d", slow, lease).await.unwrap());
        assert!(matches!(
            store.claim("d", &fp(1), lease).await.unwrap(),
            Claim::InFlight { .. }
        ));
    }
    assert!(!store.renew("d", OwnerToken::new(), lease).await.unwrap());
    assert!(
        store
            .complete("d", slow, &created("slow"), ttl)
            .await
            .unwrap()
    );

    // Not replayable outcomes are kept too: a retry learns it, never runs again.
    let t = owned(&store, "e", fp(1), lease).await;
    let big = Completion::NotReplayable {
        status: StatusCode::OK,
    };
    assert!(store.complete("e", t, &big, ttl).await.unwrap());
    assert_eq!(
        store.claim("e", &fp(1), lease).await.unwrap(),
        Claim::Completed(big)
    );

    // A completed key expires after its TTL.
    wait(ttl + lease).await;
    let _ = owned(&store, "a", fp(2), lease).await;

    store.ready().await.unwrap();
}
