//! The retry future: attempt, wait, attempt again; a named state machine, no boxing.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower_service::Service;

use super::{
    Replay,
    policy::{Held, NOT_TIMED, Next, Retries},
    spans::Spans,
};
use crate::{BoxError, call, classify::Classify};

pin_project! {
    /// The future of [`Retry`](super::Retry).
    pub struct ResponseFuture<S, Req, C, R>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S::Future>,
        service: S,
        kept: Option<Req>,
        classifier: C,
        replay: R,
        policy: Held,
        // The attempts that failed so far, and `BUDGETED` when the policy has a retry budget (so
        // that a success without one reads no policy). A full word: the caller copies the future
        // out with 8-byte loads, and a 4-byte store here would stall them (store forwarding
        // fails on partial overlaps).
        attempts: u64,
        // Nanoseconds since the policy's epoch, `NOT_TIMED` unless an elapsed limit is set or
        // the duration metrics are bound: a plain word, for the same store-forwarding reason as
        // `attempts`.
        started: u64,
        // The call's and the attempt's spans (zero-sized without the `tracing` feature).
        spans: Spans,
        // Boxed, like the sleep below: both exist only once a retry happens, and keeping them
        // out of line keeps the future small (it is moved on every call).
        retries: Option<Box<Retries>>,
        // The logical call's id once known (`call::EMPTY` before): every attempt shares it.
        call: call::Slot,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Calling { #[pin] future: F },
        Waiting { sleep: Pin<Box<Sleep>> },
        Readying,
    }
}

/// When the attempt in flight started (`NOT_TIMED` for the first: it started with the call).
fn attempt_started(retries: &Option<Box<Retries>>) -> u64 {
    retries.as_ref().map_or(NOT_TIMED, |r| r.attempt_started)
}

/// Marks [`ResponseFuture`]'s `attempts` when the call's policy has a retry budget.
const BUDGETED: u64 = 1 << 63;

/// The attempt count in [`ResponseFuture`]'s `attempts`.
const COUNT: u64 = !BUDGETED;

impl<S, Req, C, R> ResponseFuture<S, Req, C, R>
where
    S: Service<Req>,
{
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        future: S::Future,
        service: S,
        kept: Option<Req>,
        classifier: C,
        replay: R,
        policy: Held,
        started: u64,
        budgeted: bool,
        call: call::Slot,
        spans: Spans,
    ) -> Self {
        let attempts = if budgeted { BUDGETED } else { 0 };
        ResponseFuture {
            state: State::Calling { future },
            service,
            kept,
            classifier,
            replay,
            policy,
            attempts,
            started,
            spans,
            retries: None,
            call,
        }
    }
}

impl<S, Req, C, R> Future for ResponseFuture<S, Req, C, R>
where
    S: Service<Req>,
    S::Error: Into<BoxError> + 'static,
    C: Classify<S::Response, S::Error>,
    R: Replay<Req>,
{
    type Output = Result<S::Response, BoxError>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // The attempts and the events are made inside the logical call (its id kept here),
        // and inside its span.
        let _span = self.spans.enter_call();
        let mut slot = *self.as_mut().project().call;
        let out = call::within(&mut slot, || self.as_mut().attempt(cx));
        *self.project().call = slot;
        out
    }
}

