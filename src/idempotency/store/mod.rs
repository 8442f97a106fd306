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
#[cfg(feature = "redis")]
mod redis;

use std::{fmt, future::Future, time::Duration};

pub use memory::MemoryStore;
#[cfg(feature = "redis")]
pub use redis::RedisStore;

use super::{Completion, Fingerprint};

/// Proof of ownership of a claimed key: random, 128 bits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct OwnerToken(u128);

impl OwnerToken {
    /// A fresh random token.
    pub fn new() -> Self {
        OwnerToken(u128::from_le_bytes(*uuid::Uuid::new_v4().as_bytes()))
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key was free: the caller owns it now, for one lease.
    New(OwnerToken),
    /// Another request with the same key and fingerprint is running; its lease ends in
    /// `retry_after` at the latest.
    InFlight {
        /// Time left on the owner's lease.
        retry_after: Duration,
    },
    /// The key is in use (running or completed) for a request with another fingerprint.
    Mismatch,
    /// The key completed; here is what to replay.
    Completed(Completion),
}

/// A store that failed or did not answer.
#[derive(Debug)]
pub struct StoreError(Box<dyn std::error::Error + Send + Sync>);

impl StoreError {
    /// Wraps the store's own error.
    pub fn new(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        StoreError(e.into())
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "idempotency store error: {}", self.0)
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// Where keys live. Keys arrive already scoped (principal, method and path are part of them).
pub trait Store: Send + Sync + 'static {
    /// Claims `key` for a request with `fingerprint`, for `lease`, atomically.
    fn claim(
        &self,
        key: &str,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> impl Future<Output = Result<Claim, StoreError>> + Send;

    /// Records the outcome and keeps it for `ttl`, only if `token` still owns the key. Returns
    /// whether it did.
    fn complete(
        &self,
        key: &str,
        token: OwnerToken,
        completion: &Completion,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Frees the key (handler error, response not to be kept), only if `token` owns it.
    fn release(
        &self,
        key: &str,
        token: OwnerToken,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Extends the lease to `lease` from now, only if `token` still owns the key.
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
