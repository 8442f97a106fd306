//! The embedded store: bounded, expiring, atomic per key.

use std::{
    future::{Future, ready},
    sync::Arc,
    time::Duration,
};

use moka::{Expiry, ops::compute::Op, sync::Cache};
use tokio::time::Instant;

use super::{Claim, OwnerToken, Store, StoreError};
use crate::idempotency::{Completion, Fingerprint};

/// An in-process store: the default. Bounded in entries (least recently used first out, via
/// `moka`), completed keys expire after their TTL and abandoned claims after their lease.
///
/// Leases and TTLs are judged on tokio's clock when a key is read, so they follow
/// `tokio::time::pause()` in tests; `moka` drops the entries from memory on its own schedule.
/// One process only: instances behind a load balancer need a shared store such as Redis.
///
/// ```
/// use std::time::Duration;
/// use tower_rampart::idempotency::{Claim, Fingerprint, MemoryStore, Store};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_rampart::idempotency::StoreError> {
/// let store = MemoryStore::new(10_000);
/// let fp = Fingerprint::from_bytes([7; 32]);
/// let Claim::New(token) = store.claim("k1", &fp, Duration::from_secs(10)).await? else {
///     unreachable!("a new key")
/// };
/// assert!(matches!(store.claim("k1", &fp, Duration::from_secs(10)).await?, Claim::InFlight { .. }));
/// assert!(store.release("k1", token).await?);
/// assert!(matches!(store.claim("k1", &fp, Duration::from_secs(10)).await?, Claim::New(_)));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    cache: Cache<String, Slot>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.cache.entry_count())
            .finish()
    }
}

#[derive(Clone)]
enum Slot {
    InFlight {
        fingerprint: Fingerprint,
        token: OwnerToken,
        until: Instant,
        lease: Duration,
    },
    Done {
        fingerprint: Fingerprint,
        completion: Arc<Completion>,
        until: Instant,
        ttl: Duration,
    },
}

impl Slot {
    /// How long moka keeps it: the lease or TTL, plus a margin so that reads on tokio's clock,
    /// not moka's, decide.
    fn keep(&self) -> Duration {
        let d = match self {
            Slot::InFlight { lease, .. } => *lease,
            Slot::Done { ttl, .. } => *ttl,
        };
        d.saturating_add(Duration::from_secs(60))
    }
}

struct Keep;

impl Expiry<String, Slot> for Keep {
    fn expire_after_create(
        &self,
        _: &String,
        slot: &Slot,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(slot.keep())
    }

    fn expire_after_update(
        &self,
        _: &String,
        slot: &Slot,
        _: std::time::Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(slot.keep())
    }
}

impl MemoryStore {
    /// A store holding at most `max_entries` keys.
    pub fn new(max_entries: u64) -> Self {
        MemoryStore {
            cache: Cache::builder()
                .max_capacity(max_entries)
                .expire_after(Keep)
                .build(),
        }
    }

    /// Keys held now (approximate while moka catches up on evictions).
    pub fn len(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }

    /// Whether the store holds no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The answer a live entry gives, if there is one.
    fn answer(slot: &Slot, fingerprint: &Fingerprint, now: Instant) -> Option<Claim> {
        match slot {
            Slot::InFlight { until, .. } | Slot::Done { until, .. } if *until <= now => None,
            Slot::InFlight {
                fingerprint: f,
                until,
                ..
            } => Some(if f == fingerprint {
                Claim::InFlight {
                    retry_after: *until - now,
                }
            } else {
                Claim::Mismatch
            }),
            Slot::Done {
                fingerprint: f,
                completion,
                ..
            } => Some(if f == fingerprint {
                Claim::Completed((**completion).clone())
            } else {
                Claim::Mismatch
            }),
        }
    }

    fn claim_now(&self, key: &str, fingerprint: &Fingerprint, lease: Duration) -> Claim {
        let now = Instant::now();
        // Replays and conflicts only read: answer them from a plain lookup, and take the
        // per-key compute (which copies the key and locks it) only to claim a free key.
        if let Some(answer) = self
            .cache
            .get(key)
            .and_then(|slot| Self::answer(&slot, fingerprint, now))
        {
            return answer;
        }
        let mut answer = None;
        self.cache.entry_by_ref(key).and_compute_with(|current| {
            // Checked again under the key's lock: another claim may have won meanwhile.
            if let Some(a) = current.and_then(|e| Self::answer(e.value(), fingerprint, now)) {
                answer = Some(a);
                return Op::Nop;
            }
            let token = OwnerToken::new();
            answer = Some(Claim::New(token));
            Op::Put(Slot::InFlight {
                fingerprint: *fingerprint,
                token,
                until: now + lease,
                lease,
            })
        });
        answer.expect("the compute closure always answers")
    }

    /// Applies `f` to the slot if `token` owns it (and its lease is live); returns whether it did.
    fn if_owner(&self, key: &str, token: OwnerToken, f: impl FnOnce(&Slot) -> Op<Slot>) -> bool {
        let now = Instant::now();
        let mut owned = false;
        self.cache.entry_by_ref(key).and_compute_with(|current| {
            match current.map(|e| e.into_value()) {
                Some(
                    slot @ Slot::InFlight {
                        token: t, until, ..
                    },
                ) if t == token && until > now => {
                    owned = true;
                    f(&slot)
                }
                _ => Op::Nop,
            }
        });
        owned
    }
}

impl Store for MemoryStore {
    fn claim(
        &self,
        key: &str,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> impl Future<Output = Result<Claim, StoreError>> + Send {
        ready(Ok(self.claim_now(key, fingerprint, lease)))
    }

    fn complete(
        &self,
        key: &str,
        token: OwnerToken,
        completion: &Completion,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let until = Instant::now() + ttl;
        ready(Ok(self.if_owner(key, token, |slot| {
            let Slot::InFlight { fingerprint, .. } = slot else {
                return Op::Nop;
            };
            Op::Put(Slot::Done {
                fingerprint: *fingerprint,
                completion: Arc::new(completion.clone()),
                until,
                ttl,
            })
        })))
    }

    fn release(
        &self,
        key: &str,
        token: OwnerToken,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        ready(Ok(self.if_owner(key, token, |_| Op::Remove)))
    }

    fn renew(
        &self,
        key: &str,
        token: OwnerToken,
        lease: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let until = Instant::now() + lease;
        ready(Ok(self.if_owner(key, token, |slot| {
            let mut renewed = slot.clone();
            if let Slot::InFlight {
                until: u, lease: l, ..
            } = &mut renewed
            {
                *u = until;
                *l = lease;
            }
            Op::Put(renewed)
        })))
    }
}
