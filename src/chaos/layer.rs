//! The chaos layer and its request predicates.

use std::{fmt, sync::Arc};

use http::StatusCode;
use tower_layer::Layer;

use super::{Chaos, ChaosHandle, Config, handle::Shared};
use crate::mode::{RespondGrpc, RespondHttp, ReturnError};

/// Which requests a [`ChaosLayer`] may inject into. Implemented for closures
/// `Fn(&Req) -> bool` and for [`Always`].
///
/// ```
/// use tower_rampart::chaos::Predicate;
///
/// let chaos_header = |req: &http::Request<()>| req.headers().contains_key("x-chaos");
/// let req = http::Request::builder().header("x-chaos", "1").body(()).unwrap();
/// assert!(chaos_header.matches(&req));
/// ```
pub trait Predicate<Req> {
    /// Whether `req` may get a fault.
    fn matches(&self, req: &Req) -> bool;
}

impl<F, Req> Predicate<Req> for F
where
    F: Fn(&Req) -> bool,
{
    #[inline]
    fn matches(&self, req: &Req) -> bool {
        self(req)
    }
}

/// Every request may get a fault (the default predicate of a [`ChaosLayer`]).
///
/// ```
/// use tower_rampart::chaos::{Always, Predicate};
///
/// assert!(Always.matches(&"any request"));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Always;

impl<Req> Predicate<Req> for Always {
    #[inline]
    fn matches(&self, _: &Req) -> bool {
        true
    }
}

/// Injects faults into a fraction of calls: latency, an error, an HTTP or gRPC status, or an
/// aborted call (see [`Fault`](super::Fault)).
///
/// Off unless enabled (in the [`Config`] or through the [`ChaosHandle`]). Error mode by
/// default: a fault other than latency and abort fails the call with
/// [`Injected`](super::Injected) in a `BoxError`. [`respond_http`](Self::respond_http) and
/// [`respond_grpc`](Self::respond_grpc) answer responses instead and keep the inner error type
/// (an axum `Router` stays `Infallible`). [`when`](Self::when) limits injection to the
/// requests a predicate accepts.
///
/// Every service the layer makes (every clone, every `Layer::layer` call) shares one state:
/// one handle steers them all, and one random source decides for them all.
///
/// ```
/// use http::StatusCode;
/// use tower_rampart::chaos::{ChaosLayer, Config, Fault};
///
/// let chaos = ChaosLayer::new(
///     Config::builder()
///         .fault(Fault::http(StatusCode::SERVICE_UNAVAILABLE))
///         .injection_rate(0.3)
///         .enabled(true)
///         .build()?,
/// )
/// .respond_http()
/// .when(|req: &axum::extract::Request| req.headers().contains_key("x-chaos"));
/// let handle = chaos.handle();
///
/// let app: axum::Router = axum::Router::new()
///     .route("/", axum::routing::get(|| async { "hello" }))
///     .layer(chaos);
/// # let _ = app;
/// handle.disable();
/// # Ok::<_, tower_rampart::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct ChaosLayer<M = ReturnError, P = Always> {
    pub(crate) shared: Arc<Shared>,
    mode: M,
    predicate: P,
}

impl<M: fmt::Debug, P> fmt::Debug for ChaosLayer<M, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChaosLayer")
            .field("state", &self.shared)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl ChaosLayer {
    /// A layer with `config`, in error mode, for every request.
    pub fn new(config: Config) -> Self {
        ChaosLayer {
            shared: Shared::new(config),
            mode: ReturnError,
            predicate: Always,
        }
    }
}

impl<M, P> ChaosLayer<M, P> {
    /// The handle that steers this layer and every service it made.
    pub fn handle(&self) -> ChaosHandle {
        ChaosHandle {
            shared: self.shared.clone(),
        }
    }

    /// Answer faults with HTTP responses (see [`Fault`](super::Fault) for each fault's form).
    pub fn respond_http(self) -> ChaosLayer<RespondHttp, P> {
        ChaosLayer {
            shared: self.shared,
            mode: RespondHttp::new(StatusCode::INTERNAL_SERVER_ERROR),
            predicate: self.predicate,
        }
    }

    /// Answer faults with gRPC responses (see [`Fault`](super::Fault) for each fault's form).
    pub fn respond_grpc(self) -> ChaosLayer<RespondGrpc, P> {
        ChaosLayer {
            shared: self.shared,
            mode: RespondGrpc {
                honour_grpc_timeout: false,
            },
            predicate: self.predicate,
        }
    }

    /// Injects only into requests `predicate` accepts (a header, a route). The predicate is
    /// asked only while the layer is enabled, and a request it refuses takes no draw of the
    /// random source.
    pub fn when<Q>(self, predicate: Q) -> ChaosLayer<M, Q> {
        ChaosLayer {
            shared: self.shared,
            mode: self.mode,
            predicate,
        }
    }
}

impl<S, M: Clone, P: Clone> Layer<S> for ChaosLayer<M, P> {
    type Service = Chaos<S, M, P>;

    fn layer(&self, inner: S) -> Self::Service {
        Chaos {
            inner,
            shared: self.shared.clone(),
            mode: self.mode.clone(),
            predicate: self.predicate.clone(),
        }
    }
}
