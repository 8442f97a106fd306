//! The circuit-breaker service.

use std::{
    marker::PhantomData,
    sync::Arc,
    task::{Context, Poll},
};

use http::Response;
use tokio::time::Instant;
use tower_service::Service;

use super::{
    Breaker, CircuitOpen, Config,
    body::{BreakerBody, EndOfStream},
    future::{EndOfStreamFuture, Guard, ResponseFuture},
    select::{SelectBreaker, Single},
};
use crate::{
    BoxError,
    classify::{AnyError, Classify},
    mode::{RespondHttp, ResponseBody, ReturnError},
    stream::{Streamed, WrapBody},
};

/// A service guarded by a circuit breaker. Made by
/// [`CircuitBreakerLayer`](super::CircuitBreakerLayer); every clone shares the layer's breaker.
pub struct CircuitBreaker<S, C, M, P> {
    pub(crate) inner: S,
    pub(crate) picker: P,
    pub(crate) classifier: C,
    pub(crate) _mode: PhantomData<fn() -> M>,
}

impl<S: Clone, C: Clone, M, P: Clone> Clone for CircuitBreaker<S, C, M, P> {
    fn clone(&self) -> Self {
        CircuitBreaker {
            inner: self.inner.clone(),
            picker: self.picker.clone(),
            classifier: self.classifier.clone(),
            _mode: PhantomData,
        }
    }
}

impl<S: std::fmt::Debug, C, M, P> std::fmt::Debug for CircuitBreaker<S, C, M, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> CircuitBreaker<S, AnyError, ReturnError, Single> {
    /// `inner` guarded by a breaker of its own built from `config`: the same as
    /// [`CircuitBreakerLayer::new(config)`](super::CircuitBreakerLayer::new)`.layer(inner)`.
    /// Build the layer instead to share one breaker among services, steer it through a handle,
    /// or choose a classifier and a mode.
    pub fn new(inner: S, config: Config) -> Self {
        CircuitBreaker {
            inner,
            picker: Single(Arc::new(Breaker::new(config))),
            classifier: AnyError,
            _mode: PhantomData,
        }
    }
}

impl<S, C, M, P> CircuitBreaker<S, C, M, P> {
    inner_service_accessors!();

    /// Starts a call: a permitted one is handed to the inner service, a refused one becomes
    /// `reject(error)`.
    #[inline]
    fn start<Req, R>(
        &mut self,
        req: Req,
        reject: impl FnOnce(CircuitOpen) -> R,
    ) -> ResponseFuture<S::Future, C, R, P::Breaker>
    where
        S: Service<Req>,
        C: Clone,
        P: SelectBreaker<Req>,
    {
        let breaker = self.picker.select(&req);
        // The refusal or the call inside are made within the logical call: its events (and
        // those of the layers inside) carry its id.
        let mut call = crate::call::EMPTY;
        crate::call::within(&mut call, || match breaker.try_acquire(Instant::now) {
            Ok(permit) => {
                // Guard first: if the inner `call` panics, unwinding drops the guard and a
                // half-open probe permit comes back instead of being lost.
                let guard = Guard::new(breaker, permit);
                let future = self.inner.call(req);
                ResponseFuture::called(future, guard, self.classifier.clone())
            }
            Err(rejected) => ResponseFuture::rejected(reject(CircuitOpen::new(
                breaker.shared_name().clone(),
                rejected,
            ))),
        })
        .in_call(call)
    }
}

impl<S, C, P, Req> Service<Req> for CircuitBreaker<S, C, ReturnError, P>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error> + Clone,
    P: SelectBreaker<Req>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C, CircuitOpen, P::Breaker>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        self.start(req, |open| open)
    }
}

impl<S, C, P, Req, B> Service<Req> for CircuitBreaker<S, C, RespondHttp, P>
where
    S: Service<Req, Response = Response<B>>,
    B: ResponseBody,
    C: Classify<Response<B>, S::Error> + Clone,
    P: SelectBreaker<Req>,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, C, Response<B>, P::Breaker>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        self.start(req, |open| open.to_response())
    }
}

impl<S, C, P, Req> Service<Req> for CircuitBreaker<S, C, EndOfStream<ReturnError>, P>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    S::Response: WrapBody<BreakerBody<<S::Response as Streamed>::Body, C, P::Breaker>>,
    <S::Response as Streamed>::Body: http_body::Body,
    C: Classify<S::Response, S::Error> + Clone,
    P: SelectBreaker<Req>,
{
    type Response = <S::Response as WrapBody<
        BreakerBody<<S::Response as Streamed>::Body, C, P::Breaker>,
    >>::Output;
    type Error = BoxError;
    type Future = EndOfStreamFuture<S::Future, C, CircuitOpen, P::Breaker>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        EndOfStreamFuture::new(self.start(req, |open| open))
    }
}

impl<S, C, P, Req, B> Service<Req> for CircuitBreaker<S, C, EndOfStream<RespondHttp>, P>
where
    S: Service<Req, Response = Response<B>>,
    B: ResponseBody + http_body::Body,
    C: Classify<Response<B>, S::Error> + Clone,
    P: SelectBreaker<Req>,
{
    type Response = Response<BreakerBody<B, C, P::Breaker>>;
    type Error = S::Error;
    type Future = EndOfStreamFuture<S::Future, C, Response<B>, P::Breaker>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        EndOfStreamFuture::new(self.start(req, |open| open.to_response()))
    }
}
