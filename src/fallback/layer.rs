//! The fallback layer, service and the kinds of fallback.

use std::{
    future::{Future, Ready, ready},
    marker::PhantomData,
    sync::Arc,
    task::{Context, Poll},
};

use tower_layer::Layer;
use tower_service::Service;

use super::{Cause, ResponseFuture, Trigger, Triggers, http_response_trigger, no_response_trigger};
use crate::{
    classify::{AnyError, Classify},
    mode::{AnyResponse, RecogniseHttp},
    replay::{CloneRequest, Replay},
};

/// Produces the degraded response.
pub trait Fallback<Req, Res, E> {
    /// The future of the fallback response.
    type Future: Future<Output = Result<Res, E>>;

    /// A copy of the request to keep for the fallback, when it needs one.
    fn keep(&self, _req: &Req) -> Option<Req> {
        None
    }

    /// The fallback for `cause`, with the kept request.
    fn fallback(&mut self, cause: Cause<Res, E>, req: Option<Req>) -> Self::Future;
}

/// A fixed value, cloned when the fallback runs. Every call's future holds the fallback, so the
/// value sits behind an `Arc`: calls that succeed copy a pointer, not the value.
#[derive(Debug)]
pub struct ValueFallback<T>(Arc<T>);

impl<T> Clone for ValueFallback<T> {
    fn clone(&self) -> Self {
        ValueFallback(self.0.clone())
    }
}

impl<Req, Res: Clone, E> Fallback<Req, Res, E> for ValueFallback<Res> {
    type Future = Ready<Result<Res, E>>;

    fn fallback(&mut self, _: Cause<Res, E>, _: Option<Req>) -> Self::Future {
        ready(Ok((*self.0).clone()))
    }
}

/// A function of the cause. The function is cloned into every call's future: keep what it
/// captures cheap to clone (or behind an `Arc`).
#[derive(Debug, Clone)]
pub struct FnFallback<F>(F);

impl<Req, Res, E, F> Fallback<Req, Res, E> for FnFallback<F>
where
    F: FnMut(Cause<Res, E>) -> Res,
{
    type Future = Ready<Result<Res, E>>;

    fn fallback(&mut self, cause: Cause<Res, E>, _: Option<Req>) -> Self::Future {
        ready(Ok((self.0)(cause)))
    }
}

/// Another service, called with a copy of the request made by a [`Replay`].
#[derive(Debug, Clone)]
pub struct ServiceFallback<S, R> {
    service: S,
    replay: R,
}

impl<Req, Res, E, S, R> Fallback<Req, Res, E> for ServiceFallback<S, R>
where
    S: Service<Req, Response = Res, Error = E> + Clone,
    R: Replay<Req>,
{
    type Future = ServiceCall<S, Req>;

    fn keep(&self, req: &Req) -> Option<Req> {
        self.replay.replay(req)
    }

    fn fallback(&mut self, cause: Cause<Res, E>, req: Option<Req>) -> Self::Future {
        match req {
            Some(req) => ServiceCall::new(self.service.clone(), req),
            // No copy of the request could be made: the original outcome stands.
            None => ServiceCall::done_with(self.service.clone(), cause.into_outcome()),
        }
    }
}

use super::future::ServiceCall;

/// Turns chosen failures into a fallback response.
///
/// ```
/// use tower::{Service, ServiceBuilder, ServiceExt};
/// use tower_rampart::fallback::{FallbackLayer, Trigger};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let mut svc = ServiceBuilder::new()
///     .layer(FallbackLayer::value("default").on(&[Trigger::Error]))
///     .service_fn(|fail: bool| async move { if fail { Err("boom") } else { Ok("fresh") } });
/// assert_eq!(svc.ready().await.unwrap().call(true).await, Ok("default"));
/// assert_eq!(svc.ready().await.unwrap().call(false).await, Ok("fresh"));
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct FallbackLayer<F, C = AnyError, M = AnyResponse> {
    fallback: F,
    classifier: C,
    triggers: Triggers,
    _mode: PhantomData<fn() -> M>,
}

impl<T> FallbackLayer<ValueFallback<T>> {
    /// Falls back to a clone of `value`. Triggers: circuit open and timeouts, until
    /// [`on`](Self::on) says otherwise.
    pub fn value(value: T) -> Self {
        FallbackLayer::with(ValueFallback(Arc::new(value)))
    }
}

impl<F> FallbackLayer<FnFallback<F>> {
    /// Falls back to `f(cause)`. Triggers: circuit open and timeouts, until [`on`](Self::on)
    /// says otherwise.
    pub fn from_fn(f: F) -> Self {
        FallbackLayer::with(FnFallback(f))
    }
}

impl<S> FallbackLayer<ServiceFallback<S, CloneRequest>> {
    /// Falls back to calling `service` with a clone of the request. Triggers: circuit open and
    /// timeouts, until [`on`](Self::on) says otherwise.
    pub fn service(service: S) -> Self {
        FallbackLayer::with(ServiceFallback {
            service,
            replay: CloneRequest,
        })
    }
}

impl<S, R, C, M> FallbackLayer<ServiceFallback<S, R>, C, M> {
    /// Copies requests for the fallback service with `replay` (e.g.
    /// [`HttpReplay::any_method`](crate::replay::HttpReplay::any_method)).
    pub fn replay<R2>(self, replay: R2) -> FallbackLayer<ServiceFallback<S, R2>, C, M> {
        FallbackLayer {
            fallback: ServiceFallback {
                service: self.fallback.service,
                replay,
            },
            classifier: self.classifier,
            triggers: self.triggers,
            _mode: PhantomData,
        }
    }
}

