//! The fallback future: the call, then (when a trigger matches) the fallback.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use pin_project_lite::pin_project;
use tower_service::Service;

use super::{Cause, EventKind, Fallback, Trigger, Triggers, error_trigger, layer::Listener};
use crate::{call, classify::Classify};

pin_project! {
    /// The future of [`FallbackService`](super::FallbackService).
    pub struct ResponseFuture<Fut, F, C, Req, Res, E>
    where
        F: Fallback<Req, Res, E>,
    {
        #[pin]
        state: State<Fut, F::Future>,
        fallback: F,
        classifier: C,
        triggers: Triggers,
        events: Listener,
        kept: Option<Req>,
        inspect: fn(&Res) -> Option<Trigger>,
        // The logical call's id once known (`call::EMPTY` before), for the events.
        call: call::Slot,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<Fut, FF> {
        Calling { #[pin] future: Fut },
        Falling { #[pin] future: FF },
    }
}

impl<Fut, F, C, Req, Res, E> ResponseFuture<Fut, F, C, Req, Res, E>
where
    F: Fallback<Req, Res, E>,
{
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        future: Fut,
        call: call::Slot,
        fallback: F,
        classifier: C,
        triggers: Triggers,
        events: Listener,
        kept: Option<Req>,
        inspect: fn(&Res) -> Option<Trigger>,
    ) -> Self {
        ResponseFuture {
            state: State::Calling { future },
            fallback,
            classifier,
            triggers,
            events,
            kept,
            inspect,
            call,
        }
    }
}

impl<Fut, F, C, Req, Res, E> Future for ResponseFuture<Fut, F, C, Req, Res, E>
where
    Fut: Future<Output = Result<Res, E>>,
    F: Fallback<Req, Res, E>,
    C: Classify<Res, E>,
    Res: 'static,
    E: 'static,
{
    type Output = Result<Res, E>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // The call and the fallback are polled inside the logical call (its id kept here).
        let mut slot = *self.as_mut().project().call;
        let out = call::within(&mut slot, || self.as_mut().step(cx));
        *self.project().call = slot;
        out
    }
}

impl<Fut, F, C, Req, Res, E> ResponseFuture<Fut, F, C, Req, Res, E>
where
    Fut: Future<Output = Result<Res, E>>,
    F: Fallback<Req, Res, E>,
    C: Classify<Res, E>,
    Res: 'static,
    E: 'static,
{
    fn step(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Res, E>> {
        loop {
            let mut this = self.as_mut().project();
            match this.state.as_mut().project() {
                StateProj::Falling { future } => return future.poll(cx),
                StateProj::Calling { future } => {
                    let result = ready!(future.poll(cx));
                    // A breaker's refusal is recognised the way every layer recognises it, by
                    // the classifier (`is_refused`: its error, or the mark on its 503), and
                    // also by the mark alone in `recognise_http` mode.
                    let trigger = if this.classifier.is_refused(result.as_ref()) {
                        Some(Trigger::CircuitOpen)
                    } else {
                        match &result {
                            Err(e) => Some(error_trigger(e)),
                            Ok(res) => (this.inspect)(res).or_else(|| {
                                this.classifier
                                    .classify(Ok(res))
                                    .is_failure()
                                    .then_some(Trigger::Failure)
                            }),
                        }
                    };
                    let Some(trigger) = trigger.filter(|t| this.triggers.contains(*t)) else {
                        return Poll::Ready(result);
                    };
                    if this.kept.is_none() && this.fallback.needs_request() {
                        // The replay rule gave no copy of the request: the backup is not
                        // called, and the skip is reported rather than silent.
                        this.events.emit(trigger, EventKind::BackupSkipped);
                        return Poll::Ready(result);
                    }
                    this.events.emit(trigger, EventKind::FellBack);
                    let future = this
                        .fallback
                        .fallback(Cause::new(trigger, result), this.kept.take());
                    this.state.set(State::Falling { future });
                }
            }
        }
    }
}

pin_project! {
    /// The future of a [`ServiceFallback`](super::ServiceFallback): ready the service, call it.
    ///
    /// # Panics
    ///
    /// When polled again after it completed without calling the service.
    pub struct ServiceCall<S, Req>
    where
        S: Service<Req>,
    {
        #[pin]
        state: CallState<S::Future>,
        service: S,
        req: Option<Req>,
        done: Option<Result<S::Response, S::Error>>,
    }
}

pin_project! {
    #[project = CallProj]
    enum CallState<Fut> {
        Readying,
        Calling { #[pin] future: Fut },
        Done,
    }
}

impl<S: Service<Req>, Req> ServiceCall<S, Req> {
    pub(crate) fn new(service: S, req: Req) -> Self {
        ServiceCall {
            state: CallState::Readying,
            service,
            req: Some(req),
            done: None,
        }
    }
}

impl<S: Service<Req> + Clone, Req> ServiceCall<S, Req> {
    pub(crate) fn done_with(service: S, out: Result<S::Response, S::Error>) -> Self {
        ServiceCall {
            state: CallState::Done,
            service,
            req: None,
            done: Some(out),
        }
    }
}

impl<S: Service<Req>, Req> Future for ServiceCall<S, Req> {
    type Output = Result<S::Response, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            match this.state.as_mut().project() {
                CallProj::Done => {
                    return Poll::Ready(this.done.take().expect("polled after completion"));
                }
                CallProj::Calling { future } => return future.poll(cx),
                CallProj::Readying => {
                    ready!(this.service.poll_ready(cx))?;
                    let req = this.req.take().expect("request present until called");
                    let future = this.service.call(req);
                    this.state.set(CallState::Calling { future });
                }
            }
        }
    }
}
