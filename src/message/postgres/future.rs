//! The inbox's future. Several database round trips around the handler: boxed once per
//! message, which is noise next to them.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use crate::{BoxError, message::inbox::Inboxed};

type Inner<R> = Pin<Box<dyn Future<Output = Result<Inboxed<R>, BoxError>> + Send>>;

/// The future of [`PgInbox`](super::PgInbox). Dropping it rolls back whatever it had not
/// committed.
///
/// ```
/// use std::future::Future;
/// use tower_rampart::{BoxError, message::{inbox::Inboxed, postgres::ResponseFuture}};
///
/// fn is_send<F: Future<Output = Result<Inboxed<()>, BoxError>> + Send>() {}
/// is_send::<ResponseFuture<()>>(); // spawnable whatever the handler
/// ```
pub struct ResponseFuture<R> {
    inner: Inner<R>,
}

impl<R> ResponseFuture<R> {
    pub(crate) fn new(inner: Inner<R>) -> Self {
        ResponseFuture { inner }
    }
}

impl<R> fmt::Debug for ResponseFuture<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResponseFuture")
    }
}

impl<R> Future for ResponseFuture<R> {
    type Output = Result<Inboxed<R>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}