impl<F> FallbackLayer<F> {
    /// A layer around any [`Fallback`]. Triggers: circuit open and timeouts, until
    /// [`on`](Self::on) says otherwise.
    pub fn with_fallback(fallback: F) -> Self {
        FallbackLayer::with(fallback)
    }

    pub(crate) fn into_fallback(self) -> F {
        self.fallback
    }

    fn with(fallback: F) -> Self {
        FallbackLayer {
            fallback,
            classifier: AnyError,
            triggers: Triggers::from_list(&[Trigger::CircuitOpen, Trigger::Timeout]),
            _mode: PhantomData,
        }
    }
}

impl<F, C, M> FallbackLayer<F, C, M> {
    /// Exactly these triggers. Each outcome matches one trigger, the most specific: a
    /// breaker's 503 is `CircuitOpen`, not `Failure`.
    pub fn on(mut self, triggers: &[Trigger]) -> Self {
        self.triggers = Triggers::from_list(triggers);
        self
    }

    /// Decides which `Ok` responses are failures (for [`Trigger::Failure`]).
    pub fn classify<C2>(self, classifier: C2) -> FallbackLayer<F, C2, M> {
        FallbackLayer {
            fallback: self.fallback,
            classifier,
            triggers: self.triggers,
            _mode: PhantomData,
        }
    }

    /// For `http::Response`s: recognise the breaker's 503 and the timeout's 504 / gRPC
    /// responses (layers in [`RespondHttp`](crate::mode::RespondHttp) or
    /// [`RespondGrpc`](crate::mode::RespondGrpc) mode) as [`Trigger::CircuitOpen`] and
    /// [`Trigger::Timeout`].
    pub fn recognise_http(self) -> FallbackLayer<F, C, RecogniseHttp> {
        FallbackLayer {
            fallback: self.fallback,
            classifier: self.classifier,
            triggers: self.triggers,
            _mode: PhantomData,
        }
    }
}

impl<S, F: Clone, C: Clone, M> Layer<S> for FallbackLayer<F, C, M> {
    type Service = FallbackService<S, F, C, M>;

    fn layer(&self, inner: S) -> Self::Service {
        FallbackService {
            inner,
            fallback: self.fallback.clone(),
            classifier: self.classifier.clone(),
            triggers: self.triggers,
            _mode: PhantomData,
        }
    }
}

/// The service of [`FallbackLayer`].
#[derive(Debug)]
pub struct FallbackService<S, F, C, M> {
    inner: S,
    fallback: F,
    classifier: C,
    triggers: Triggers,
    _mode: PhantomData<fn() -> M>,
}

impl<S: Clone, F: Clone, C: Clone, M> Clone for FallbackService<S, F, C, M> {
    fn clone(&self) -> Self {
        FallbackService {
            inner: self.inner.clone(),
            fallback: self.fallback.clone(),
            classifier: self.classifier.clone(),
            triggers: self.triggers,
            _mode: PhantomData,
        }
    }
}

impl<S, F: Clone, C: Clone, M> FallbackService<S, F, C, M> {
    /// `inner` with `layer`'s fallback, classifier, triggers and mode: the same as
    /// `layer.layer(inner)` (a fallback layer is made by [`FallbackLayer::value`],
    /// [`FallbackLayer::from_fn`], [`FallbackLayer::service`] or
    /// [`FallbackLayer::with_fallback`]).
    pub fn new(inner: S, layer: &FallbackLayer<F, C, M>) -> Self {
        layer.layer(inner)
    }
}

impl<S, F, C, M> FallbackService<S, F, C, M> {
    inner_service_accessors!();

    fn start<Req>(
        &mut self,
        req: Req,
        inspect: fn(&S::Response) -> Option<Trigger>,
    ) -> ResponseFuture<S::Future, F, C, Req, S::Response, S::Error>
    where
        S: Service<Req>,
        F: Fallback<Req, S::Response, S::Error> + Clone,
        C: Clone,
    {
        let kept = self.fallback.keep(&req);
        ResponseFuture::new(
            self.inner.call(req),
            self.fallback.clone(),
            self.classifier.clone(),
            self.triggers,
            kept,
            inspect,
        )
    }
}

/// How a fallback mode recognises the responses our own layers made (a breaker's 503, a
/// timeout's 504): [`AnyResponse`] never does, [`RecogniseHttp`] reads their marks.
pub trait ResponseMarks<Res> {
    /// The trigger a response made by one of our layers matches, if it is one.
    fn trigger(res: &Res) -> Option<Trigger>;
}

impl<Res> ResponseMarks<Res> for AnyResponse {
    fn trigger(res: &Res) -> Option<Trigger> {
        no_response_trigger(res)
    }
}

impl<B> ResponseMarks<http::Response<B>> for RecogniseHttp {
    fn trigger(res: &http::Response<B>) -> Option<Trigger> {
        http_response_trigger(res)
    }
}

impl<S, F, C, M, Req> Service<Req> for FallbackService<S, F, C, M>
where
    S: Service<Req>,
    S::Error: 'static,
    S::Response: 'static,
    F: Fallback<Req, S::Response, S::Error> + Clone,
    C: Classify<S::Response, S::Error> + Clone,
    M: ResponseMarks<S::Response>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, F, C, Req, S::Response, S::Error>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        self.start(req, M::trigger)
    }
}
