//! The embedded store: bounded in bytes, expiring, atomic per key, and never forgetting a live
//! record to make room.

use std::{
    collections::HashMap,
    future::{Future, ready},
    hash::{BuildHasher, RandomState},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicUsize, Ordering::Relaxed},
    },
    time::Duration,
};

use tokio::time::Instant;

use super::{Claim, OwnerToken, Store, StoreError, StoreErrorKind};
use crate::idempotency::{Completion, Fingerprint};

/// The default bound of a [`MemoryStore`]: 64 MiB of keys and stored responses.
pub const DEFAULT_MAX_BYTES: usize = 64 << 20;

/// What one record costs besides its key and stored response: the map slot, the record, the
/// `Arc` around a completion (measured from the types, rounded up).
const RECORD_OVERHEAD: usize = 160;

/// How often, at most, a full store scans every shard for expired records.
const FULL_SWEEP_EVERY: Duration = Duration::from_millis(100);

const SHARDS: usize = 16;

/// An in-process store: the default. Bounded in bytes (keys, stored bodies and headers, and a
/// fixed cost per record), [`DEFAULT_MAX_BYTES`] unless set.
///
/// A record is never dropped before its lease (in flight) or TTL (completed) ends. When the
/// bound is reached, expired records are swept; if that frees too little, a claim of a new
/// key fails with [`StoreErrorKind::Full`] (the layer answers 503 with `Retry-After`), while
/// replays and conflicts of existing keys are still answered. A completion too large for the
/// room left is kept as [`Completion::NotReplayable`], so its key still never runs twice.
///
/// Leases and TTLs follow tokio's clock, so `tokio::time::pause()` drives them in tests. One
/// process only: instances behind a load balancer need a shared store such as Redis.
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
    hasher: RandomState,
    bytes: AtomicUsize,
    max_bytes: usize,
    last_full_sweep: Mutex<Option<Instant>>,
}

#[derive(Default)]
struct Shard {
    map: HashMap<Box<str>, Record>,
    inserts_since_sweep: usize,
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
            .finish()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

fn completion_size(c: &Completion) -> usize {
    match c {
        Completion::NotReplayable { .. } => 0,
        Completion::Response(r) => {
            let headers = |h: &http::HeaderMap| {
                h.iter()
                    .map(|(n, v)| n.as_str().len() + v.len() + 32)
                    .sum::<usize>()
            };
            r.body.len() + headers(&r.headers) + r.trailers.as_ref().map_or(0, headers)
        }
    }
}

impl MemoryStore {
    /// A store bounded at [`DEFAULT_MAX_BYTES`].
    pub fn new() -> Self {
        MemoryStore::with_max_bytes(DEFAULT_MAX_BYTES)
    }

    /// A store holding at most `max_bytes` of keys, records and stored responses.
    pub fn with_max_bytes(max_bytes: usize) -> Self {
        MemoryStore {
            inner: Arc::new(Inner {
                shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
                hasher: RandomState::new(),
                bytes: AtomicUsize::new(0),
                max_bytes,
                last_full_sweep: Mutex::new(None),
            }),
        }
    }

    /// Bytes held now (records whose time is over count until they are swept).
    pub fn bytes(&self) -> usize {
        self.inner.bytes.load(Relaxed)
    }

    /// Records held now, live or not yet swept.
    pub fn len(&self) -> usize {
        self.inner.shards.iter().map(|s| lock(s).map.len()).sum()
    }

    /// Whether the store holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard(&self, key: &str) -> MutexGuard<'_, Shard> {
        let i = self.inner.hasher.hash_one(key) as usize % SHARDS;
        lock(&self.inner.shards[i])
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

    /// Drops the records of `shard` whose time is over.
    fn sweep(&self, shard: &mut Shard, now: Instant) {
        let mut freed = 0;
        shard.map.retain(|_, r| {
            let keep = r.until() > now;
            if !keep {
                freed += r.size;
            }
            keep
        });
        shard.inserts_since_sweep = 0;
        self.free(freed);
    }

