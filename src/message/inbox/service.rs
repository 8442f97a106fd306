//! The inbox service: claims the message's key, runs the handler once, completes the key.

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use tower_service::Service;

use super::{InboxFuture, Inboxed, layer::Settings, run::run};
use crate::{BoxError, idempotency::Store, message::Message};

/// A handler under an [`InboxLayer`](super::InboxLayer): runs each message's effect once per
/// key while the key is remembered.
///
/// ```
/// use tower::{Layer, Service, ServiceExt};
/// use tower_rampart::{
///     idempotency::MemoryStore,
///     message::{inbox::{InboxLayer, Inboxed}, Message},
/// };
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_rampart::BoxError> {
/// let mut inbox = InboxLayer::new(MemoryStore::new())
///     .layer(tower::service_fn(|_: Message| async { Ok::<_, std::io::Error>(7) }));
/// let msg = Message::new("m1", "order.placed", "{}");
/// assert_eq!(inbox.ready().await?.call(msg.clone()).await?, Inboxed::Ran(7));
/// assert_eq!(inbox.ready().await?.call(msg).await?, Inboxed::Duplicate);
/// # Ok(())
/// # }
/// ```
pub struct Inbox<S, St> {
    pub(crate) inner: S,
    pub(crate) settings: Arc<Settings<St>>,
}

impl<S: Clone, St> Clone for Inbox<S, St> {
    fn clone(&self) -> Self {
        Inbox {
            inner: self.inner.clone(),
            settings: self.settings.clone(),
        }
    }
}

impl<S: fmt::Debug, St> fmt::Debug for Inbox<S, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inbox")
            .field("inner", &self.inner)
            .field("prefix", &self.settings.prefix)
            .finish_non_exhaustive()
    }
}

impl<S, St> Service<Message> for Inbox<S, St>
where
    S: Service<Message> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: Send + 'static,
    S::Error: Into<BoxError>,
    St: Store,
{
    type Response = Inboxed<S::Response>;
    type Error = BoxError;
    type Future = InboxFuture<S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, message: Message) -> Self::Future {
        // The ready one goes with the call (tower's usual swap).
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        InboxFuture::new(Box::pin(run(self.settings.clone(), inner, message)))
    }
}
