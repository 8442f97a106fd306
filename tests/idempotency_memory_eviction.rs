//! The memory store under a steady flow of new keys (issue #14, item 6): completed records past
//! the retention floor make room for new keys, oldest first and counted; in-flight records and
//! completed records younger than the floor are never dropped, and a store that cannot keep the
//! floor refuses with a `Retry-After` that says when room frees up. Tokio's paused clock drives
//! every lease, TTL and floor.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tower_rampart::idempotency::{
    Claim, Completion, MemoryStore, OwnerToken, Store, StoreError, StoreErrorKind, StoredResponse,
    TYPICAL_RECORD_BYTES,
};

mod common;

use common::store_contract::{created, fp};

const LEASE: Duration = Duration::from_secs(10);
const TTL: Duration = Duration::from_secs(24 * 3600);
const HOUR: Duration = Duration::from_secs(3600);
const SECOND: Duration = Duration::from_secs(1);

async fn claim(store: &MemoryStore, key: &str) -> Result<Claim, StoreError> {
    store.claim(key, &fp(1), OwnerToken::new(), LEASE).await
}

/// Claims `key` as a new key and completes it with a small response.
async fn done(store: &MemoryStore, key: &str) -> Result<(), StoreError> {
    let t = OwnerToken::new();
    match store.claim(key, &fp(1), t, LEASE).await? {
        Claim::New => {}
        other => panic!("{key}: {other:?}"),
    }
    assert!(
        store
            .complete(key, &fp(1), t, &created(""), TTL)
            .await
            .unwrap()
    );
    Ok(())
}

/// Completes `prefix0`, `prefix1`, ... until the store refuses one, `step` apart; the keys
/// stored, oldest first.
async fn fill_done(store: &MemoryStore, prefix: &str, step: Duration) -> Vec<String> {
    let mut keys = Vec::new();
    loop {
        // A store that never fills up forgets what it must keep.
        assert!(keys.len() < 10_000, "the store never filled up");
        let key = format!("{prefix}{}", keys.len());
        match done(store, &key).await {
            Ok(()) => keys.push(key),
            Err(e) if e.kind() == StoreErrorKind::Full => return keys,
            Err(e) => panic!("{key}: {e}"),
        }
        tokio::time::advance(step).await;
    }
}

async fn assert_replays(store: &MemoryStore, keys: &[String]) {
    for key in keys {
        assert_eq!(
            claim(store, key).await.unwrap(),
            Claim::Completed(created("")),
            "{key} must still replay"
        );
    }
}

fn full(answer: Result<Claim, StoreError>) -> StoreError {
    match answer {
        Err(e) if e.kind() == StoreErrorKind::Full => e,
        other => panic!("expected Full, got {other:?}"),
    }
}

/// Before the fix: completed records were kept for their whole TTL (24 h) and never dropped to
/// make room, so once the bound was reached every new key was refused for up to a day.
#[tokio::test(start_paused = true)]
async fn completed_records_past_the_floor_make_room_for_new_keys() {
    let store = MemoryStore::with_max_bytes(16 * 1024);
    let old = fill_done(&store, "old-", Duration::ZERO).await;
    assert!(old.len() > 20, "{} records fit", old.len());

    // An hour later (the default floor) the old records are still within their TTL, but new
    // keys get their room.
    tokio::time::advance(HOUR + SECOND).await;
    let mut new = Vec::new();
    for i in 0..old.len() {
        let key = format!("new-{i}");
        done(&store, &key).await.unwrap();
        new.push(key);
    }
    assert_replays(&store, &new).await;
    assert_eq!(
        store.evicted(),
        old.len() as u64,
        "every old record made room"
    );
    assert!(store.bytes() <= 16 * 1024, "{} bytes", store.bytes());
}

/// Records are dropped strictly oldest first across the whole store (whatever shard they
/// hash to), and the eviction counter counts each one.
#[tokio::test(start_paused = true)]
async fn the_oldest_completed_records_go_first_and_are_counted() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    let store = MemoryStore::with_max_bytes(16 * 1024);
    // One completion a second, so every record has its own age.
    let old = fill_done(&store, "old-", SECOND).await;
    tokio::time::advance(HOUR).await;

    let mut new = 0;
    for round in 0..old.len() / 2 {
        assert_eq!(
            claim(&store, &format!("new-{round}")).await.unwrap(),
            Claim::New
        );
        new += 1;
        // Whatever was dropped, the survivors are exactly the youngest old records.
        let evicted = old.len() + new - store.len();
        assert_replays(&store, &old[evicted..]).await;
    }
    let evicted = old.len() + new - store.len();
    assert!(
        evicted > 0 && evicted < old.len(),
        "{evicted} of {} evicted",
        old.len()
    );
    assert_eq!(store.evicted(), evicted as u64);

    // A response that needs the room of many records takes it oldest first too.
    let t = OwnerToken::new();
    assert_eq!(
        store.claim("big", &fp(1), t, LEASE).await.unwrap(),
        Claim::New
    );
    let big = Completion::Response(StoredResponse {
        status: StatusCode::CREATED,
        headers: HeaderMap::new(),
        body: Bytes::from(vec![b'x'; 2048]),
        trailers: None,
    });
    assert!(store.complete("big", &fp(1), t, &big, TTL).await.unwrap());
    assert_eq!(claim(&store, "big").await.unwrap(), Claim::Completed(big));
    new += 1;
    let evicted = old.len() + new - store.len();
    assert!(
        store.evicted() as usize == evicted && evicted < old.len(),
        "{evicted}"
    );
    assert_replays(&store, &old[evicted..]).await;

    let counted = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .find(|(key, ..)| key.key().name() == "rampart_idempotency_store_evicted_total")
        .map(|(.., value)| value);
    assert_eq!(counted, Some(DebugValue::Counter(evicted as u64)));
}

