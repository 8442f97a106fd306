//! Response futures: the inner call plus the permit that records its outcome.

use std::{
    future::Future,
    ops::Deref,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use http::Response;
use pin_project_lite::pin_project;
use tokio::time::Instant;

use super::{Breaker, CircuitOpen, Permit};
use crate::{BoxError, call, classify::Classify};

/// Holds a permit until the call ends; dropping it early (a cancelled call) gives the permit
/// back, so a half-open breaker never waits for probes that will not come.
pub(crate) struct Guard<B: Deref<Target = Breaker>> {
    breaker: B,
    permit: Permit,
}

impl<B: Deref<Target = Breaker>> Guard<B> {
    pub(crate) fn new(breaker: B, permit: Permit) -> Self {
        Guard { breaker, permit }
    }

    fn finish(&mut self, outcome: &crate::classify::Outcome) {
        if let Some(permit) = self.permit.take() {
            self.breaker.record(permit, outcome, Instant::now);
        }
    }
}

impl<B: Deref<Target = Breaker>> Drop for Guard<B> {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.breaker.release(permit);
        }
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, C, R, B>
    where
        B: Deref<Target = Breaker>,
    {
        Called { #[pin] future: F, guard: Guard<B>, classifier: C },
        Rejected { rejection: Option<R> },
    }
}

pin_project! {
    /// The future of [`CircuitBreaker`](super::CircuitBreaker).
    ///
    /// `R` is what a rejected call yields: a [`CircuitOpen`] error (error mode) or a ready
    /// `503` response (HTTP mode).
    ///
    /// # Panics
    ///
    /// A refused call's future panics when polled again after it completed.
    pub struct ResponseFuture<F, C, R = CircuitOpen, B = Arc<Breaker>>
    where
        B: Deref<Target = Breaker>,
    {
        #[pin]
        kind: Kind<F, C, R, B>,
        // The logical call's id once known (`call::EMPTY` before), for the outcome's events.
        call: call::Slot,
    }
}

impl<F, C, R, B: Deref<Target = Breaker>> ResponseFuture<F, C, R, B> {
    pub(crate) fn called(future: F, guard: Guard<B>, classifier: C) -> Self {
        ResponseFuture {
            kind: Kind::Called {
                future,
                guard,
                classifier,
            },
            call: call::EMPTY,
        }
    }

    pub(crate) fn rejected(rejection: R) -> Self {
        ResponseFuture {
            kind: Kind::Rejected {
                rejection: Some(rejection),
            },
            call: call::EMPTY,
        }
    }

    pub(crate) fn in_call(mut self, call: call::Slot) -> Self {
        self.call = call;
        self
    }
}

/// Polls the inner call and records its outcome; `Err(r)` for a rejection.
fn poll_call<F, C, R, B, T, E>(
    kind: Pin<&mut Kind<F, C, R, B>>,
    cx: &mut Context<'_>,
) -> Poll<Result<Result<T, E>, R>>
where
    F: Future<Output = Result<T, E>>,
    C: Classify<T, E>,
    B: Deref<Target = Breaker>,
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

impl<F, C, B, T, E> Future for ResponseFuture<F, C, CircuitOpen, B>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classify<T, E>,
    B: Deref<Target = Breaker>,
{
    type Output = Result<T, BoxError>;

    // Always: with a plain hint the compiler stopped inlining this into callers once the
    // breaker's record path grew (retunable settings), which cost 4-6 ns per call.
    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let polled = call::within(this.call, || poll_call(this.kind, cx));
        Poll::Ready(match ready!(polled) {
            Ok(result) => result.map_err(Into::into),
            Err(open) => Err(open.into()),
        })
    }
}

impl<F, C, Body, B, E> Future for ResponseFuture<F, C, Response<Body>, B>
where
    F: Future<Output = Result<Response<Body>, E>>,
    C: Classify<Response<Body>, E>,
    B: Deref<Target = Breaker>,
{
    type Output = Result<Response<Body>, E>;

    // Always: with a plain hint the compiler stopped inlining this into callers once the
    // breaker's record path grew (retunable settings), which cost 4-6 ns per call.
    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let polled = call::within(this.call, || poll_call(this.kind, cx));
        Poll::Ready(match ready!(polled) {
            Ok(result) => result,
            Err(response) => Ok(response),
        })
    }
}
