//! The Idempotency-Key service: prepare the request, claim its key, then replay, refuse, or run
//! the handler as the key's owner.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use super::{
    Claim, Store,
    claim::{claim_key, store_failed, taken},
    layer::Settings,
    owner,
    request::{Prepared, prepare},
};
use crate::{BoxError, replay::Buffered};

/// The service of [`IdempotencyLayer`](super::IdempotencyLayer).
pub struct Idempotency<S, St> {
    pub(crate) inner: S,
    pub(crate) settings: Arc<Settings<St>>,
}

impl<S, St> Idempotency<S, St> {
    /// `inner` behind `layer`'s settings and store: the same as `layer.layer(inner)` (an
    /// Idempotency-Key layer is made by
    /// [`IdempotencyLayer::builder`](super::IdempotencyLayer::builder)).
    pub fn new(inner: S, layer: &super::IdempotencyLayer<St>) -> Self {
        tower_layer::Layer::layer(layer, inner)
    }

    inner_service_accessors!();
}

impl<S: Clone, St> Clone for Idempotency<S, St> {
    fn clone(&self) -> Self {
        Idempotency {
            inner: self.inner.clone(),
            settings: self.settings.clone(),
        }
    }
}

impl<S: std::fmt::Debug, St> std::fmt::Debug for Idempotency<S, St> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idempotency")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The inner service gets the request's body as a [`Buffered`]: in memory when the layer read it
/// (to fingerprint it), streaming otherwise. axum's `Router` and `Route` and tonic's `Routes`
/// accept any body, so the layer fits them whatever body type the server hands it.
impl<S, St, B, ResB> Service<Request<B>> for Idempotency<S, St>
where
    S: Service<Request<Buffered<B>>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    St: Store,
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
    ResB: Body<Data = Bytes> + Unpin + Send + 'static,
    ResB::Error: Into<BoxError> + Send,
{
    type Response = Response<Buffered<ResB>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The ready service goes with this request; a clone stays for the next.
        let clone = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, clone);
        // Written straight into its box: built on the stack first, this future (several KiB)
        // would be copied there whole.
        let boxed = Box::write(
            Box::new_uninit(),
            handle(self.settings.clone(), service, req),
        );
        Box::into_pin(boxed)
    }
}

async fn handle<S, St, B, ResB>(
    settings: Arc<Settings<St>>,
    service: S,
    req: Request<B>,
) -> Result<Response<Buffered<ResB>>, S::Error>
where
    S: Service<Request<Buffered<B>>, Response = Response<ResB>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    St: Store,
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
    ResB: Body<Data = Bytes> + Unpin + Send + 'static,
    ResB::Error: Into<BoxError> + Send,
{
    let unprotected = |req: Request<Buffered<B>>, mut service: S| async move {
        Ok(service
            .call(req)
            .await?
            .map(|b| Buffered::streaming(None, b)))
    };
    let keyed = match prepare(&settings, req).await {
        Prepared::Pass(req) => {
            return unprotected(req.map(|b| Buffered::streaming(None, b)), service).await;
        }
        Prepared::Answer(res) => return Ok(res),
        Prepared::Keyed(keyed) => keyed,
    };
    let claimed = claim_key(&settings, &keyed.key, &keyed.fingerprint).await;
    match (claimed.answer, claimed.handoff) {
        (Ok(Claim::New), Some(handoff)) => {
            let (token, at) = (claimed.token, claimed.at);
            owner::start(settings, service, keyed, token, at, handoff).await
        }
        (Ok(claim), _) => Ok(taken(claim, &keyed.key, &settings)),
        (Err(e), _) => match store_failed(&e, &keyed.key, &settings) {
            Some(res) => Ok(res),
            None => {
                let req = Request::from_parts(keyed.parts, Buffered::full(keyed.body));
                unprotected(req, service).await
            }
        },
    }
}
