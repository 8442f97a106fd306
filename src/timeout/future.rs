//! The timeout future: the call raced against a sleep.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::Response;
use pin_project_lite::pin_project;
use tokio::time::Sleep;

use super::{Elapsed, RespondGrpc, RespondHttp};
use crate::{BoxError, ReturnError};

pin_project! {
    /// The future of [`Timeout`](super::Timeout).
    pub struct ResponseFuture<F, M> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Sleep,
        after: Duration,
        mode: M,
    }
}

impl<F, M> ResponseFuture<F, M> {
    pub(crate) fn new(inner: F, after: Duration, mode: M) -> Self {
        ResponseFuture {
            inner,
            sleep: tokio::time::sleep(after),
            after,
            mode,
        }
    }
}

/// Polls the call first, so a call that is ready as the timer fires still wins.
fn race<F: Future, M>(
    this: Pin<&mut ResponseFuture<F, M>>,
    cx: &mut Context<'_>,
) -> Poll<Result<F::Output, (Elapsed, M)>>
where
    M: Copy,
{
    let this = this.project();
    if let Poll::Ready(out) = this.inner.poll(cx) {
        return Poll::Ready(Ok(out));
    }
    match this.sleep.poll(cx) {
        Poll::Ready(()) => Poll::Ready(Err((Elapsed::new(*this.after), *this.mode))),
        Poll::Pending => Poll::Pending,
    }
}

impl<F, T, E> Future for ResponseFuture<F, ReturnError>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        race(self, cx).map(|r| match r {
            Ok(out) => out.map_err(Into::into),
            Err((elapsed, _)) => Err(elapsed.into()),
        })
    }
}

impl<F, B, E> Future for ResponseFuture<F, RespondHttp>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: From<Bytes>,
{
    type Output = Result<Response<B>, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        race(self, cx).map(|r| match r {
            Ok(out) => out,
            Err((elapsed, mode)) => Ok(elapsed.to_http_response(mode.status)),
        })
    }
}

impl<F, B, E> Future for ResponseFuture<F, RespondGrpc>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Default,
{
    type Output = Result<Response<B>, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        race(self, cx).map(|r| match r {
            Ok(out) => out,
            Err((elapsed, _)) => Ok(elapsed.to_grpc_response()),
        })
    }
}
