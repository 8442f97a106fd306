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

use super::{
    Breaker, CircuitOpen, Permit,
    body::{BreakerBody, End},
};
use crate::{
    BoxError, call,
    classify::Classify,
    stream::{Streamed, WrapBody},
};

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

    pub(crate) fn finish(&mut self, outcome: &crate::classify::Outcome) {
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
    #[project_replace = KindReplace]
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

pin_project! {
    /// The future of a [`CircuitBreaker`](super::CircuitBreaker) that judges calls at the end of
    /// their response bodies ([`end_of_stream`](super::CircuitBreakerLayer::end_of_stream)): the
    /// response comes with its body wrapped in a [`BreakerBody`] that holds the permit until the
    /// body ends. `R` is what a rejected call yields, as for [`ResponseFuture`].
    ///
    /// # Panics
    ///
    /// Panics when polled again after it completed.
    pub struct EndOfStreamFuture<F, C, R = CircuitOpen, B = Arc<Breaker>>
    where
        B: Deref<Target = Breaker>,
    {
        #[pin]
        inner: ResponseFuture<F, C, R, B>,
    }
}

impl<F, C, R, B: Deref<Target = Breaker>> EndOfStreamFuture<F, C, R, B> {
    pub(crate) fn new(inner: ResponseFuture<F, C, R, B>) -> Self {
        EndOfStreamFuture { inner }
    }
}

/// Polls the inner call and classifies its head: a final outcome is recorded now; one that
/// waits for the end of the body moves the permit and the classifier into an [`End`] (whose
/// call id the caller sets). `Err(r)` for a rejection.
#[allow(clippy::type_complexity)]
fn poll_head<F, C, R, B, T, E>(
    mut kind: Pin<&mut Kind<F, C, R, B>>,
    cx: &mut Context<'_>,
) -> Poll<Result<Result<(T, Option<End<C, B>>), E>, R>>
where
    F: Future<Output = Result<T, E>>,
    C: Classify<T, E>,
    B: Deref<Target = Breaker>,
{
    let (result, head) = match kind.as_mut().project() {
        KindProj::Called {
            future,
            guard,
            classifier,
        } => {
            let result = ready!(future.poll(cx));
            let head = classifier.classify(result.as_ref());
            let follow = matches!(&result, Ok(res) if classifier.follows_body(&head, res));
            if !follow {
                guard.finish(&head);
                return Poll::Ready(Ok(result.map(|res| (res, None))));
            }
            (result, head)
        }
        KindProj::Rejected { rejection } => {
            return Poll::Ready(Err(rejection
                .take()
                .expect("EndOfStreamFuture polled after completion")));
        }
    };
    // The call is over: its permit and classifier move to the body (the future is left as a
    // spent rejection, which panics if polled again).
    let end = match kind.project_replace(Kind::Rejected { rejection: None }) {
        KindReplace::Called {
            guard, classifier, ..
        } => Some(End {
            guard,
            classifier,
            head,
            classify: <C as Classify<T, E>>::classify_end,
            call: call::EMPTY,
        }),
        KindReplace::Rejected { .. } => None,
    };
    Poll::Ready(Ok(result.map(|res| (res, end))))
}

/// Wraps the body of `res` in a [`BreakerBody`] recording `end` (with the call id `call`).
#[inline]
fn follow<T, C, B>(res: T, mut end: Option<End<C, B>>, call: call::Slot) -> T::Output
where
    T: WrapBody<BreakerBody<<T as Streamed>::Body, C, B>>,
    T::Body: http_body::Body,
    B: Deref<Target = Breaker>,
{
    if let Some(end) = &mut end {
        end.call = call;
    }
    res.wrap_body(|body| BreakerBody::new(body, end))
}

impl<F, C, B, T, E> Future for EndOfStreamFuture<F, C, CircuitOpen, B>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classify<T, E>,
    B: Deref<Target = Breaker>,
    T: WrapBody<BreakerBody<<T as Streamed>::Body, C, B>>,
    T::Body: http_body::Body,
{
    type Output = Result<T::Output, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project().inner.project();
        let polled = call::within(this.call, || poll_head(this.kind, cx));
        Poll::Ready(match ready!(polled) {
            Ok(Ok((res, end))) => Ok(follow(res, end, *this.call)),
            Ok(Err(e)) => Err(e.into()),
            Err(open) => Err(open.into()),
        })
    }
}

impl<F, C, Body, B, E> Future for EndOfStreamFuture<F, C, Response<Body>, B>
where
    F: Future<Output = Result<Response<Body>, E>>,
    C: Classify<Response<Body>, E>,
    B: Deref<Target = Breaker>,
    Body: http_body::Body,
{
    type Output = Result<Response<BreakerBody<Body, C, B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project().inner.project();
        let polled = call::within(this.call, || poll_head(this.kind, cx));
        Poll::Ready(match ready!(polled) {
            Ok(Ok((res, end))) => Ok(follow(res, end, *this.call)),
            Ok(Err(e)) => Err(e),
            Err(refused) => Ok(refused.map(BreakerBody::done)),
        })
    }
}
