//! The memory store keeps the store contract (on tokio's paused clock), under concurrency and
//! within its bound.

use std::{sync::Arc, time::Duration};

use tower_rampart::idempotency::{Claim, MemoryStore, Store};

mod common;

use common::store_contract::{contract, fp};

const LEASE: Duration = Duration::from_secs(10);
const TTL: Duration = Duration::from_secs(24 * 3600);

#[tokio::test(start_paused = true)]
async fn memory_store_keeps_the_contract() {
    contract(MemoryStore::new(10_000), LEASE, TTL, tokio::time::advance).await;
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
