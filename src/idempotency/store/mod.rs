//! The store contract: claim, complete, release and renew, with owner tokens.
//!
//! Every operation on one key is atomic. A claim is one round trip: it answers at once whether
//! the key is new (and now owned by the caller), in flight elsewhere, reused with another
//! fingerprint, or completed. Owners hold a short, renewed lease, so a crashed instance frees
//! its keys within one lease and a slow handler never loses its key.
//!
//! Implement [`Store`] to keep keys elsewhere (a SQL table, say): the in-tree
//! [`MemoryStore`] is the reference for the semantics.

mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;

use std::{fmt, future::Future, sync::Arc, time::Duration};

pub use memory::{
    DEFAULT_MAX_BYTES, DEFAULT_RETENTION_FLOOR, MemoryStore, MemoryStoreBuilder,
    TYPICAL_RECORD_BYTES,
};
#[cfg(feature = "postgres")]
pub use postgres::PostgresStore;
#[cfg(feature = "redis")]
pub use redis::RedisStore;

use super::{Completion, Fingerprint};

/// Proof of ownership of a claimed key: random, 128 bits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct OwnerToken(u128);

impl OwnerToken {
    /// A fresh random token: from a generator per thread, seeded once from the operating
    /// system (no system call per token), never repeating on its thread.
    pub fn new() -> Self {
        thread_local! {
            // A random origin, and how many tokens were drawn from it.
            static NEXT: std::cell::Cell<(u128, u128)> = std::cell::Cell::new((
                u128::from_le_bytes(*uuid::Uuid::new_v4().as_bytes()),
                0,
            ));
        }
        let (origin, n) = NEXT.with(|c| {
            let (origin, n) = c.get();
            c.set((origin, n.wrapping_add(1)));
            (origin, n)
        });
        // A bijection of origin + n (odd multipliers and xor-shifts can be undone): distinct
        // for every n. Scrambled, not secret: a token proves ownership to the store, and no
        // client ever sees one.
        let mut x = origin.wrapping_add(n.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835));
        x ^= x >> 64;
        x = x.wrapping_mul(0xda94_2042_e4dd_58b5_ff51_afd7_ed55_8ccd);
        x ^= x >> 61;
        x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53_9e37_79b9_7f4a_7c15 | 1);
        x ^= x >> 64;
        OwnerToken(x)
    }

    /// From stored bytes.
    pub fn from_u128(v: u128) -> Self {
        OwnerToken(v)
    }

    /// The token's value.
    pub fn as_u128(&self) -> u128 {
        self.0
    }
}

impl Default for OwnerToken {
    fn default() -> Self {
        OwnerToken::new()
    }
}

impl fmt::Debug for OwnerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OwnerToken({:08x}…)", (self.0 >> 96) as u32)
    }
}

/// What a claim found.
#[allow(clippy::large_enum_variant)] // one per request, and most are small answers
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key was free: the caller's token owns it now, for one lease.
    New,
    /// Another request with the same key and fingerprint is running; its lease ends in
    /// `lease_left` at the latest.
    InFlight {
        /// Time left on the owner's lease.
        lease_left: Duration,
    },
    /// The key is in use (running or completed) for a request with another fingerprint.
    Mismatch,
    /// The key completed; here is what to replay.
    Completed(Completion),
}

/// Why a store call failed: the layer answers each kind differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The store failed or did not answer (the only kind `OnStoreError::FailOpen` applies to).
    Unavailable,
    /// The store is at its size bound and cannot take a new key (answered 503, with the
    /// store's [`StoreError::retry_after`] when it knows when room frees up), never by
    /// forgetting an in-flight key or a completed one the store promised to keep.
    Full,
    /// A record exists but cannot be read (corrupt, foreign, or written by an unknown version):
    /// never treated as absent, so the handler never runs for it.
    Unreadable,
}

/// A store that failed or did not answer.
#[derive(Debug)]
pub struct StoreError {
    kind: StoreErrorKind,
    source: Box<dyn std::error::Error + Send + Sync>,
    retry_after: Option<Duration>,
}

impl StoreError {
    /// The store failed or did not answer; wraps its own error.
    pub fn new(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        StoreError::with_kind(StoreErrorKind::Unavailable, e)
    }

    /// An error of a given kind.
    pub fn with_kind(
        kind: StoreErrorKind,
        e: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        StoreError {
            kind,
            source: e.into(),
            retry_after: None,
        }
    }

    /// The same error, saying when trying again may succeed (a full store that knows when room
    /// frees up): the layer sends it as `Retry-After`.
    pub fn with_retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }

    /// When trying again may succeed, if the store said so.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// What went wrong.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "idempotency store error: {}", self.source)
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// Where keys live. Keys arrive already scoped (principal, method and path are part of them).
///
/// The rules every store follows (the shared contract tests check them on every store in the
/// crate):
/// - `claim` is atomic per key. The caller brings the owner token, so a claim whose answer was
///   lost (a timeout) can still be released with it.
/// - An in-flight record is never dropped before its lease ends, nor a completed one before its
///   TTL ends, except that a bounded store may drop completed records older than a retention
///   floor it documents, to make room (the [`MemoryStore`] does, oldest first). A store that
///   cannot make room refuses new keys with [`StoreErrorKind::Full`].
/// - `complete` and `renew` succeed for the owner's token whenever no other owner has claimed
///   the key since, even if the lease lapsed meanwhile; `complete` on a key that vanished (its
///   lease lapsed and nobody claimed it) stores the completion.
/// - A record that cannot be read is reported as [`StoreErrorKind::Unreadable`], never as absent,
///   and never stays forever: it expires like any record.
pub trait Store: Send + Sync + 'static {
    /// Claims `key` for a request with `fingerprint`, owned by `token` for `lease` if it is free.
    fn claim(
        &self,
        key: &str,
        fingerprint: &Fingerprint,
        token: OwnerToken,
        lease: Duration,
    ) -> impl Future<Output = Result<Claim, StoreError>> + Send;

    /// Records the outcome and keeps it for `ttl`, unless another owner claimed the key since
    /// `token` did. Returns whether the key holds this owner's completion now (a repeat by the
    /// same owner, whose first answer was lost, is `true` and keeps the first).
    fn complete(
        &self,
        key: &str,
        fingerprint: &Fingerprint,
        token: OwnerToken,
        completion: &Completion,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// [`complete`](Store::complete) with a completion the caller shares: a store that keeps
    /// completions in memory keeps this `Arc` instead of a copy. By default, `complete`.
    fn complete_shared(
        &self,
        key: &str,
        fingerprint: &Fingerprint,
        token: OwnerToken,
        completion: &Arc<Completion>,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        self.complete(key, fingerprint, token, completion, ttl)
    }

    /// Frees the key (handler error, response not to be kept), only if `token` owns it.
    fn release(
        &self,
        key: &str,
        token: OwnerToken,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Extends the lease to `lease` from now, only if `token` still owns the key. `false` means
    /// the lease is provably lost.
    fn renew(
        &self,
        key: &str,
        token: OwnerToken,
        lease: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Whether the store answers (for readiness probes). Always yes by default.
    fn ready(&self) -> impl Future<Output = Result<(), StoreError>> + Send {
        std::future::ready(Ok(()))
    }
}
