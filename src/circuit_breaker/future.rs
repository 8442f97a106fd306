//! Response futures: the inner call plus the permit that records its outcome.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use http::Response;
use pin_project_lite::pin_project;
use tokio::time::Instant;

use super::{Breaker, CircuitOpen, Permit};
use crate::{BoxError, classify::Classify};

/// Holds a permit until the call ends; dropping it early (a cancelled call) gives the permit
/// back, so a half-open breaker never waits for probes that will not come.
pub(crate) struct Guard {
    breaker: Arc<Breaker>,
    permit: Option<Permit>,
}

impl Guard {
    pub(crate) fn new(breaker: Arc<Breaker>, permit: Permit) -> Self {
        Guard {
            breaker,
            permit: Some(permit),
        }
    }

    fn finish(&mut self, outcome: &crate::classify::Outcome) {
        if let Some(permit) = self.permit.take() {
            self.breaker.record(permit, outcome, Instant::now);
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.breaker.release(permit);
        }
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, C, R> {
        Called { #[pin] future: F, guard: Guard, classifier: C },
        Rejected { rejection: Option<R> },
    }
}

pin_project! {
    /// The future of [`CircuitBreaker`](super::CircuitBreaker).
    ///
    /// `R` is what a rejected call yields: a [`CircuitOpen`] error (error mode) or a ready
    /// `503` response (HTTP mode).
    pub struct ResponseFuture<F, C, R = CircuitOpen> {
        #[pin]
        kind: Kind<F, C, R>,
    }
}

impl<F, C, R> ResponseFuture<F, C, R> {
    pub(crate) fn called(future: F, guard: Guard, classifier: C) -> Self {
        ResponseFuture {
            kind: Kind::Called {
                future,
                guard,
                classifier,
            },
        }
    }

    pub(crate) fn rejected(rejection: R) -> Self {
        ResponseFuture {
            kind: Kind::Rejected {
                rejection: Some(rejection),
            },
        }
    }
}

/// Polls the inner call and records its outcome; `Err(r)` for a rejection.
fn poll_call<F, C, R, T, E>(
    kind: Pin<&mut Kind<F, C, R>>,
    cx: &mut Context<'_>,
) -> Poll<Result<Result<T, E>, R>>
where
    F: Future<Output = Result<T, E>>,
    C: Classify<T, E>,
{
    match kind.project() {
        KindProj::Called {
            future,
            guard,
            classifier,
        } => {
            let result = ready!(future.poll(cx));
            guard.finish(&classifier.classify(result.as_ref()));
            Poll::Ready(Ok(result))
        }
        KindProj::Rejected { rejection } => Poll::Ready(Err(rejection
            .take()
            .expect("ResponseFuture polled after completion"))),
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C, CircuitOpen>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classify<T, E>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(match ready!(poll_call(self.project().kind, cx)) {
            Ok(result) => result.map_err(Into::into),
            Err(open) => Err(open.into()),
        })
    }
}

impl<F, C, B, E> Future for ResponseFuture<F, C, Response<B>>
where
    F: Future<Output = Result<Response<B>, E>>,
    C: Classify<Response<B>, E>,
{
    type Output = Result<Response<B>, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(match ready!(poll_call(self.project().kind, cx)) {
            Ok(result) => result,
            Err(response) => Ok(response),
        })
    }
}
