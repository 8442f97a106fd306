//! The timeout layer.

use std::time::Duration;

use http::StatusCode;
use tower_layer::Layer;

use super::{
    Event, Listener, Timeout, TimeoutReload,
    reload::{self, Limit},
};
use crate::{
    ConfigError,
    mode::{RespondGrpc, RespondHttp, ReturnError},
};

/// Applies a timeout to every call.
///
/// Error mode by default (the service fails with [`Elapsed`](super::Elapsed) in a `BoxError`);
/// [`respond_http`](Self::respond_http) answers `504` instead and
/// [`respond_grpc`](Self::respond_grpc) a gRPC DEADLINE_EXCEEDED, keeping the inner error type
/// (an axum `Router` stays `Infallible`).
///
/// Whatever the mode, the timeout passes its [`Deadline`](super::Deadline) down to the layers
/// and handlers inside, and a timeout inside another one never waits past the outer deadline.
///
/// ```
/// use std::time::Duration;
/// use tower_rampart::timeout::TimeoutLayer;
///
/// let app: axum::Router = axum::Router::new()
///     .route("/", axum::routing::get(|| async { "fast" }))
///     .layer(TimeoutLayer::new(Duration::from_secs(10))?.respond_http());
/// # let _ = app;
/// # Ok::<_, tower_rampart::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct TimeoutLayer<M = ReturnError> {
    timeout: Limit,
    mode: M,
    events: Listener,
}

impl TimeoutLayer {
    /// Calls that take longer than `timeout` fail with [`Elapsed`](super::Elapsed).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when `timeout` is zero (every call would time out) or above
    /// [`MAX_DURATION`](crate::MAX_DURATION) (one year).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_rampart::timeout::TimeoutLayer;
    ///
    /// assert!(TimeoutLayer::new(Duration::from_secs(1)).is_ok());
    /// let err = TimeoutLayer::new(Duration::ZERO).unwrap_err();
    /// assert_eq!(err.to_string(), "invalid timeout configuration: timeout must be above zero");
    /// let err = TimeoutLayer::new(Duration::MAX).unwrap_err();
    /// assert_eq!(err.setting(), Some("timeout"));
    /// ```
    pub fn new(timeout: Duration) -> Result<Self, ConfigError> {
        reload::check(timeout)?;
        Ok(TimeoutLayer {
            timeout: Limit::fixed(timeout),
            mode: ReturnError,
            events: Listener::default(),
        })
    }
}

impl<M> TimeoutLayer<M> {
    /// The timeout the layer runs with: for a [`reloadable`](Self::reloadable) layer, the one
    /// calls starting now get (the last set through its [`TimeoutReload`]).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_rampart::timeout::TimeoutLayer;
    ///
    /// let layer = TimeoutLayer::new(Duration::from_secs(5))?.respond_http();
    /// assert_eq!(layer.timeout(), Duration::from_secs(5));
    /// let (layer, reload) = layer.reloadable();
    /// reload.set(Duration::from_secs(2))?;
    /// assert_eq!(layer.timeout(), Duration::from_secs(2));
    /// # Ok::<_, tower_rampart::ConfigError>(())
    /// ```
    pub fn timeout(&self) -> Duration {
        self.timeout.get()
    }

    /// Makes the timeout changeable while the layer serves traffic: returns the layer, whose
    /// services (made before or after a change) and their clones read the timeout set through
    /// the [`TimeoutReload`] handle when each call starts, and the handle. A call keeps the
    /// timeout it started with. Modes ([`respond_http`](Self::respond_http),
    /// [`respond_grpc`](Self::respond_grpc)) and listeners may be set before or after. Called
    /// on a layer already reloadable, returns another handle to the same timeout.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_rampart::timeout::TimeoutLayer;
    ///
    /// let (layer, reload) = TimeoutLayer::new(Duration::from_secs(10))?.reloadable();
    /// let layer = layer.respond_http();
    /// reload.set(Duration::from_secs(3))?;
    /// assert_eq!(layer.timeout(), Duration::from_secs(3));
    /// # Ok::<_, tower_rampart::ConfigError>(())
    /// ```
    pub fn reloadable(self) -> (Self, TimeoutReload) {
        let (timeout, reload) = self.timeout.reloadable();
        let layer = TimeoutLayer {
            timeout,
            mode: self.mode,
            events: self.events,
        };
        (layer, reload)
    }

    /// Calls `listener` with every [`Event`]: each call cut off, with the logical call's id.
    /// Calls copy a pointer to the listeners only when one is set.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_rampart::timeout::{EventKind, TimeoutLayer};
    ///
    /// let layer = TimeoutLayer::new(Duration::from_secs(2))?.on_event(|e| {
    ///     let EventKind::Elapsed { after } = e.kind else { return };
    ///     eprintln!("call {} cut off after {after:?}", e.call);
    /// });
    /// # let _ = layer;
    /// # Ok::<_, tower_rampart::ConfigError>(())
    /// ```
    pub fn on_event(mut self, listener: impl Fn(&Event) + Send + Sync + 'static) -> Self {
        self.events = self.events.and(listener);
        self
    }

    /// Answer `504 Gateway Timeout` with a problem+json body.
    pub fn respond_http(self) -> TimeoutLayer<RespondHttp> {
        self.respond_http_with(StatusCode::GATEWAY_TIMEOUT)
    }

    /// Answer `status` (e.g. 503) with a problem+json body.
    pub fn respond_http_with(self, status: StatusCode) -> TimeoutLayer<RespondHttp> {
        TimeoutLayer {
            timeout: self.timeout,
            mode: RespondHttp::new(status),
            events: self.events,
        }
    }

    /// Answer a trailers-only gRPC response with `grpc-status: 4` (DEADLINE_EXCEEDED). The
    /// client's `grpc-timeout` header shortens the timeout when it is shorter.
    pub fn respond_grpc(self) -> TimeoutLayer<RespondGrpc> {
        TimeoutLayer {
            timeout: self.timeout,
            mode: RespondGrpc {
                honour_grpc_timeout: true,
            },
            events: self.events,
        }
    }
}

impl TimeoutLayer<RespondGrpc> {
    /// Whether the client's `grpc-timeout` may shorten the timeout (on by default).
    pub fn honour_grpc_timeout(mut self, honour: bool) -> Self {
        self.mode.honour_grpc_timeout = honour;
        self
    }
}

impl<S, M: Clone> Layer<S> for TimeoutLayer<M> {
    type Service = Timeout<S, M>;

    fn layer(&self, inner: S) -> Self::Service {
        Timeout {
            inner,
            timeout: self.timeout.clone(),
            mode: self.mode.clone(),
            events: self.events.clone(),
        }
    }
}