/// In-flight records and completed records younger than the floor are never dropped: once
/// only they are left, new keys are refused (503), with a `Retry-After` naming when room
/// really frees up.
#[tokio::test(start_paused = true)]
async fn in_flight_and_young_records_are_never_dropped() {
    let store = MemoryStore::with_max_bytes(16 * 1024);
    let running = OwnerToken::new();
    assert_eq!(
        store
            .claim("running", &fp(1), running, LEASE)
            .await
            .unwrap(),
        Claim::New
    );
    let old = fill_done(&store, "old-", Duration::ZERO).await;

    // Past the floor, young records take the old ones' room, until only young ones are left.
    tokio::time::advance(HOUR + SECOND).await;
    assert!(store.renew("running", running, LEASE).await.unwrap());
    let young = fill_done(&store, "young-", Duration::ZERO).await;
    assert!(
        young.len() >= old.len() - 1,
        "{} young, {} old",
        young.len(),
        old.len()
    );
    assert_eq!(store.len(), young.len() + 1, "every old record made room");

    assert_replays(&store, &young).await;
    assert!(matches!(
        claim(&store, "running").await.unwrap(),
        Claim::InFlight { .. }
    ));
    assert!(store.bytes() <= 16 * 1024, "{} bytes", store.bytes());

    // Refused now, and the soonest room is the running key's lease end.
    let e = full(claim(&store, "refused").await);
    assert_eq!(e.retry_after(), Some(LEASE), "{e}");

    // Once it completes, the soonest room is when the oldest young record passes the floor:
    // not a moment before, and from then on.
    assert!(
        store
            .complete("running", &fp(1), running, &created(""), TTL)
            .await
            .unwrap()
    );
    tokio::time::advance(SECOND).await;
    let e = full(claim(&store, "refused").await);
    assert_eq!(e.retry_after(), Some(HOUR - SECOND), "{e}");
    tokio::time::advance(HOUR - SECOND - Duration::from_millis(1)).await;
    full(claim(&store, "refused").await);
    assert_replays(&store, &young).await;
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(claim(&store, "admitted").await.unwrap(), Claim::New);
    // Young records past the floor went (one, or a few more at once to leave some room);
    // nothing else did.
    let gone = store.evicted() as usize - old.len();
    assert!(
        gone >= 1 && gone < young.len(),
        "{gone} young records evicted"
    );
    assert_eq!(store.len(), young.len() + 1 - gone + 1);
}

