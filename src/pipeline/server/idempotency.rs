//! The server pipeline's Idempotency-Key stage: the Idempotency-Key layer, with its response
//! bodies boxed so that the pipeline's timeout and breaker can answer in the same body type.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, combinators::UnsyncBoxBody};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::{
    BoxError,
    idempotency::{Idempotency, IdempotencyLayer},
};

/// The Idempotency-Key stage of a [`StandardServerLayer`](super::StandardServerLayer), set
/// with [`ServerBuilder::idempotency`](super::ServerBuilder::idempotency): the
/// [`IdempotencyLayer`] it was given, its response bodies boxed (an
/// `UnsyncBoxBody<Bytes, BoxError>`, which the timeout's 504 and the breaker's 503 are built
/// in). It sits inside the pipeline's timeout and breaker, around the handler.
///
/// ```
/// use tower_rampart::{idempotency::IdempotencyLayer, pipeline::StandardServerLayer};
///
/// # fn main() -> Result<(), tower_rampart::ConfigError> {
/// let layer = StandardServerLayer::builder()
///     .idempotency(IdempotencyLayer::builder().global_keys().build()?)
///     .build()?;
/// let app: axum::Router = axum::Router::new()
///     .route("/payments", axum::routing::post(|| async { "paid" }))
///     .layer(layer);
/// # let _ = app;
/// # Ok(())
/// # }
/// ```
pub struct IdempotencyStage<St> {
    layer: IdempotencyLayer<St>,
}

impl<St> IdempotencyStage<St> {
    /// The stage of `layer`.
    pub fn new(layer: IdempotencyLayer<St>) -> Self {
        IdempotencyStage { layer }
    }

    /// The Idempotency-Key layer.
    pub fn idempotency_layer(&self) -> &IdempotencyLayer<St> {
        &self.layer
    }
}

impl<St> Clone for IdempotencyStage<St> {
    fn clone(&self) -> Self {
        IdempotencyStage {
            layer: self.layer.clone(),
        }
    }
}

impl<St> fmt::Debug for IdempotencyStage<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("IdempotencyStage")
            .field(&self.layer)
            .finish()
    }
}

impl<S, St> Layer<S> for IdempotencyStage<St> {
    type Service = IdempotencyStageService<S, St>;

    fn layer(&self, inner: S) -> Self::Service {
        IdempotencyStageService {
            inner: self.layer.layer(inner),
        }
    }
}

/// The service of an [`IdempotencyStage`]: an [`Idempotency`] service whose response bodies
/// are boxed.
///
/// ```
/// use tower::{Layer, ServiceExt};
/// use tower_rampart::{idempotency::IdempotencyLayer, pipeline::IdempotencyStage};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_rampart::BoxError> {
/// let stage = IdempotencyStage::new(IdempotencyLayer::builder().global_keys().build()?);
/// let svc = stage.layer(tower::service_fn(|_: http::Request<_>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("paid")))
/// }));
/// let req = http::Request::post("/payments")
///     .header("idempotency-key", "\"k1\"")
///     .body(String::new())?;
/// let res = svc.oneshot(req).await?;
/// assert_eq!(res.status(), 200);
/// # Ok(())
/// # }
/// ```
pub struct IdempotencyStageService<S, St> {
    inner: Idempotency<S, St>,
}

impl<S: Clone, St> Clone for IdempotencyStageService<S, St> {
    fn clone(&self) -> Self {
        IdempotencyStageService {
            inner: self.inner.clone(),
        }
    }
}

impl<S: fmt::Debug, St> fmt::Debug for IdempotencyStageService<S, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyStageService")
            .field("inner", &self.inner)
            .finish()
    }
}

impl<S, St, ReqB, ResB> Service<Request<ReqB>> for IdempotencyStageService<S, St>
where
    Idempotency<S, St>: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<UnsyncBoxBody<Bytes, BoxError>>;
    type Error = <Idempotency<S, St> as Service<Request<ReqB>>>::Error;
    type Future = IdempotencyStageFuture<<Idempotency<S, St> as Service<Request<ReqB>>>::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        IdempotencyStageFuture {
            inner: self.inner.call(req),
        }
    }
}

pin_project! {
    /// The future of an [`IdempotencyStageService`]: the Idempotency-Key service's answer, its
    /// body boxed.
    ///
    /// ```
    /// use tower::{Layer, Service, ServiceExt};
    /// use tower_rampart::{
    ///     idempotency::IdempotencyLayer,
    ///     pipeline::{IdempotencyStage, IdempotencyStageFuture},
    /// };
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_rampart::BoxError> {
    /// let stage = IdempotencyStage::new(IdempotencyLayer::builder().global_keys().build()?);
    /// let mut svc = stage.layer(tower::service_fn(|_: http::Request<_>| async {
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("listed")))
    /// }));
    /// // A GET is not keyed: it passes through.
    /// let fut: IdempotencyStageFuture<_> = svc.ready().await?.call(http::Request::new(String::new()));
    /// assert_eq!(fut.await?.status(), 200);
    /// # Ok(())
    /// # }
    /// ```
    pub struct IdempotencyStageFuture<Fut> {
        #[pin]
        inner: Fut,
    }
}

impl<Fut> fmt::Debug for IdempotencyStageFuture<Fut> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyStageFuture")
            .finish_non_exhaustive()
    }
}

impl<Fut, B, E> Future for IdempotencyStageFuture<Fut>
where
    Fut: Future<Output = Result<Response<B>, E>>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<UnsyncBoxBody<Bytes, BoxError>>, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project()
            .inner
            .poll(cx)
            .map_ok(|res| res.map(|b| b.map_err(Into::into).boxed_unsync()))
    }
}
