//! The embedded store: bounded in bytes, expiring, atomic per key. In-flight records and
//! completed records younger than the retention floor are never dropped; older completed
//! records make room for new keys, oldest first.

mod builder;
mod evict;
mod map;
mod ops;

use std::{
    collections::VecDeque,
    future::{Future, ready},
    hash::{BuildHasher, RandomState},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
    time::Duration,
};

use tokio::time::Instant;

pub use builder::{DEFAULT_RETENTION_FLOOR, MemoryStoreBuilder, TYPICAL_RECORD_BYTES};
use ops::after;

use super::{Claim, OwnerToken, Store, StoreError, StoreErrorKind};
use crate::idempotency::{Completion, Fingerprint};

/// The default bound of a [`MemoryStore`]: 64 MiB of keys and stored responses.
pub const DEFAULT_MAX_BYTES: usize = 64 << 20;

/// What one record costs besides its key and stored response, from the types: its slot in the
/// shard's table at the lowest load the table keeps after growing (7/16), its place in the
/// completion order (a deque that doubles), the completion behind its `Arc`, the shared key's
/// counts, and the allocator's header of those two allocations. A claim reserves all of it,
/// so a completion never needs more room than its response. `tests/idempotency_memory_bound.rs`
/// checks that a full store holds no more than its bound.
const RECORD_OVERHEAD: usize = map::SLOT_BYTES * 16 / 7
    + 2 * size_of::<evict::Completed>()
    + size_of::<Completion>()
    + 4 * size_of::<usize>()
    + 2 * ALLOCATION;

/// The allocator's own header of one allocation, with its rounding (glibc: 8 bytes, chunks
/// of 16).
const ALLOCATION: usize = 16;

/// What a stored header costs besides its name and value: its entry in the `HeaderMap` (name,
/// value, hash and links), its index, and the allocations of a custom name and of the value.
const HEADER_BYTES: usize = size_of::<http::HeaderName>()
    + size_of::<http::HeaderValue>()
    + 6 * size_of::<usize>()
    + 2 * ALLOCATION;

/// What a stored body costs besides its bytes: its allocation and a shared buffer's count.
const BODY_BYTES: usize = ALLOCATION + 4 * size_of::<usize>();

/// A power of two: [`shard_of`] masks bits of a key's hash.
const SHARDS: usize = 16;

/// An in-process store: the default. Bounded in bytes (keys, stored bodies and headers, and a
/// fixed cost per record), [`DEFAULT_MAX_BYTES`] unless set.
///
/// What it keeps, and for how long:
/// - an in-flight record, until its lease ends (renewals extend it): never dropped to make room;
/// - a completed record, for its TTL (the layer's, 24 h by default), and at least for the
///   **retention floor** ([`DEFAULT_RETENTION_FLOOR`], one hour, unless set): never dropped to
///   make room while younger than the floor. When the bound is reached, expired records are
///   swept first; then completed records older than the floor are dropped, oldest first, to
///   make room for a new key (counted by `rampart_idempotency_store_evicted_total` and
///   [`MemoryStore::evicted`]). A key whose record was dropped runs again if it comes back.
///
/// Only when in-flight and young records fill the bound is a new key refused with
/// [`StoreErrorKind::Full`] (the layer answers 503), with a [`StoreError::retry_after`] saying
/// when room frees up: when the oldest completed record passes the floor, or the soonest
/// lease or TTL ends (as of the last full scan, at most 100 ms old), from 1 s to 1 h.
/// Replays and conflicts of existing keys are still answered. A completion too large for
/// the room left is kept as [`Completion::NotReplayable`], so its key still never runs twice
/// within the floor.
///
/// Keeping the floor takes a bounded rate of new keys: [`MemoryStore::sustainable_rate`]
/// tells it (about 18 new keys per second for 64 MiB and one hour), and the store logs it at
/// `info` when built (feature `tracing`). Keeping every key for a full day at a higher rate is
/// what a shared store such as Redis is for.
///
/// Leases, TTLs and the floor follow tokio's clock, so `tokio::time::pause()` drives them in
/// tests. One process only: instances behind a load balancer need a shared store.
///
/// ```
/// use std::time::Duration;
/// use tower_rampart::idempotency::{Claim, Fingerprint, MemoryStore, OwnerToken, Store};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_rampart::idempotency::StoreError> {
/// let store = MemoryStore::with_max_bytes(1 << 20);
/// let (fp, lease) = (Fingerprint::from_bytes([7; 32]), Duration::from_secs(10));
/// let token = OwnerToken::new();
/// assert_eq!(store.claim("k1", &fp, token, lease).await?, Claim::New);
/// assert!(matches!(store.claim("k1", &fp, OwnerToken::new(), lease).await?, Claim::InFlight { .. }));
/// assert!(store.release("k1", token).await?);
/// assert_eq!(store.claim("k1", &fp, OwnerToken::new(), lease).await?, Claim::New);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    shards: Box<[Mutex<Shard>]>,
    /// Per shard, when its oldest completion happened (nanoseconds after `epoch`), or
    /// [`evict::EMPTY`]: read without locks to find the oldest record of the store.
    heads: Box<[AtomicU64]>,
    /// Keys' SipHash, under a key random per store: picks the shard and the slot.
    hasher: RandomState,
    bytes: AtomicUsize,
    max_bytes: usize,
    floor: Duration,
    epoch: Instant,
    full_scan: Mutex<evict::FullScan>,
    evicted: AtomicU64,
}