/// The floor is a setting, bounded when the store is built; records are dropped exactly when
/// they pass it, whatever its length.
#[tokio::test(start_paused = true)]
async fn the_retention_floor_is_a_bounded_setting() {
    let err = MemoryStore::builder()
        .retention_floor(Duration::MAX)
        .build()
        .unwrap_err();
    assert_eq!(err.setting(), Some("retention_floor"), "{err}");
    assert!(
        err.to_string().starts_with(
            "invalid idempotency memory store configuration: retention_floor must be at most one year"
        ),
        "{err}"
    );
    let err = MemoryStore::builder()
        .retention_floor(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(err.setting(), Some("retention_floor"), "{err}");
    let err = MemoryStore::builder().max_bytes(10).build().unwrap_err();
    assert_eq!(err.setting(), Some("max_bytes"), "{err}");

    let ten_minutes = Duration::from_secs(600);
    let store = MemoryStore::builder()
        .max_bytes(16 * 1024)
        .retention_floor(ten_minutes)
        .build()
        .unwrap();
    assert_eq!(store.retention_floor(), ten_minutes);
    let old = fill_done(&store, "old-", SECOND).await;
    // The last one was completed a second ago.
    let e = full(claim(&store, "new").await);
    let first_passes = ten_minutes - SECOND * old.len() as u32;
    assert_eq!(e.retry_after(), Some(first_passes), "{e}");
    tokio::time::advance(first_passes - Duration::from_millis(1)).await;
    full(claim(&store, "new").await);
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(claim(&store, "new").await.unwrap(), Claim::New);
    assert_eq!(store.evicted(), 1);
    assert_replays(&store, &old[1..]).await;
}

/// The rate of new keys the bound sustains for the floor, as the start-up log tells it.
#[test]
fn the_sustainable_rate_follows_the_bound_and_the_floor() {
    let store = MemoryStore::new();
    assert_eq!(store.retention_floor(), HOUR);
    assert_eq!(store.typical_capacity(), (64 << 20) / TYPICAL_RECORD_BYTES);
    let rate = store.sustainable_rate();
    assert_eq!(rate, store.typical_capacity() as f64 / 3600.0);
    let two_hours = MemoryStore::builder()
        .retention_floor(2 * HOUR)
        .build()
        .unwrap();
    assert_eq!(two_hours.sustainable_rate(), rate / 2.0);
}

/// A response that does not fit the room left takes the room of records past the floor
/// instead of being kept as "ran, not replayable".
#[tokio::test(start_paused = true)]
async fn a_response_takes_room_from_records_past_the_floor() {
    let store = MemoryStore::with_max_bytes(16 * 1024);
    let t = OwnerToken::new();
    assert_eq!(
        store.claim("big", &fp(1), t, LEASE).await.unwrap(),
        Claim::New
    );
    fill_done(&store, "old-", Duration::ZERO).await;
    tokio::time::advance(HOUR).await;
    assert!(store.renew("big", t, LEASE).await.unwrap());
    let big = Completion::Response(StoredResponse {
        status: StatusCode::CREATED,
        headers: HeaderMap::new(),
        body: Bytes::from(vec![b'x'; 4096]),
        trailers: None,
    });
    assert!(store.complete("big", &fp(1), t, &big, TTL).await.unwrap());
    assert_eq!(claim(&store, "big").await.unwrap(), Claim::Completed(big));
    assert!(store.evicted() > 0);
    assert!(store.bytes() <= 16 * 1024, "{} bytes", store.bytes());
}

/// Many threads claiming and completing new keys in a store that evicts all the time (a floor
/// of one nanosecond): no deadlock between shards, an in-flight key is never taken from its
/// owner, a completion always lands, and the bound holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eviction_under_concurrency_keeps_in_flight_keys_and_the_bound() {
    let store = MemoryStore::builder()
        .max_bytes(16 * 1024)
        .retention_floor(Duration::from_nanos(1))
        .build()
        .unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|task| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut stored = 0;
                for i in 0..2_000 {
                    let key = format!("t{task}-{i}");
                    let t = OwnerToken::new();
                    match store.claim(&key, &fp(1), t, LEASE).await {
                        Ok(Claim::New) => {}
                        Err(e) if e.kind() == StoreErrorKind::Full => continue,
                        other => panic!("{key}: {other:?}"),
                    }
                    assert!(
                        matches!(claim(&store, &key).await, Ok(Claim::InFlight { .. })),
                        "{key}: an in-flight key was dropped"
                    );
                    assert!(
                        store
                            .complete(&key, &fp(1), t, &created("{}"), TTL)
                            .await
                            .unwrap(),
                        "{key}: the completion was refused"
                    );
                    stored += 1;
                    tokio::task::yield_now().await;
                }
                stored
            })
        })
        .collect();
    let mut stored = 0;
    for t in tasks {
        stored += t.await.unwrap();
    }
    assert!(stored > 10_000, "{stored} keys stored");
    assert!(store.evicted() > 0);
    assert!(store.bytes() <= 16 * 1024, "{} bytes", store.bytes());
}

/// A response larger than the whole bound can never fit: it drops no record for nothing, and
/// is kept as "ran, not replayable".
#[tokio::test(start_paused = true)]
async fn a_response_larger_than_the_bound_drops_nothing() {
    let store = MemoryStore::with_max_bytes(16 * 1024);
    let t = OwnerToken::new();
    assert_eq!(
        store.claim("huge", &fp(1), t, LEASE).await.unwrap(),
        Claim::New
    );
    let old = fill_done(&store, "old-", Duration::ZERO).await;
    tokio::time::advance(HOUR).await;
    let huge = Completion::Response(StoredResponse {
        status: StatusCode::CREATED,
        headers: HeaderMap::new(),
        body: Bytes::from(vec![b'x'; 32 * 1024]),
        trailers: None,
    });
    assert!(store.complete("huge", &fp(1), t, &huge, TTL).await.unwrap());
    assert_eq!(
        claim(&store, "huge").await.unwrap(),
        Claim::Completed(Completion::NotReplayable {
            status: StatusCode::CREATED
        })
    );
    assert_eq!(store.evicted(), 0);
    assert_replays(&store, &old).await;
}
