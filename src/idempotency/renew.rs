//! The lease's renewals, in a task of their own: they must not depend on the handler's task
//! being polled. A handler that blocks its worker thread (a synchronous database driver, a
//! CPU-heavy step) would otherwise stop its own renewals and lose its key to a duplicate.
//!
//! What remains: on a current-thread runtime, or a multi-thread one whose every worker is
//! blocked, nothing else runs while the handler blocks, renewals included. Blocking work
//! belongs in `spawn_blocking` (or `block_in_place`).

use std::{sync::Arc, time::Duration};

use tokio::{task::JoinHandle, time::Instant};

use super::{
    EventKind, OwnerToken, Store,
    instrument::{outcome, within},
    layer::Settings,
    lease::LeaseSender,
    outage::later,
};

/// The running renewals of one claimed key; dropping this stops them (the key was completed
/// or released, or its owner task ended in any way), so none outlives its key.
pub(crate) struct Renewals(JoinHandle<()>);

impl Renewals {
    /// Stops them now (the completion is stored).
    pub(crate) fn stop(&self) {
        self.0.abort();
    }
}

impl Drop for Renewals {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts renewing the lease of `key`, claimed with `token` at `claimed_at`, in its own task.
///
/// Spawn it before the owner task, from the request's task: a task spawned last on a worker
/// waits in that worker's slot that other workers cannot take from, and the owner task, spawned
/// after it, pushes it to the queue they can.
pub(crate) fn renew<St: Store>(
    settings: Arc<Settings<St>>,
    key: Arc<str>,
    token: OwnerToken,
    lease: LeaseSender,
    claimed_at: Instant,
) -> Renewals {
    let task = heartbeat(settings, key, token, lease, claimed_at);
    // Its events (a lost lease) belong to the request's span too.
    #[cfg(feature = "tracing")]
    let task = tracing::Instrument::instrument(task, tracing::Span::current());
    Renewals(tokio::spawn(task))
}

/// Renews the lease every third of it; after a failure sooner (a tenth of it, at most 250 ms),
/// backing off with every background call that failed meanwhile, up to half the time left on
/// the lease (a whole lease once it is lost); says when the lease is lost. Runs until the lease
/// is provably lost, or until stopped.
async fn heartbeat<St: Store>(
    settings: Arc<Settings<St>>,
    key: Arc<str>,
    token: OwnerToken,
    lease: LeaseSender,
    claimed_at: Instant,
) {
    let st = &*settings;
    let every = st.lease / 3;
    let again = (st.lease / 10).min(Duration::from_millis(250));
    let mut held_since = claimed_at;
    let mut next = later(held_since, every);
    loop {
        tokio::time::sleep_until(next).await;
        let sent = Instant::now();
        let renewed = within(
            "renew",
            st.store_timeout,
            st.store.renew(&key, token, st.lease),
        );
        match renewed.await {
            Ok(true) => {
                st.outage.answered();
                held_since = sent;
                next = later(sent, every);
            }
            Ok(false) => {
                st.outage.answered();
                if lease.is_held() {
                    outcome(st, Some(&key), EventKind::LeaseLost);
                    #[cfg(feature = "tracing")]
                    tracing::warn!(
                        key = %super::redact::ShownKey::new(st, &key),
                        "idempotency lease lost: another owner may run"
                    );
                }
                lease.lose();
                return;
            }
            Err(_) => {
                st.outage.failed();
                let now = Instant::now();
                let ends = later(held_since, st.lease);
                if now >= ends && lease.is_held() {
                    // The store may have let the key go: the handler must not count on it.
                    outcome(st, Some(&key), EventKind::LeaseLost);
                    lease.lose();
                }
                next = if lease.is_held() {
                    // Back off, yet keep trying while the lease lasts: at the latest halfway
                    // to its end (a few tries, not one every `again`), and as it ends.
                    let left = ends.saturating_duration_since(now);
                    let pause = st.outage.pause(again, every).min((left / 2).max(again));
                    later(now, pause).min(ends)
                } else {
                    // Lost: renewing only keeps the key from a duplicate if the store comes
                    // back; no hurry.
                    later(now, st.outage.pause(again, st.lease))
                };
            }
        }
    }
}