impl<S, Req, C, R> ResponseFuture<S, Req, C, R>
where
    S: Service<Req>,
    S::Error: Into<BoxError> + 'static,
    C: Classify<S::Response, S::Error>,
    R: Replay<Req>,
{
    /// Polls the attempt in flight; a success (the common case) returns here, inlined in the
    /// caller's poll. A failure, a wait and the next attempt go through [`Self::after`].
    #[inline]
    fn attempt(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<S::Response, BoxError>> {
        loop {
            let this = self.as_mut().project();
            let StateProj::Calling { future } = this.state.project() else {
                ready!(self.as_mut().resend(cx))?;
                continue;
            };
            let _attempt = this.spans.enter_attempt();
            let result = ready!(future.poll(cx));
            let outcome = this.classifier.classify(result.as_ref());
            if *this.attempts & BUDGETED != 0
                && let Some(budget) = &this.policy.budget
            {
                budget.record_outcome(!outcome.is_failure());
            }
            if !outcome.is_failure() {
                if *this.started != NOT_TIMED {
                    this.policy
                        .ended(*this.started, attempt_started(this.retries));
                }
                #[cfg(feature = "tracing")]
                this.spans.end((*this.attempts & COUNT) + 1, None);
                return Poll::Ready(result.map_err(Into::into));
            }
            if let Some(done) = self.as_mut().after(result, &outcome) {
                return Poll::Ready(done);
            }
        }
    }

    /// After a failed attempt: the result to return, or `None` when a retry is waiting.
    #[inline(never)]
    fn after(
        self: Pin<&mut Self>,
        result: Result<S::Response, S::Error>,
        outcome: &crate::classify::Outcome,
    ) -> Option<Result<S::Response, BoxError>> {
        let mut this = self.project();
        // Counted here, off the success path: only a failure's next step needs the count.
        *this.attempts += 1;
        let attempts = u32::try_from(*this.attempts & COUNT).unwrap_or(u32::MAX);
        let policy = &**this.policy;
        // One question for both breaker modes: a `CircuitOpen` error, or the 503 a breaker in
        // `respond_http` mode answers (marked in its extensions).
        let open = this.classifier.is_refused(result.as_ref());
        #[cfg(feature = "tracing")]
        let error_type = if open {
            "circuit_open".into()
        } else if let Some(named) = this.classifier.error_type(result.as_ref()) {
            named
        } else if result.is_err() {
            std::any::type_name::<S::Error>().into()
        } else {
            std::borrow::Cow::Borrowed("_OTHER")
        };
        #[cfg(not(feature = "tracing"))]
        let error_type = std::borrow::Cow::Borrowed("");
        match policy.next(
            attempts,
            outcome,
            open,
            this.kept.is_some(),
            *this.started,
            this.retries,
        ) {
            Next::Stop(reason) => {
                if let Some(reason) = reason {
                    policy.gave_up(attempts, reason);
                }
                policy.ended(*this.started, attempt_started(this.retries));
                this.spans.end(u64::from(attempts), Some(&error_type));
                Some(result.map_err(Into::into))
            }
            Next::Wait(delay, cause) => {
                policy.attempt_ended(*this.started, attempt_started(this.retries));
                policy.retrying(attempts, delay, cause, result.is_err());
                this.spans.attempt_failed(&error_type);
                this.state.set(State::Waiting {
                    sleep: Box::pin(tokio::time::sleep(delay)),
                });
                None
            }
        }
    }

    /// Waits out the delay, then sends the next attempt: ready once it is in flight.
    #[inline(never)]
    fn resend(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling { .. } => return Poll::Ready(Ok(())),
                StateProj::Waiting { sleep } => {
                    ready!(sleep.as_mut().poll(cx));
                    this.state.set(State::Readying);
                }
                StateProj::Readying => {
                    if let Err(e) = ready!(this.service.poll_ready(cx)) {
                        return Poll::Ready(Err(e.into()));
                    }
                    let last = (*this.attempts & COUNT) + 1 >= u64::from(this.policy.max_attempts);
                    // The final attempt sends the kept request itself: one copy fewer.
                    let copy = if last {
                        None
                    } else {
                        this.kept.as_ref().and_then(|k| this.replay.replay(k))
                    };
                    let req = match copy {
                        Some(req) => req,
                        None => this.kept.take().expect("a retry always has a kept request"),
                    };
                    let started = this.policy.attempted();
                    if let Some(r) = this.retries.as_mut() {
                        r.attempt_started = started;
                    }
                    // Sent inside the new attempt's span, like the first.
                    let _span = this.spans.resend(*this.attempts & COUNT);
                    let future = this.service.call(req);
                    this.state.set(State::Calling { future });
                }
            }
        }
    }
}