#[derive(Default)]
struct Shard {
    /// Keys are shared with `done`, so the completion order costs no copy of a key.
    map: map::Map,
    inserts_since_sweep: usize,
    /// Completed records in completion order (times never go back under the shard's lock).
    /// An entry whose record is gone (expired, or its key claimed anew) is skipped lazily: it
    /// is current only while the map holds the very same key allocation.
    done: VecDeque<evict::Completed>,
}

struct Record {
    fingerprint: Fingerprint,
    state: State,
    /// Bytes charged to the bound for this record.
    size: usize,
}

enum State {
    InFlight {
        token: OwnerToken,
        until: Instant,
    },
    Done {
        completion: Arc<Completion>,
        /// Who completed it: a repeated `complete` by the same owner (whose first answer was
        /// lost) is acknowledged, not refused.
        token: OwnerToken,
        until: Instant,
    },
}

impl Record {
    fn until(&self) -> Instant {
        match self.state {
            State::InFlight { until, .. } | State::Done { until, .. } => until,
        }
    }

    /// The answer this record gives a claim, or `None` when its time is over (the key is free).
    fn answer(&self, fingerprint: &Fingerprint, now: Instant) -> Option<Claim> {
        if self.until() <= now {
            return None;
        }
        if self.fingerprint != *fingerprint {
            return Some(Claim::Mismatch);
        }
        Some(match &self.state {
            State::InFlight { until, .. } => Claim::InFlight {
                lease_left: *until - now,
            },
            State::Done { completion, .. } => Claim::Completed((**completion).clone()),
        })
    }

