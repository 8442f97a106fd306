//! The store contract, on tokio's paused clock. Written against `impl Store` so that every
//! store (the Redis one next) runs the same checks.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use tower_rampart::idempotency::{
    Claim, Completion, Fingerprint, MemoryStore, OwnerToken, Store, StoredResponse,
};

const LEASE: Duration = Duration::from_secs(10);
const TTL: Duration = Duration::from_secs(24 * 3600);

fn fp(n: u8) -> Fingerprint {
    Fingerprint::from_bytes([n; 32])
}

fn created(body: &'static str) -> Completion {
    Completion::Response(StoredResponse {
        status: StatusCode::CREATED,
        headers: HeaderMap::new(),
        body: Bytes::from_static(body.as_bytes()),
    })
}

async fn owned(store: &impl Store, key: &str, f: Fingerprint) -> OwnerToken {
    match store.claim(key, &f, LEASE).await.unwrap() {
        Claim::New(t) => t,
        other => panic!("{key}: expected a new claim, got {other:?}"),
    }
}

async fn contract(store: impl Store) {
    // New, then in flight for the same request, mismatch for another.
    let t = owned(&store, "a", fp(1)).await;
    tokio::time::advance(Duration::from_secs(3)).await;
    assert_eq!(
        store.claim("a", &fp(1), LEASE).await.unwrap(),
        Claim::InFlight {
            retry_after: Duration::from_secs(7)
        }
    );
    assert_eq!(
        store.claim("a", &fp(2), LEASE).await.unwrap(),
        Claim::Mismatch
    );

    // Completed: replayed for the same request, mismatch for another; the owner only completes.
    assert!(
        !store
            .complete("a", OwnerToken::new(), &created("x"), TTL)
            .await
            .unwrap()
    );
    assert!(
        store
            .complete("a", t, &created("{\"id\":1}"), TTL)
            .await
            .unwrap()
    );
    assert_eq!(
        store.claim("a", &fp(1), LEASE).await.unwrap(),
        Claim::Completed(created("{\"id\":1}"))
    );
    assert_eq!(
        store.claim("a", &fp(2), LEASE).await.unwrap(),
        Claim::Mismatch
    );
    assert!(
        !store
            .complete("a", t, &created("again"), TTL)
            .await
            .unwrap(),
        "done once"
    );
    assert!(
        !store.release("a", t).await.unwrap(),
        "a completed key is not released"
    );

    // Release frees the key; a stranger cannot release it.
    let t = owned(&store, "b", fp(1)).await;
    assert!(!store.release("b", OwnerToken::new()).await.unwrap());
    assert!(store.release("b", t).await.unwrap());
    let _ = owned(&store, "b", fp(2)).await;

    // An abandoned claim frees the key after its lease; the old owner can no longer complete.
    let crashed = owned(&store, "c", fp(1)).await;
    tokio::time::advance(LEASE).await;
    let next = owned(&store, "c", fp(1)).await;
    assert!(
        !store
            .complete("c", crashed, &created("stale"), TTL)
            .await
            .unwrap()
    );
    assert!(
        store
            .complete("c", next, &created("fresh"), TTL)
            .await
            .unwrap()
    );

    // Renewals keep a slow handler's key past many leases.
    let slow = owned(&store, "d", fp(1)).await;
    for _ in 0..5 {
        tokio::time::advance(LEASE / 3).await;
        assert!(store.renew("d", slow, LEASE).await.unwrap());
        assert!(matches!(
            store.claim("d", &fp(1), LEASE).await.unwrap(),
            Claim::InFlight { .. }
        ));
    }
    assert!(!store.renew("d", OwnerToken::new(), LEASE).await.unwrap());
    assert!(
        store
            .complete("d", slow, &created("slow"), TTL)
            .await
            .unwrap()
    );

    // A completed key expires after its TTL.
    tokio::time::advance(TTL).await;
    let _ = owned(&store, "a", fp(2)).await;

    // Not replayable outcomes are kept too: a retry learns it, never runs again.
    let t = owned(&store, "e", fp(1)).await;
    let big = Completion::NotReplayable {
        status: StatusCode::OK,
    };
    assert!(store.complete("e", t, &big, TTL).await.unwrap());
    assert_eq!(
        store.claim("e", &fp(1), LEASE).await.unwrap(),
        Claim::Completed(big)
    );
}

#[tokio::test(start_paused = true)]
async fn memory_store_keeps_the_contract() {
    contract(MemoryStore::new(10_000)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_claims_make_one_owner() {
    for _ in 0..20 {
        let store = Arc::new(MemoryStore::new(10_000));
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { store.claim("k", &fp(1), LEASE).await.unwrap() })
            })
            .collect();
        let mut new = 0;
        for t in tasks {
            match t.await.unwrap() {
                Claim::New(_) => new += 1,
                Claim::InFlight { .. } => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(new, 1);
    }
}

#[test]
fn the_memory_store_is_bounded() {
    let store = MemoryStore::new(100);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for i in 0..1000 {
            let _ = store.claim(&format!("k{i}"), &fp(1), LEASE).await.unwrap();
        }
    });
    assert!(store.len() <= 100, "{} keys", store.len());
}
