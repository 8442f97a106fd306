//! The fallback layer, service and the kinds of fallback.

use std::{
    fmt,
    future::{Future, Ready, ready},
    marker::PhantomData,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use tower_layer::Layer;
use tower_service::Service;

use super::{
    Cause, Event, ResponseFuture, Trigger, Triggers, http_response_trigger, no_response_trigger,
};
use crate::{
    call::CallId,
    classify::{AnyError, Classify},
    mode::{AnyResponse, RecogniseHttp, ResponseBody},
    replay::Replay,
};

/// Produces the degraded response.
pub trait Fallback<Req, Res, E> {
    /// The future of the fallback response.
    type Future: Future<Output = Result<Res, E>>;

    /// A copy of the request to keep for the fallback, when it needs one.
    fn keep(&self, _req: &Req) -> Option<Req> {
        None
    }

    /// Whether the fallback needs the copy [`keep`](Self::keep) makes. When it does and no
    /// copy could be made, the layer does not call [`fallback`](Self::fallback): it returns
    /// the call's own outcome and reports [`EventKind::BackupSkipped`](super::EventKind).
    fn needs_request(&self) -> bool {
        false
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

/// A fixed HTTP response made by [`FallbackLayer::response`] or [`FallbackLayer::json`]: its
/// status, headers and body are shared by every call (the body as [`Bytes`], never copied), and
/// each fallback builds a fresh `http::Response<B>` for any body `B` that implements
/// [`ResponseBody`] (axum's `Body`, `Full<Bytes>`, `String`...).
#[derive(Clone)]
pub struct ResponseFallback(Arc<Canned>);

struct Canned {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl ResponseFallback {
    /// The response's status.
    pub fn status(&self) -> StatusCode {
        self.0.status
    }

    /// The response's headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.0.headers
    }

    /// The response's body.
    pub fn body(&self) -> &Bytes {
        &self.0.body
    }
}

impl fmt::Debug for ResponseFallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFallback")
            .field("status", &self.0.status)
            .field("headers", &self.0.headers)
            .field("body_len", &self.0.body.len())
            .finish()
    }
}

impl<Req, B: ResponseBody, E> Fallback<Req, Response<B>, E> for ResponseFallback {
    type Future = Ready<Result<Response<B>, E>>;

    fn fallback(&mut self, _: Cause<Response<B>, E>, _: Option<Req>) -> Self::Future {
        // The body is a reference count on the shared bytes; only the header map is copied.
        let mut res = Response::new(B::from_bytes(self.0.body.clone()));
        *res.status_mut() = self.0.status;
        *res.headers_mut() = self.0.headers.clone();
        ready(Ok(res))
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

/// Another service, called with a copy of the request made by a [`Replay`] (see
/// [`FallbackLayer::service`]).
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

    fn needs_request(&self) -> bool {
        true
    }

    fn fallback(&mut self, cause: Cause<Res, E>, req: Option<Req>) -> Self::Future {
        match req {
            Some(req) => ServiceCall::new(self.service.clone(), req),
            // No copy of the request could be made: the original outcome stands. (The layer
            // does not get here: it sees `needs_request` and reports the skip itself.)
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
    events: Listener,
    _mode: PhantomData<fn() -> M>,
}

/// The layer's event listener, if any: calls copy a pointer only when one is set.
pub(crate) type Listener = crate::listener::Listener<Event>;

impl Listener {
    /// Reports `kind` for `trigger`, inside the fallback future's poll: the call's id is drawn
    /// (when nothing drew it before) only for a listener or `tracing`.
    #[inline]
    pub(crate) fn emit(&self, trigger: Trigger, kind: super::EventKind) {
        #[cfg(feature = "tracing")]
        {
            let call_id = CallId::current().map(CallId::get);
            match kind {
                super::EventKind::FellBack => {
                    tracing::debug!(call_id, trigger = ?trigger, "fallback answered");
                }
                super::EventKind::BackupSkipped => tracing::warn!(
                    call_id,
                    trigger = ?trigger,
                    "fallback skipped: the request could not be copied for the backup service"
                ),
            }
        }
        if let Some(f) = &self.0
            && let Some(call) = CallId::current()
        {
            f(&Event {
                call,
                trigger,
                kind,
            });
        }
    }
}

impl<T> FallbackLayer<ValueFallback<T>> {
    /// Falls back to a clone of `value`, which must be `Clone`: an `http::Response` is not,
    /// so a fixed HTTP answer is [`response`](FallbackLayer::response) or
    /// [`json`](FallbackLayer::json). Triggers: circuit open and timeouts, until
    /// [`on`](Self::on) says otherwise.
    pub fn value(value: T) -> Self {
        FallbackLayer::with(ValueFallback(Arc::new(value)))
    }
}

impl FallbackLayer<ResponseFallback> {
    /// Falls back to a fixed HTTP response: `status`, `headers` and `body`, for services
    /// answering `http::Response<B>` with any body `B` that implements [`ResponseBody`]
    /// (`axum::body::Body`, `Full<Bytes>`, `String`, `tonic::body::Body`...). The body is
    /// shared as [`Bytes`]: a fallback copies a pointer to it, never the bytes. Triggers:
    /// circuit open and timeouts, until [`on`](Self::on) says otherwise.
    ///
    /// ```
    /// use http::{HeaderMap, StatusCode, header};
    /// use tower_rampart::fallback::FallbackLayer;
    ///
    /// let mut headers = HeaderMap::new();
    /// headers.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
    /// headers.insert(header::CACHE_CONTROL, "no-store".parse().unwrap());
    /// let layer = FallbackLayer::response(StatusCode::OK, headers, "41.80 (cached)");
    /// # let _ = layer;
    /// ```
    pub fn response(status: StatusCode, headers: HeaderMap, body: impl Into<Bytes>) -> Self {
        FallbackLayer::with(ResponseFallback(Arc::new(Canned {
            status,
            headers,
            body: body.into(),
        })))
    }

    /// Falls back to a fixed JSON response: `status`, `Content-Type: application/json` and
    /// `body` (not checked to be JSON). The same as [`response`](Self::response) with that one
    /// header.
    ///
    /// ```
    /// use http::StatusCode;
    /// use tower_rampart::fallback::{FallbackLayer, Trigger};
    ///
    /// let layer = FallbackLayer::json(StatusCode::OK, r#"{"price":"41.80","stale":true}"#)
    ///     .on(&[Trigger::CircuitOpen, Trigger::Timeout])
    ///     .recognise_http();
    /// # let _ = layer;
    /// ```
    pub fn json(status: StatusCode, body: impl Into<Bytes>) -> Self {
        let mut headers = HeaderMap::with_capacity(1);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        FallbackLayer::response(status, headers, body)
    }
}

impl<F> FallbackLayer<FnFallback<F>> {
    /// Falls back to `f(cause)`. Triggers: circuit open and timeouts, until [`on`](Self::on)
    /// says otherwise.
    pub fn from_fn(f: F) -> Self {
        FallbackLayer::with(FnFallback(f))
    }
}

impl<S, R> FallbackLayer<ServiceFallback<S, R>> {
    /// Falls back to calling the backup `service` with a copy of the request, made by `replay`
    /// when the call starts (the primary consumes the original). The copy rule is yours to
    /// choose, because the primary may have acted on the request before it failed:
    ///
    /// | `replay` | the backup is called for |
    /// |---|---|
    /// | [`CloneRequest`](crate::replay::CloneRequest) | every request (`Req: Clone`, non-HTTP services) |
    /// | [`HttpReplay::default()`](crate::replay::HttpReplay) | GET, HEAD, OPTIONS, PUT, DELETE, TRACE, and POST / PATCH with an `Idempotency-Key`, with bodies in memory |
    /// | [`HttpReplay::any_method()`](crate::replay::HttpReplay::any_method) | every HTTP request with a body in memory: for a backup that tolerates duplicates |
    /// | [`GrpcReplay`](crate::replay::GrpcReplay) | every gRPC call except the methods marked `never` |
    ///
    /// When a trigger matches but `replay` gave no copy (a POST without a key under
    /// `HttpReplay::default()`, a streaming body), the backup is not called: the call's own
    /// outcome is returned and the layer reports [`EventKind::BackupSkipped`](super::EventKind)
    /// to [`on_event`](Self::on_event) listeners (and, with the `tracing` feature, as a
    /// warning). Triggers: circuit open and timeouts, until [`on`](Self::on) says otherwise.
    ///
    /// ```
    /// use tower::{Service, ServiceExt};
    /// use tower_rampart::{fallback::{FallbackLayer, Trigger}, replay::CloneRequest};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let backup = tower::service_fn(|n: u32| async move { Ok::<_, &str>(n * 10) });
    /// let mut svc = tower::ServiceBuilder::new()
    ///     .layer(FallbackLayer::service(backup, CloneRequest).on(&[Trigger::Error]))
    ///     .service_fn(|_: u32| async { Err::<u32, _>("primary down") });
    /// assert_eq!(svc.ready().await.unwrap().call(4).await, Ok(40));
    /// # }
    /// ```
    pub fn service(service: S, replay: R) -> Self {
        FallbackLayer::with(ServiceFallback { service, replay })
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
            events: Listener::default(),
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

    /// Calls `listener` with every [`Event`]: each fallback answer, and each backup call
    /// skipped because the request could not be copied. Listeners add up; they run on the
    /// calling task, so keep them short.
    pub fn on_event(mut self, listener: impl Fn(&Event) + Send + Sync + 'static) -> Self {
        self.events = self.events.and(listener);
        self
    }

    /// Decides which `Ok` responses are failures (for [`Trigger::Failure`]).
    pub fn classify<C2>(self, classifier: C2) -> FallbackLayer<F, C2, M> {
        FallbackLayer {
            fallback: self.fallback,
            classifier,
            triggers: self.triggers,
            events: self.events,
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
            events: self.events,
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
            events: self.events.clone(),
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
    events: Listener,
    _mode: PhantomData<fn() -> M>,
}

impl<S: Clone, F: Clone, C: Clone, M> Clone for FallbackService<S, F, C, M> {
    fn clone(&self) -> Self {
        FallbackService {
            inner: self.inner.clone(),
            fallback: self.fallback.clone(),
            classifier: self.classifier.clone(),
            triggers: self.triggers,
            events: self.events.clone(),
            _mode: PhantomData,
        }
    }
}

impl<S, F: Clone, C: Clone, M> FallbackService<S, F, C, M> {
    /// `inner` with `layer`'s fallback, classifier, triggers and mode: the same as
    /// `layer.layer(inner)` (a fallback layer is made by [`FallbackLayer::value`],
    /// [`FallbackLayer::response`], [`FallbackLayer::json`], [`FallbackLayer::from_fn`],
    /// [`FallbackLayer::service`] or
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
        let mut call = crate::call::EMPTY;
        let future = crate::call::within(&mut call, || self.inner.call(req));
        ResponseFuture::new(
            future,
            call,
            self.fallback.clone(),
            self.classifier.clone(),
            self.triggers,
            self.events.clone(),
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
