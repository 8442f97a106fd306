//! Fault injection for stores, so that the layer's promises (and your handlers) can be tested
//! under the faults they must survive: a store call that fails, is slow, loses its answer or
//! its write, takes effect but answers late, or a lease that ends mid-handler.
//!
//! ```
//! use std::time::Duration;
//! use tower_rampart::idempotency::{
//!     Claim, Fingerprint, MemoryStore, OwnerToken, Store,
//!     testing::{Fault, FaultyStore, Op},
//! };
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let store = FaultyStore::new(MemoryStore::new());
//! // The first claim fails; the second goes through.
//! store.inject(Op::Claim, 0..1, Fault::Fail);
//! let (fp, lease) = (Fingerprint::from_bytes([1; 32]), Duration::from_secs(10));
//! assert!(store.claim("k", &fp, OwnerToken::new(), lease).await.is_err());
//! assert_eq!(store.claim("k", &fp, OwnerToken::new(), lease).await.unwrap(), Claim::New);
//! assert_eq!(store.calls(Op::Claim), 2);
//! # }
//! ```

use std::{
    collections::HashMap,
    ops::{Bound, RangeBounds},
    sync::{Arc, Mutex},
    time::Duration,
};

use super::{Claim, Completion, Fingerprint, OwnerToken, Store, StoreError};

/// A store operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// [`Store::claim`].
    Claim,
    /// [`Store::complete`].
    Complete,
    /// [`Store::release`].
    Release,
    /// [`Store::renew`].
    Renew,
}

/// What happens to one store call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The call fails and changes nothing (the store is down).
    Fail,
    /// The call takes effect, but its answer is lost: the caller sees an error.
    LoseAnswer,
    /// The call takes effect after this delay, then answers (a slow store: past the layer's
    /// store timeout, the write lands after the layer gave up on it).
    Delay(Duration),
    /// The call answers as if it took effect, but the write is lost (a failover that lost
    /// it, an eviction). A claim that finds the key free answers `New` and stores nothing.
    LoseWrite,
    /// The call finds the key's record unreadable (corrupt, foreign, written by an unknown
    /// version) and fails with [`StoreErrorKind::Unreadable`](super::StoreErrorKind).
    Corrupt,
    /// The key's current lease ends just before the call (its in-flight record is dropped,
    /// as if it expired: a process paused longer than its lease).
    ExpireLease,
    /// The call takes effect at once, and its answer arrives after this delay (a slow network
    /// back: a caller that gives up meanwhile never learns that its claim landed).
    AnswerAfter(Duration),
}

#[derive(Debug)]
struct Rule {
    op: Op,
    from: usize,
    to: Option<usize>,
    fault: Fault,
}

#[derive(Debug, Default)]
struct Plan {
    rules: Vec<Rule>,
    calls: HashMap<Op, usize>,
    /// The token of each key's last successful claim, to end its lease on demand.
    owners: HashMap<String, OwnerToken>,
}

/// Wraps a store and injects [`Fault`]s into chosen calls, on a deterministic schedule: the
/// n-th call (from 0) of each [`Op`] since the store was made.
#[derive(Debug, Clone)]
pub struct FaultyStore<St> {
    inner: St,
    plan: Arc<Mutex<Plan>>,
}

impl<St: Store> FaultyStore<St> {
    /// No fault until one is injected.
    pub fn new(inner: St) -> Self {
        FaultyStore {
            inner,
            plan: Arc::default(),
        }
    }

    /// The store underneath.
    pub fn inner(&self) -> &St {
        &self.inner
    }

    /// Calls `calls` (numbered from 0 per operation) of `op` meet `fault`. The first rule that
    /// matches a call applies.
    pub fn inject(&self, op: Op, calls: impl RangeBounds<usize>, fault: Fault) -> &Self {
        let from = match calls.start_bound() {
            Bound::Included(n) => *n,
            Bound::Excluded(n) => n + 1,
            Bound::Unbounded => 0,
        };
        let to = match calls.end_bound() {
            Bound::Included(n) => Some(n + 1),
            Bound::Excluded(n) => Some(*n),
            Bound::Unbounded => None,
        };
        self.lock().rules.push(Rule {
            op,
            from,
            to,
            fault,
        });
        self
    }

