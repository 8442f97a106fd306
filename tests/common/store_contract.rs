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
        trailers: None,
    })
}

async fn owned(store: &impl Store, key: &str, f: Fingerprint, lease: Duration) -> OwnerToken {
    let t = OwnerToken::new();
    match store.claim(key, &f, t, lease).await.unwrap() {
        Claim::New => t,
        other => panic!("{key}: expected a new claim, got {other:?}"),
    }
}

/// A claim with a throwaway token (the answer is what matters).
async fn probe(store: &impl Store, key: &str, f: Fingerprint, lease: Duration) -> Claim {
    store
        .claim(key, &f, OwnerToken::new(), lease)
        .await
        .unwrap()
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
    match probe(&store, "a", fp(1), lease).await {
        Claim::InFlight { lease_left } => {
            assert!(
                lease_left <= lease * 3 / 4 && lease_left > lease / 4,
                "{lease_left:?}"
            )
        }
        other => panic!("expected in flight, got {other:?}"),
    }
    assert_eq!(probe(&store, "a", fp(2), lease).await, Claim::Mismatch);

    // Completed: replayed for the same request, mismatch for another; the owner only completes.
    assert!(
        !store
            .complete("a", &fp(1), OwnerToken::new(), &created("x"), ttl)
            .await
            .unwrap()
    );
    assert!(
        store
            .complete("a", &fp(1), t, &created("{\"id\":1}"), ttl)
            .await
            .unwrap()
    );
    assert_eq!(
        probe(&store, "a", fp(1), lease).await,
        Claim::Completed(created("{\"id\":1}"))
    );
    assert_eq!(probe(&store, "a", fp(2), lease).await, Claim::Mismatch);
    assert!(
        store
            .complete("a", &fp(1), t, &created("again"), ttl)
            .await
            .unwrap(),
        "a repeat by the owner (its first answer lost) is acknowledged"
    );
    assert_eq!(
        probe(&store, "a", fp(1), lease).await,
        Claim::Completed(created("{\"id\":1}")),
        "and keeps the first"
    );
    assert!(
        !store
            .complete("a", &fp(1), OwnerToken::new(), &created("x"), ttl)
            .await
            .unwrap(),
        "a stranger cannot complete a done key"
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
            .complete("c", &fp(1), crashed, &created("stale"), ttl)
            .await
            .unwrap()
    );
    assert!(
        store
            .complete("c", &fp(1), next, &created("fresh"), ttl)
            .await
            .unwrap()
    );

    // A lapsed lease that nobody claimed since is still the owner's: renew and complete work.
    let paused = owned(&store, "f", fp(1), lease).await;
    wait(lease + lease / 10).await;
    assert!(
        store
            .complete("f", &fp(1), paused, &created("late"), ttl)
            .await
            .unwrap(),
        "no other owner since"
    );
    assert_eq!(
        probe(&store, "f", fp(1), lease).await,
        Claim::Completed(created("late"))
    );

    // A key that vanished (released by a stranger's fault, evicted) takes the completion.
    let gone = owned(&store, "g", fp(1), lease).await;
    assert!(store.release("g", gone).await.unwrap());
    assert!(
        store
            .complete("g", &fp(1), gone, &created("kept"), ttl)
            .await
            .unwrap()
    );
    assert_eq!(
        probe(&store, "g", fp(1), lease).await,
        Claim::Completed(created("kept"))
    );

    // Renewals keep a slow handler's key past several leases.
    let slow = owned(&store, "d", fp(1), lease).await;
    for _ in 0..4 {
        wait(lease / 2).await;
        assert!(store.renew("d", slow, lease).await.unwrap());
        assert!(matches!(
            probe(&store, "d", fp(1), lease).await,
            Claim::InFlight { .. }
        ));
    }
    assert!(!store.renew("d", OwnerToken::new(), lease).await.unwrap());
    assert!(
        store
            .complete("d", &fp(1), slow, &created("slow"), ttl)
            .await
            .unwrap()
    );

    // Not replayable outcomes are kept too: a retry learns it, never runs again.
    let t = owned(&store, "e", fp(1), lease).await;
    let big = Completion::NotReplayable {
        status: StatusCode::OK,
    };
    assert!(store.complete("e", &fp(1), t, &big, ttl).await.unwrap());
    assert_eq!(
        probe(&store, "e", fp(1), lease).await,
        Claim::Completed(big)
    );

    // A completed key expires after its TTL.
    wait(ttl + lease).await;
    let _ = owned(&store, "a", fp(2), lease).await;

    store.ready().await.unwrap();
}