    fn owned_by(&self, token: OwnerToken) -> bool {
        matches!(self.state, State::InFlight { token: t, .. } if t == token)
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("bytes", &self.bytes())
            .field("max_bytes", &self.inner.max_bytes)
            .field("retention_floor", &self.inner.floor)
            .finish()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl MemoryStore {
    /// A store bounded at [`DEFAULT_MAX_BYTES`], keeping completed records at least
    /// [`DEFAULT_RETENTION_FLOOR`].
    pub fn new() -> Self {
        MemoryStore::with_max_bytes(DEFAULT_MAX_BYTES)
    }

    /// A store holding at most `max_bytes` of keys, records and stored responses, keeping
    /// completed records at least [`DEFAULT_RETENTION_FLOOR`].
    pub fn with_max_bytes(max_bytes: usize) -> Self {
        MemoryStore::build(max_bytes, DEFAULT_RETENTION_FLOOR)
    }

    /// A builder, to set the retention floor (bounded, with a clear error).
    pub fn builder() -> MemoryStoreBuilder {
        MemoryStoreBuilder::default()
    }

    fn build(max_bytes: usize, floor: Duration) -> Self {
        let store = MemoryStore {
            inner: Arc::new(Inner {
                shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
                heads: (0..SHARDS).map(|_| AtomicU64::new(evict::EMPTY)).collect(),
                hasher: RandomState::new(),
                bytes: AtomicUsize::new(0),
                max_bytes,
                floor,
                epoch: Instant::now(),
                full_scan: Mutex::default(),
                evicted: AtomicU64::new(0),
            }),
        };
        store.log_capacity();
        store
    }

    /// Bytes held now (records whose time is over count until they are swept).
    pub fn bytes(&self) -> usize {
        self.inner.bytes.load(Relaxed)
    }

    /// The bound, in bytes.
    pub fn max_bytes(&self) -> usize {
        self.inner.max_bytes
    }

    /// How long a completed record is kept at least, even when room is needed.
    pub fn retention_floor(&self) -> Duration {
        self.inner.floor
    }

    /// Completed records dropped (past the retention floor) to make room, since the store was
    /// built.
    pub fn evicted(&self) -> u64 {
        self.inner.evicted.load(Relaxed)
    }

    /// Records held now, live or not yet swept.
    pub fn len(&self) -> usize {
        self.inner.shards.iter().map(|s| lock(s).map.len()).sum()
    }

    /// Whether the store holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key's hash, and the shard that holds it.
    fn locate(&self, key: &str) -> (u64, usize) {
        let hash = self.inner.hasher.hash_one(key);
        (hash, shard_of(hash))
    }

    /// Takes `n` bytes from the bound, or says the store is full.
    fn reserve(&self, n: usize) -> bool {
        self.inner
            .bytes
            .fetch_update(Relaxed, Relaxed, |b| {
                b.checked_add(n).filter(|t| *t <= self.inner.max_bytes)
            })
            .is_ok()
    }

    fn free(&self, n: usize) {
        self.inner.bytes.fetch_sub(n, Relaxed);
    }

    fn if_owner(&self, key: &str, token: OwnerToken, f: impl FnOnce(&mut Shard, u64)) -> bool {
        let (hash, i) = self.locate(key);
        let mut shard = lock(&self.inner.shards[i]);
        if shard.map.get(hash, key).is_some_and(|r| r.owned_by(token)) {
            f(&mut shard, hash);
            true
        } else {
            false
        }
    }
}

/// Which of the [`SHARDS`] holds the key of `hash`: bits the shard's table does not use (it
/// takes the low bits for the slot and the top 7 for its tags), so keys of one shard still
/// spread over its whole table.
fn shard_of(hash: u64) -> usize {
    ((hash >> 40) as usize) & (SHARDS - 1)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The maps are consistent after every statement that can panic, so a poisoned lock (a
    // panic elsewhere while holding it) is safe to use.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Store for MemoryStore {
    fn claim(
        &self,
        key: &str,
        fingerprint: &Fingerprint,
        token: OwnerToken,
        lease: Duration,
    ) -> impl Future<Output = Result<Claim, StoreError>> + Send {
        ready(self.claim_now(key, fingerprint, token, lease))
    }

    fn complete(
        &self,
        key: &str,
        fingerprint: &Fingerprint,
        token: OwnerToken,
        completion: &Completion,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let shared = Arc::new(completion.clone());
        ready(Ok(self.complete_now(key, fingerprint, token, &shared, ttl)))
    }

    fn complete_shared(
        &self,
        key: &str,
        fingerprint: &Fingerprint,
        token: OwnerToken,
        completion: &Arc<Completion>,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        ready(Ok(self.complete_now(
            key,
            fingerprint,
            token,
            completion,
            ttl,
        )))
    }

    fn release(
        &self,
        key: &str,
        token: OwnerToken,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        ready(Ok(self.if_owner(key, token, |shard, hash| {
            if let Some(r) = shard.map.remove(hash, key) {
                self.free(r.size);
            }
        })))
    }

    fn renew(
        &self,
        key: &str,
        token: OwnerToken,
        lease: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let until = after(Instant::now(), lease);
        ready(Ok(self.if_owner(key, token, |shard, hash| {
            if let Some(State::InFlight { until: u, .. }) =
                shard.map.get_mut(hash, key).map(|(_, r)| &mut r.state)
            {
                *u = until;
            }
        })))
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use super::{Claim, MemoryStore, OwnerToken, Store};
    use crate::idempotency::{Completion, Fingerprint, StoredResponse};

    /// `complete_shared` keeps the caller's `Arc`: no copy of the response.
    #[tokio::test]
    async fn a_shared_completion_is_kept_without_a_copy() {
        let store = MemoryStore::new();
        let (fp, token) = (Fingerprint::from_bytes([1; 32]), OwnerToken::new());
        let lease = Duration::from_secs(10);
        assert_eq!(
            store.claim("k", &fp, token, lease).await.unwrap(),
            Claim::New
        );
        let shared = Arc::new(Completion::Response(StoredResponse {
            status: http::StatusCode::CREATED,
            headers: http::HeaderMap::new(),
            body: bytes::Bytes::from_static(b"{}"),
            trailers: None,
        }));
        let ttl = Duration::from_secs(60);
        let stored = store.complete_shared("k", &fp, token, &shared, ttl).await;
        assert!(stored.unwrap());
        assert_eq!(
            Arc::strong_count(&shared),
            2,
            "the store holds the same Arc"
        );
        let replay = store.claim("k", &fp, OwnerToken::new(), lease).await;
        assert_eq!(replay.unwrap(), Claim::Completed((*shared).clone()));
    }

    #[test]
    fn keys_spread_over_every_shard() {
        use std::hash::BuildHasher;
        // Keys that differ in their last bytes only, as clients number them.
        for _ in 0..4 {
            let hasher = std::hash::RandomState::new();
            let mut counts = [0usize; super::SHARDS];
            for i in 0..16_000 {
                counts[super::shard_of(hasher.hash_one(format!("0::key-{i}").as_str()))] += 1;
            }
            // 1,000 a shard on average: a fair spread stays well within 800..1200.
            assert!(
                counts.iter().all(|&c| (800..1200).contains(&c)),
                "{counts:?}"
            );
        }
    }
}