    /// Removes every rule: the store works again.
    pub fn heal(&self) {
        self.lock().rules.clear();
    }

    /// Calls of `op` so far.
    pub fn calls(&self, op: Op) -> usize {
        self.lock().calls.get(&op).copied().unwrap_or(0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Plan> {
        self.plan.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts the call and says what happens to it.
    fn next(&self, op: Op) -> Option<Fault> {
        let mut plan = self.lock();
        let n = plan.calls.entry(op).or_default();
        let call = *n;
        *n += 1;
        plan.rules
            .iter()
            .find(|r| r.op == op && call >= r.from && r.to.is_none_or(|to| call < to))
            .map(|r| r.fault)
    }

    async fn expire(&self, key: &str) {
        let owner = self.lock().owners.get(key).copied();
        if let Some(token) = owner {
            let _ = self.inner.release(key, token).await;
        }
    }

    /// Runs `apply` under `fault`; `lost` is the answer of a write that was lost.
    async fn with<T, F>(
        &self,
        key: &str,
        fault: Option<Fault>,
        lost: T,
        apply: impl FnOnce() -> F,
    ) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, StoreError>>,
    {
        match fault {
            None => apply().await,
            Some(Fault::Fail) => Err(StoreError::new("injected fault: store down")),
            Some(Fault::Corrupt) => Err(StoreError::with_kind(
                super::StoreErrorKind::Unreadable,
                "injected fault: unreadable record",
            )),
            Some(Fault::LoseAnswer) => {
                let _ = apply().await;
                Err(StoreError::new("injected fault: answer lost"))
            }
            Some(Fault::Delay(d)) => {
                tokio::time::sleep(d).await;
                apply().await
            }
            Some(Fault::AnswerAfter(d)) => {
                let answer = apply().await;
                tokio::time::sleep(d).await;
                answer
            }
            Some(Fault::LoseWrite) => Ok(lost),
            Some(Fault::ExpireLease) => {
                self.expire(key).await;
                apply().await
            }
        }
    }
}

impl<St: Store> Store for FaultyStore<St> {
    async fn claim(
        &self,
        key: &str,
        fingerprint: &Fingerprint,
        token: OwnerToken,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let fault = self.next(Op::Claim);
        let claim = || self.inner.claim(key, fingerprint, token, lease);
        let answer = if fault == Some(Fault::LoseWrite) {
            // Reads are answered; a new claim is undone, as if never written.
            let answer = claim().await?;
            if answer == Claim::New {
                let _ = self.inner.release(key, token).await;
            }
            answer
        } else {
            self.with(key, fault, Claim::New, claim).await?
        };
        if answer == Claim::New {
            self.lock().owners.insert(key.to_owned(), token);
        }
        Ok(answer)
    }

    async fn complete(
        &self,
        key: &str,
        fingerprint: &Fingerprint,
        token: OwnerToken,
        completion: &Completion,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let fault = self.next(Op::Complete);
        self.with(key, fault, true, || {
            self.inner
                .complete(key, fingerprint, token, completion, ttl)
        })
        .await
    }

    async fn release(&self, key: &str, token: OwnerToken) -> Result<bool, StoreError> {
        let fault = self.next(Op::Release);
        self.with(key, fault, true, || self.inner.release(key, token))
            .await
    }

    async fn renew(
        &self,
        key: &str,
        token: OwnerToken,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let fault = self.next(Op::Renew);
        self.with(key, fault, true, || self.inner.renew(key, token, lease))
            .await
    }

    async fn ready(&self) -> Result<(), StoreError> {
        self.inner.ready().await
    }
}
