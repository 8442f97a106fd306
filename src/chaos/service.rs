//! The chaos service and its modes.

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use http::Response;
use tower_service::Service;

use super::{ChaosHandle, Predicate, ResponseFuture, handle::Shared};
use crate::{
    BoxError,
    mode::{RespondGrpc, RespondHttp, ResponseBody, ReturnError},
};

/// A service some of whose calls get faults. Made by [`ChaosLayer`](super::ChaosLayer).
///
/// ```
/// use tower::{Layer, Service, ServiceExt, service_fn};
/// use tower_rampart::chaos::{ChaosLayer, Config};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_rampart::BoxError> {
/// let inner = service_fn(|n: u32| async move { Ok::<_, std::convert::Infallible>(n) });
/// let mut svc = ChaosLayer::new(Config::builder().build()?).layer(inner);
/// // Disabled: calls pass through.
/// assert_eq!(svc.ready().await?.call(7).await?, 7);
/// assert_eq!(svc.handle().injected(), 0);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Chaos<S, M, P> {
    pub(crate) inner: S,
    pub(crate) shared: Arc<Shared>,
    pub(crate) mode: M,
    pub(crate) predicate: P,
}

impl<S: fmt::Debug, M: fmt::Debug, P> fmt::Debug for Chaos<S, M, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chaos")
            .field("inner", &self.inner)
            .field("state", &self.shared)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl<S, M, P> Chaos<S, M, P> {
    inner_service_accessors!();

    /// The handle of the layer that made this service.
    pub fn handle(&self) -> ChaosHandle {
        ChaosHandle {
            shared: self.shared.clone(),
        }
    }

    #[inline]
    fn start<Req, Mode>(&mut self, req: Req) -> ResponseFuture<S::Future, Mode>
    where
        S: Service<Req>,
        P: Predicate<Req>,
    {
        match self.shared.decide(|| self.predicate.matches(&req)) {
            None => ResponseFuture::call(self.inner.call(req)),
            Some(injected) => ResponseFuture::injected(injected, || self.inner.call(req)),
        }
    }
}

impl<S, Req, P> Service<Req> for Chaos<S, ReturnError, P>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    P: Predicate<Req>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, ReturnError>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        self.start(req)
    }
}

/// The `Service` impl in the respond mode `$mode`, for responses whose body is `$body`: the
/// inner error type is kept.
macro_rules! respond_service {
    ($mode:ty, $body:path) => {
        impl<S, Req, B, P> Service<Req> for Chaos<S, $mode, P>
        where
            S: Service<Req, Response = Response<B>>,
            B: $body,
            P: Predicate<Req>,
        {
            type Response = Response<B>;
            type Error = S::Error;
            type Future = ResponseFuture<S::Future, $mode>;

            #[inline]
            fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
                self.inner.poll_ready(cx)
            }

            #[inline]
            fn call(&mut self, req: Req) -> Self::Future {
                self.start(req)
            }
        }
    };
}

respond_service!(RespondHttp, ResponseBody);
respond_service!(RespondGrpc, Default);
