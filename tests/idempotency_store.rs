//! The memory store keeps the store contract (on tokio's paused clock), under concurrency, and
//! within its byte bound without ever forgetting a live record.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use tower_rampart::idempotency::{
    Claim, Completion, MemoryStore, OwnerToken, Store, StoreErrorKind, StoredResponse,
};

mod common;

use common::store_contract::{contract, created, fp};

const LEASE: Duration = Duration::from_secs(10);
const TTL: Duration = Duration::from_secs(24 * 3600);

#[tokio::test(start_paused = true)]
async fn memory_store_keeps_the_contract() {
    contract(MemoryStore::new(), LEASE, TTL, tokio::time::advance).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_claims_make_one_owner() {
    for _ in 0..20 {
        let store = Arc::new(MemoryStore::new());
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .claim("k", &fp(1), OwnerToken::new(), LEASE)
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut new = 0;
        for t in tasks {
            match t.await.unwrap() {
                Claim::New => new += 1,
                Claim::InFlight { .. } => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(new, 1);
    }
}

async fn claim(store: &MemoryStore, key: &str) -> Result<Claim, StoreErrorKind> {
    store
        .claim(key, &fp(1), OwnerToken::new(), LEASE)
        .await
        .map_err(|e| e.kind())
}

/// Claims `key` as a new key; the owner's token.
async fn claim_new(store: &MemoryStore, key: &str) -> OwnerToken {
    let owner = OwnerToken::new();
    assert_eq!(
        store.claim(key, &fp(1), owner, LEASE).await.unwrap(),
        Claim::New,
        "{key}"
    );
    owner
}

/// `running` is still in flight and `done` still answers its completion.
async fn live_keys_are_answered_right(store: &MemoryStore) {
    assert!(matches!(
        claim(store, "running").await,
        Ok(Claim::InFlight { .. })
    ));
    assert_eq!(
        claim(store, "done").await,
        Ok(Claim::Completed(created("{\"id\":1}")))
    );
}

/// The bug this replaces: an entry-bounded cache evicted live records, so after enough other
/// keys an in-flight or completed key was claimable again and its handler ran twice. (Every
/// record here is younger than the retention floor; dropping older completed records to make
/// room is tested in `idempotency_memory_eviction.rs`.)
#[tokio::test(start_paused = true)]
async fn a_full_store_refuses_new_keys_and_never_forgets_live_ones() {
    let store = MemoryStore::with_max_bytes(256 * 1024);
    let running = claim_new(&store, "running").await;
    let done = claim_new(&store, "done").await;
    assert!(
        store
            .complete("done", &fp(1), done, &created("{\"id\":1}"), TTL)
            .await
            .unwrap()
    );

    let (mut taken, mut refused) = (0, 0);
    for i in 0..10_000 {
        match claim(&store, &format!("other-{i}")).await {
            Ok(Claim::New) => taken += 1,
            Err(StoreErrorKind::Full) => refused += 1,
            other => panic!("{other:?}"),
        }
    }
    assert!(taken > 100, "{taken} keys fit");
    assert!(refused > 5_000, "{refused} refused");
    assert!(store.bytes() <= 256 * 1024, "{} bytes", store.bytes());

    // Existing keys are still answered, and answered right.
    live_keys_are_answered_right(&store).await;

    // Once the other claims' leases end, their room comes back; the completed key stays.
    assert!(store.renew("running", running, LEASE * 2).await.unwrap());
    tokio::time::advance(LEASE + Duration::from_secs(1)).await;
    assert_eq!(claim(&store, "after").await, Ok(Claim::New));
    live_keys_are_answered_right(&store).await;
}

/// A response too large for the room left is kept as "ran, not replayable": the key still
/// never runs twice, and the bound holds.
#[tokio::test(start_paused = true)]
async fn a_completion_that_does_not_fit_is_kept_as_not_replayable() {
    let store = MemoryStore::with_max_bytes(16 * 1024);
    let t = claim_new(&store, "big").await;
    let big = Completion::Response(StoredResponse {
        status: StatusCode::CREATED,
        headers: HeaderMap::new(),
        body: Bytes::from(vec![b'x'; 64 * 1024]),
        trailers: None,
    });
    assert!(store.complete("big", &fp(1), t, &big, TTL).await.unwrap());
    assert_eq!(
        claim(&store, "big").await,
        Ok(Claim::Completed(Completion::NotReplayable {
            status: StatusCode::CREATED
        }))
    );
    assert!(store.bytes() <= 16 * 1024);
}

/// Released and expired records give back every byte they took: after they are gone, the
/// store takes as many new keys as it did when empty.
#[tokio::test(start_paused = true)]
async fn bytes_are_given_back() {
    let store = MemoryStore::with_max_bytes(64 * 1024);
    let fill = |prefix: &'static str| {
        let store = store.clone();
        async move {
            let mut owners = Vec::new();
            loop {
                let key = format!("{prefix}{}", owners.len());
                let t = OwnerToken::new();
                match store.claim(&key, &fp(1), t, LEASE).await {
                    Ok(Claim::New) => owners.push((key, t)),
                    Err(e) if e.kind() == StoreErrorKind::Full => return owners,
                    other => panic!("{other:?}"),
                }
            }
        }
    };
    let first = fill("a").await;
    for (i, (key, t)) in first.iter().enumerate() {
        if i % 2 == 0 {
            assert!(store.release(key, *t).await.unwrap());
        } else {
            assert!(
                store
                    .complete(key, &fp(1), *t, &created("{}"), LEASE * 2)
                    .await
                    .unwrap()
            );
        }
    }
    tokio::time::advance(LEASE * 3).await;
    let second = fill("b").await;
    assert!(first.len() > 50, "{}", first.len());
    assert_eq!(second.len(), first.len(), "every byte came back");
}