    /// Sweeps every shard, at most once per [`FULL_SWEEP_EVERY`], so a store full of live
    /// records does not rescan itself on every refused claim.
    fn sweep_all(&self, now: Instant, holding: &mut Shard) {
        {
            let mut last = lock(&self.inner.last_full_sweep);
            if last.is_some_and(|t| now < t + FULL_SWEEP_EVERY) {
                return;
            }
            *last = Some(now);
        }
        self.sweep(holding, now);
        for s in self.inner.shards.iter() {
            // The caller holds one shard's lock already; `try_lock` skips it (and any shard
            // another claim holds right now) instead of deadlocking.
            if let Ok(mut other) = s.try_lock() {
                self.sweep(&mut other, now);
            }
        }
    }

    fn claim_now(
        &self,
        key: &str,
        fingerprint: &Fingerprint,
        token: OwnerToken,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let now = Instant::now();
        let mut shard = self.shard(key);
        if let Some(answer) = shard.map.get(key).and_then(|r| r.answer(fingerprint, now)) {
            return Ok(answer);
        }
        // The key is free; a record whose time is over gives its room back.
        if let Some(old) = shard.map.remove(key) {
            self.free(old.size);
        }
        // Amortised sweeping: a shard is scanned once per as many inserts as it holds records.
        shard.inserts_since_sweep += 1;
        if shard.inserts_since_sweep > shard.map.len().max(64) {
            self.sweep(&mut shard, now);
        }
        let size = RECORD_OVERHEAD + key.len();
        if !self.reserve(size) {
            self.sweep_all(now, &mut shard);
            if !self.reserve(size) {
                #[cfg(feature = "metrics")]
                metrics::counter!(crate::idempotency::metric_names::STORE_FULL).increment(1);
                #[cfg(feature = "tracing")]
                tracing::warn!(
                    max_bytes = self.inner.max_bytes,
                    "idempotency memory store full: new key refused"
                );
                return Err(StoreError::with_kind(
                    StoreErrorKind::Full,
                    format!(
                        "the memory store is full ({} bytes): no room for a new key",
                        self.inner.max_bytes
                    ),
                ));
            }
        }
        shard.map.insert(
            key.into(),
            Record {
                fingerprint: *fingerprint,
                state: State::InFlight {
                    token,
                    until: now + lease,
                },
                size,
            },
        );
        Ok(Claim::New)
    }

    fn complete_now(
        &self,
        key: &str,
        fingerprint: &Fingerprint,
        token: OwnerToken,
        completion: &Completion,
        ttl: Duration,
    ) -> bool {
        let until = Instant::now() + ttl;
        let mut shard = self.shard(key);
        let held = match shard.map.get(key) {
            Some(r) if r.owned_by(token) => r.size,
            Some(Record {
                state: State::Done { token: t, .. },
                ..
            }) if *t == token => return true,
            Some(_) => return false,
            // The lease lapsed and was swept, and nobody claimed the key since.
            None => 0,
        };
        let base = RECORD_OVERHEAD + key.len();
        let full = base + completion_size(completion);
        let (completion, size) = if full <= held || self.reserve(full - held) {
            (completion.clone(), full.max(held))
        } else {
            // No room for the body: keep the fact that it ran, which always fits the
            // claim's reservation (or a record's worth over the bound, once).
            #[cfg(feature = "tracing")]
            tracing::warn!(
                key,
                "idempotency memory store full: response kept as not replayable"
            );
            let status = match completion {
                Completion::Response(r) => r.status,
                Completion::NotReplayable { status } => *status,
            };
            if held < base {
                self.inner.bytes.fetch_add(base - held, Relaxed);
            }
            (Completion::NotReplayable { status }, base.max(held))
        };
        shard.map.insert(
            key.into(),
            Record {
                fingerprint: *fingerprint,
                state: State::Done {
                    completion: Arc::new(completion),
                    token,
                    until,
                },
                size,
            },
        );
        true
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
        let until = Instant::now() + lease;
        ready(Ok(self.if_owner(key, token, |shard| {
            if let Some(State::InFlight { until: u, .. }) =
                shard.map.get_mut(key).map(|r| &mut r.state)
            {
                *u = until;
            }
        })))
    }
}
