//! The timeout future: the call raced against a sleep.

use std::{
    future::Future,
    marker::PhantomData,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::Response;
use pin_project_lite::pin_project;
use tokio::time::Sleep;

use super::Elapsed;
use crate::{
    BoxError,
    mode::{RespondGrpc, RespondHttp, ReturnError},
};

pin_project! {
    /// The future of [`Timeout`](super::Timeout).
    pub struct ResponseFuture<F, M> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Sleep,
        // Whole words only: the future is built in the caller's `call` and copied out with wide
        // loads, which stall on the partial stores a `Duration`'s u32 or a u16 status needs.
        after_nanos: u64,
        // The HTTP status to answer in `RespondHttp` mode (unused otherwise).
        code: u64,
        _mode: PhantomData<fn() -> M>,
    }
}

impl<F, M> ResponseFuture<F, M> {
    pub(crate) fn new(inner: F, after: Duration, code: u64) -> Self {
        ResponseFuture {
            inner,
            sleep: tokio::time::sleep(after),
            after_nanos: crate::time::nanos_of(after),
            code,
            _mode: PhantomData,
        }
    }
}

/// Polls the call first, so a call that is ready as the timer fires still wins.
fn race<F: Future, M>(
    this: Pin<&mut ResponseFuture<F, M>>,
    cx: &mut Context<'_>,
) -> Poll<Result<F::Output, (Elapsed, u64)>> {
    let this = this.project();
    if let Poll::Ready(out) = this.inner.poll(cx) {
        return Poll::Ready(Ok(out));
    }
    match this.sleep.poll(cx) {
        Poll::Ready(()) => Poll::Ready(Err((
            Elapsed::new(Duration::from_nanos(*this.after_nanos)),
            *this.code,
        ))),
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
            Err((elapsed, code)) => Ok(elapsed.to_http_response(RespondHttp::status_of(code))),
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
