//! The retry service.

use std::task::{Context, Poll};

use tokio::time::Instant;
use tower_service::Service;

use tower_layer::Layer;

use super::{Replay, RetryLayer, future::ResponseFuture, reload::Source};
use crate::{BoxError, classify::Classify};

/// A service whose failed calls are retried. Made by [`RetryLayer`](super::RetryLayer).
pub struct Retry<S, C, R> {
    pub(crate) inner: S,
    pub(crate) policy: Source,
    pub(crate) classifier: C,
    pub(crate) replay: R,
}

impl<S: Clone, C: Clone, R: Clone> Clone for Retry<S, C, R> {
    fn clone(&self) -> Self {
        Retry {
            inner: self.inner.clone(),
            policy: self.policy.clone(),
            classifier: self.classifier.clone(),
            replay: self.replay.clone(),
        }
    }
}

impl<S: std::fmt::Debug, C, R> std::fmt::Debug for Retry<S, C, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retry")
            .field("inner", &self.inner)
            .field("name", &self.policy.name())
            .finish_non_exhaustive()
    }
}

impl<S, C: Clone, R: Clone> Retry<S, C, R> {
    /// `inner` retried by `layer`'s policy, classifier and replay, sharing its budget: the same
    /// as `layer.layer(inner)` (a retry layer is made by [`RetryLayer::builder`]).
    pub fn new(inner: S, layer: &RetryLayer<C, R>) -> Self {
        layer.layer(inner)
    }
}

impl<S, C, R> Retry<S, C, R> {
    inner_service_accessors!();
}

impl<S, C, R, Req> Service<Req> for Retry<S, C, R>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError> + 'static,
    C: Classify<S::Response, S::Error> + Clone,
    R: Replay<Req> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Req, C, R>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        // One version of the policy for the whole call, however it is reloaded meanwhile.
        let policy = self.policy.snapshot();
        // One look at how the version is held.
        let p: &super::policy::Policy = &policy;
        // Keep a copy only when another attempt is possible at all.
        let kept = if p.max_attempts > 1 {
            self.replay.replay(&req)
        } else {
            None
        };
        let budgeted = match &p.budget {
            Some(budget) => {
                budget.record_request(Instant::now);
                true
            }
            None => false,
        };
        let started = p.start();
        let spans = super::spans::Spans::start(&p.name);
        let mut call = crate::call::EMPTY;
        // The ready service makes this call; a clone goes with the future for any retry (it is
        // made ready again before one). Inside the first attempt's span.
        let future = {
            // Left in reverse order: the attempt's span, then the call's.
            let _call = spans.enter_call();
            let _attempt = spans.enter_attempt();
            crate::call::within(&mut call, || self.inner.call(req))
        };
        let service = self.inner.clone();
        ResponseFuture::new(
            future,
            service,
            kept,
            // The rules the call started with judge all its attempts (live error names are
            // pinned), as the policy above.
            <C as Classify<S::Response, S::Error>>::for_call(&self.classifier),
            self.replay.clone(),
            policy,
            started,
            budgeted,
            call,
            spans,
        )
    }
}
