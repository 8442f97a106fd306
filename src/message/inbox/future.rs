//! The inbox's response future.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use super::Inboxed;
use crate::BoxError;

type Boxed<R> = Pin<Box<dyn Future<Output = Result<Inboxed<R>, BoxError>> + Send>>;

/// The response future of an [`Inbox`](super::Inbox): a claim, the handler and a completion,
/// each a store round trip or more, so one allocation per message does not show.
///
/// ```
/// use tower::{Layer, Service};
/// use tower_rampart::{idempotency::MemoryStore, message::{inbox::{InboxFuture, InboxLayer}, Message}};
///
/// let mut inbox = InboxLayer::new(MemoryStore::new())
///     .layer(tower::service_fn(|_: Message| async { Ok::<_, std::io::Error>(()) }));
/// let fut: InboxFuture<()> = inbox.call(Message::new("m1", "k", ""));
/// # drop(fut);
/// ```
pub struct InboxFuture<R> {
    inner: Boxed<R>,
}

impl<R> InboxFuture<R> {
    pub(crate) fn new(inner: Boxed<R>) -> Self {
        InboxFuture { inner }
    }
}

impl<R> fmt::Debug for InboxFuture<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("InboxFuture")
    }
}

impl<R> Future for InboxFuture<R> {
    type Output = Result<Inboxed<R>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}
