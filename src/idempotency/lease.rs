//! What the handler sees of its lease: whether this execution still owns its key.

use std::{
    pin::pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::sync::Notify;

/// Whether this execution still owns its key, as far as the layer can tell. Found through
/// [`IdempotencyContext::lease`](super::IdempotencyContext::lease).
///
/// The layer renews the lease from the claim until the response is stored. The lease is lost
/// when the store says another owner holds the key (or it vanished), or when renewals failed
/// for longer than one lease, so that the store may have let the key go. Once lost, it stays
/// lost for this execution: stop, or fence the side effects that remain with the owner token
/// (see the README's Guarantees section).
///
/// ```
/// use tower_rampart::idempotency::IdempotencyContext;
///
/// async fn handler(ctx: IdempotencyContext) -> Result<(), &'static str> {
///     tokio::select! {
///         _ = ctx.lease().lost() => Err("lost the key: another execution may run"),
///         _ = async { /* charge the card, fenced with ctx.token */ } => Ok(()),
///     }
/// }
/// # let _ = handler;
/// ```
#[derive(Debug, Clone)]
pub struct Lease {
    state: Arc<State>,
}

/// One flag and its waiters (a `watch` channel costs a new key more: its last sender wakes
/// every shard of its waiters when dropped).
#[derive(Debug)]
struct State {
    held: AtomicBool,
    lost: Notify,
}

impl Lease {
    /// Whether the key is still owned by this execution.
    pub fn is_held(&self) -> bool {
        self.state.held.load(Ordering::Acquire)
    }

    /// Resolves when the lease is lost (at once if it already is). Never resolves while it is
    /// held, even after the layer has stored the response and stopped renewing.
    pub async fn lost(&self) {
        let mut lost = pin!(self.state.lost.notified());
        // Listening before looking: a loss between the two still wakes this.
        lost.as_mut().enable();
        if self.is_held() {
            lost.await;
        }
    }
}

/// The layer's side: says when the lease is lost. The owner and its renewals each hold one.
#[derive(Debug, Clone)]
pub(crate) struct LeaseSender(Arc<State>);

impl LeaseSender {
    pub(crate) fn lose(&self) {
        if self.0.held.swap(false, Ordering::AcqRel) {
            self.0.lost.notify_waiters();
        }
    }

    pub(crate) fn is_held(&self) -> bool {
        self.0.held.load(Ordering::Acquire)
    }
}

pub(crate) fn lease() -> (LeaseSender, Lease) {
    let state = Arc::new(State {
        held: AtomicBool::new(true),
        lost: Notify::new(),
    });
    (LeaseSender(state.clone()), Lease { state })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn lost_resolves_once_lost_and_never_while_held() {
        let (tx, lease) = super::lease();
        let waiting = tokio::time::timeout(Duration::from_secs(60), lease.lost());
        assert!(waiting.await.is_err(), "held: never resolves");
        let clone = lease.clone();
        let waiter = tokio::spawn(async move { clone.lost().await });
        tokio::task::yield_now().await;
        tx.lose();
        waiter.await.unwrap();
        assert!(!lease.is_held() && !tx.is_held());
        lease.lost().await; // at once, once lost
        drop(tx);
        assert!(!lease.is_held());
    }
}
