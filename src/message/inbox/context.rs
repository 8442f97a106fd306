//! What the handler knows of its claim: the key, the owner token (a fencing token for its own
//! writes) and whether it still holds the lease, renewed in a task of its own.

use std::{sync::Arc, time::Duration};

use tokio::{sync::watch, task::JoinHandle, time::Instant};

use super::layer::Settings;
use crate::idempotency::{OwnerToken, Store};

tokio::task_local! {
    static CURRENT: InboxContext;
}

/// The claim a handler runs under, found with [`InboxContext::current`] inside the handler's
/// future (not in tasks it spawns: pass a clone there).
///
/// The lease is renewed every third of it while the handler runs. It is lost when the store
/// says another consumer holds the key, or when renewals failed for a whole lease (the store
/// may have let it go): a redelivery may then run the same message beside this one. Stop, or
/// fence the writes that remain with [`token`](Self::token) (a unique constraint, a
/// conditional update), as for the HTTP layer's [`Lease`](crate::idempotency::Lease).
///
/// ```
/// use tower_rampart::message::{inbox::InboxContext, Message};
///
/// async fn handler(msg: Message) -> Result<(), &'static str> {
///     let Some(ctx) = InboxContext::current() else { return Ok(()) }; // not under an inbox
///     tokio::select! {
///         _ = ctx.lost() => Err("lost the key: a redelivery may run"),
///         _ = async { /* apply msg, fenced with ctx.token() */ } => Ok(()),
///     }
/// }
/// # let _ = handler;
/// ```
#[derive(Debug, Clone)]
pub struct InboxContext {
    key: Arc<str>,
    token: OwnerToken,
    held: watch::Receiver<bool>,
}

impl InboxContext {
    /// The claim of the message being handled, when called inside a handler under an
    /// [`InboxLayer`](super::InboxLayer).
    pub fn current() -> Option<InboxContext> {
        CURRENT.try_with(Clone::clone).ok()
    }

    /// The key in the store (prefix included).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The owner token of this execution: a fencing token for the handler's own writes.
    pub fn token(&self) -> OwnerToken {
        self.token
    }

    /// Whether this execution still holds its key, as far as the inbox can tell.
    pub fn is_held(&self) -> bool {
        *self.held.borrow()
    }

    /// Resolves when the lease is lost (at once if it is). Never while it is held.
    pub async fn lost(&self) {
        let mut held = self.held.clone();
        if held.wait_for(|h| !*h).await.is_err() {
            // The inbox is done with the key and never saw it lost.
            std::future::pending::<()>().await;
        }
    }

    /// Runs `fut` with this context as [`current`](Self::current).
    pub(crate) async fn scope<F: Future>(self, fut: F) -> F::Output {
        CURRENT.scope(self, fut).await
    }
}

/// The renewals of one claim, in a task of their own (a handler that blocks its thread must
/// not stop them); dropping this stops them.
pub(crate) struct Renewals {
    task: JoinHandle<()>,
}

impl Drop for Renewals {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts renewing `key`'s lease; the context the handler sees.
pub(crate) fn start<St: Store>(
    settings: Arc<Settings<St>>,
    key: Arc<str>,
    token: OwnerToken,
) -> (InboxContext, Renewals) {
    let (tx, rx) = watch::channel(true);
    let ctx = InboxContext {
        key: key.clone(),
        token,
        held: rx,
    };
    let task = tokio::spawn(renew(settings, key, token, tx));
    (ctx, Renewals { task })
}

/// Renews every third of the lease; after a failure sooner (a tenth of it, at most 250 ms);
/// says the lease is lost when the store says so or when no renewal succeeded for a lease.
async fn renew<St: Store>(
    st: Arc<Settings<St>>,
    key: Arc<str>,
    token: OwnerToken,
    held: watch::Sender<bool>,
) {
    let every = st.lease / 3;
    let again = (st.lease / 10).min(Duration::from_millis(250));
    let mut held_since = Instant::now();
    let mut next = held_since + every;
    loop {
        tokio::time::sleep_until(next).await;
        let sent = Instant::now();
        let renewed = tokio::time::timeout(st.store_timeout, st.store.renew(&key, token, st.lease));
        match renewed.await {
            Ok(Ok(true)) => {
                held_since = sent;
                next = sent + every;
            }
            Ok(Ok(false)) => {
                held.send_replace(false);
                #[cfg(feature = "tracing")]
                tracing::warn!("inbox lease lost: a redelivery may run beside this handler");
                return;
            }
            Ok(Err(_)) | Err(_) => {
                let now = Instant::now();
                if now >= held_since + st.lease && *held.borrow() {
                    held.send_replace(false);
                    #[cfg(feature = "tracing")]
                    tracing::warn!("inbox lease lost: the store did not answer for a lease");
                }
                next = now + again;
            }
        }
    }
}
