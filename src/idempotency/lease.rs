//! What the handler sees of its lease: whether this execution still owns its key.

use tokio::sync::watch;

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
    held: watch::Receiver<bool>,
}

impl Lease {
    /// Whether the key is still owned by this execution.
    pub fn is_held(&self) -> bool {
        *self.held.borrow()
    }

    /// Resolves when the lease is lost (at once if it already is). Never resolves while it is
    /// held, even after the layer has stored the response and stopped renewing.
    pub async fn lost(&self) {
        let mut held = self.held.clone();
        if held.wait_for(|held| !*held).await.is_err() {
            // The layer is done with this key and never saw it lost.
            std::future::pending::<()>().await;
        }
    }
}

/// The layer's side: says when the lease is lost. The owner task and its renewal task each
/// hold one.
#[derive(Debug, Clone)]
pub(crate) struct LeaseSender(watch::Sender<bool>);

impl LeaseSender {
    pub(crate) fn lose(&self) {
        self.0.send_replace(false);
    }

    pub(crate) fn is_held(&self) -> bool {
        *self.0.borrow()
    }
}

pub(crate) fn lease() -> (LeaseSender, Lease) {
    let (tx, rx) = watch::channel(true);
    (LeaseSender(tx), Lease { held: rx })
}
