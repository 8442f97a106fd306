//! The embedded store: bounded in bytes, expiring, atomic per key. In-flight records and
//! completed records younger than the retention floor are never dropped; older completed
//! records make room for new keys, oldest first.

mod builder;
mod evict;
mod ops;

use std::{
    collections::{HashMap, VecDeque},
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

/// What one record costs besides its key and stored response: the map slot, the record, the
/// `Arc` around a completion, the shared key's counts, and (once completed) its place in the
/// completion order (measured from the types, rounded up). A claim reserves all of it, so a
/// completion never needs more room than its response.
const RECORD_OVERHEAD: usize = 208;

/// A power of two: [`shard_of`] takes its top bits.
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
/// tells it (about 46 new keys per second for 64 MiB and one hour), and the store logs it at
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
    /// Seeds [`shard_of`]: which shard a key lands in differs from one store to the next.
    seed: u64,
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
    map: HashMap<Arc<str>, Record>,
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
        /// The map's own key: its completion takes it from here, in one lookup, not two.
        key: Arc<str>,
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
                seed: RandomState::new().hash_one(SHARDS),
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

    fn shard_index(&self, key: &str) -> usize {
        shard_of(self.inner.seed, key.as_bytes())
    }

    fn shard(&self, key: &str) -> MutexGuard<'_, Shard> {
        lock(&self.inner.shards[self.shard_index(key)])
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

    fn if_owner(&self, key: &str, token: OwnerToken, f: impl FnOnce(&mut Shard)) -> bool {
        let mut shard = self.shard(key);
        if shard.map.get(key).is_some_and(|r| r.owned_by(token)) {
            f(&mut shard);
            true
        } else {
            false
        }
    }
}

/// Which of the [`SHARDS`] holds `key`: a seeded multiply-mix of its bytes, a tenth of SipHash's
/// cost (a new key looks its shard up twice). It need not resist chosen keys: a shard only
/// spreads the locks, and each shard's map hashes with SipHash under a random key, so keys
/// aimed at one shard make that shard bigger, never slower per key.
fn shard_of(seed: u64, key: &[u8]) -> usize {
    const MUL: u64 = 0x9e37_79b9_7f4a_7c15;
    let mix = |h: u64, word: u64| (h ^ word).wrapping_mul(MUL).rotate_left(29);
    let mut h = seed ^ key.len() as u64;
    let mut words = key.chunks_exact(8);
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        h = mix(h, u64::from_le_bytes(b));
    }
    let mut b = [0u8; 8];
    b[..words.remainder().len()].copy_from_slice(words.remainder());
    h = mix(h, u64::from_le_bytes(b));
    // The top bits of a product depend on every bit of its input.
    (h.wrapping_mul(MUL) >> (64 - SHARDS.trailing_zeros())) as usize
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
        ready(Ok(self.if_owner(key, token, |shard| {
            if let Some(r) = shard.map.remove(key) {
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
        ready(Ok(self.if_owner(key, token, |shard| {
            if let Some(State::InFlight { until: u, .. }) =
                shard.map.get_mut(key).map(|r| &mut r.state)
            {
                *u = until;
            }
        })))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_spread_over_every_shard() {
        // Keys that differ in their last bytes only, as clients number them.
        for seed in [0, 1, u64::MAX, 0x1234_5678_9abc_def0] {
            let mut counts = [0usize; super::SHARDS];
            for i in 0..16_000 {
                counts[super::shard_of(seed, format!("0::key-{i}").as_bytes())] += 1;
            }
            // 1,000 a shard on average: a fair spread stays well within 800..1200.
            assert!(
                counts.iter().all(|&c| (800..1200).contains(&c)),
                "seed {seed}: {counts:?}"
            );
        }
        let a = super::shard_of(1, b"some key");
        assert!((0..100).any(|s| super::shard_of(s, b"some key") != a));
    }
}
