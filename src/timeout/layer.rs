//! The timeout layer.

use std::time::Duration;

use http::StatusCode;
use tower_layer::Layer;

use super::{
    Event, HeadOnly, Hooks, IncludingBody, Timeout, TimeoutReload,
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
pub struct TimeoutLayer<M = ReturnError, C = HeadOnly> {
    timeout: Limit,
    mode: M,
    hooks: Hooks,
    coverage: C,
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
            hooks: Hooks::default(),
            coverage: HeadOnly,
        })
    }
}

impl<M, C> TimeoutLayer<M, C> {
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
            hooks: self.hooks,
            coverage: self.coverage,
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
        self.hooks = self.hooks.and(listener);
        self
    }

    /// Names the timeout: the `timeout` label of its `rampart_timeouts_total` counter and the
    /// `timeout` field of its `tracing` event (empty while unnamed).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_rampart::timeout::TimeoutLayer;
    ///
    /// let layer = TimeoutLayer::new(Duration::from_secs(2))?.name("payments/total");
    /// assert_eq!(layer.get_name(), Some("payments/total"));
    /// # Ok::<_, tower_rampart::ConfigError>(())
    /// ```
    pub fn name(mut self, name: impl Into<std::sync::Arc<str>>) -> Self {
        self.hooks = self.hooks.named(name.into());
        self
    }

    /// The name given with [`name`](Self::name), if any.
    pub fn get_name(&self) -> Option<&str> {
        self.hooks.name()
    }

    /// Makes the deadline bound reading the response body too, not only its arrival: the
    /// response's body becomes a [`TimeoutBody`](super::TimeoutBody) that fails with
    /// [`Elapsed`](super::Elapsed) when the deadline passes mid-body (in
    /// [`respond_grpc`](Self::respond_grpc) mode, ends with DEADLINE_EXCEEDED trailers
    /// instead). The same deadline: a call gets its timeout once, for head and body together,
    /// like reqwest's `timeout()`.
    ///
    /// Responses are `http::Response<B>` (which become `http::Response<TimeoutBody<B>>`) or,
    /// with feature `reqwest`, `reqwest::Response` (which stays one, its body wrapped).
    ///
    /// On a server, the status has already been sent when a body is cut off: an HTTP/1
    /// connection is closed and an HTTP/2 stream reset, which the client sees as an incomplete
    /// body (gRPC gets its DEADLINE_EXCEEDED trailers). Leave it off for routes that stream on
    /// purpose (server-sent events, WebSockets, downloads) or give them their own timeout.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_rampart::timeout::{IncludingBody, TimeoutLayer};
    ///
    /// let layer: TimeoutLayer<_, IncludingBody> =
    ///     TimeoutLayer::new(Duration::from_secs(30))?.including_body();
    /// let client = tower::ServiceBuilder::new().layer(layer).service(reqwest::Client::new());
    /// # let _ = client;
    /// # Ok::<_, tower_rampart::ConfigError>(())
    /// ```
    pub fn including_body(self) -> TimeoutLayer<M, IncludingBody> {
        TimeoutLayer {
            timeout: self.timeout,
            mode: self.mode,
            hooks: self.hooks,
            coverage: IncludingBody::default(),
        }
    }

    /// The same layer covering the body only when `on` (the client pipeline's switch; the type
    /// stays the same either way).
    pub(crate) fn covering_body(self, on: bool) -> TimeoutLayer<M, IncludingBody> {
        TimeoutLayer {
            timeout: self.timeout,
            mode: self.mode,
            hooks: self.hooks,
            coverage: IncludingBody { on },
        }
    }

    /// Answer `504 Gateway Timeout` with a problem+json body.
    pub fn respond_http(self) -> TimeoutLayer<RespondHttp, C> {
        self.respond_http_with(StatusCode::GATEWAY_TIMEOUT)
    }

    /// Answer `status` (e.g. 503) with a problem+json body.
    pub fn respond_http_with(self, status: StatusCode) -> TimeoutLayer<RespondHttp, C> {
        TimeoutLayer {
            timeout: self.timeout,
            mode: RespondHttp::new(status),
            hooks: self.hooks,
            coverage: self.coverage,
        }
    }

    /// Answer a trailers-only gRPC response with `grpc-status: 4` (DEADLINE_EXCEEDED). The
    /// request's `grpc-timeout` header shortens the timeout when it is shorter.
    ///
    /// The mode for both ends of gRPC. On a server, the client's `grpc-timeout` becomes the
    /// handler's deadline. Around a client (a tonic `Channel`), a timed-out call is the
    /// DEADLINE_EXCEEDED status tonic expects (an error-mode timeout's `Elapsed` would reach the
    /// caller as UNKNOWN), and every gRPC request (`content-type: application/grpc*`) goes out
    /// with `grpc-timeout` set to the time the call is given: this timeout, or what is left of
    /// a deadline outside when that is earlier, rounded down
    /// ([`encode_grpc_timeout`](super::encode_grpc_timeout)); a request that already carries
    /// a `grpc-timeout` no longer than that keeps it. The server then stops work the client has
    /// given up on.
    pub fn respond_grpc(self) -> TimeoutLayer<RespondGrpc, C> {
        TimeoutLayer {
            timeout: self.timeout,
            mode: RespondGrpc {
                honour_grpc_timeout: true,
            },
            hooks: self.hooks,
            coverage: self.coverage,
        }
    }
}

impl<C> TimeoutLayer<RespondGrpc, C> {
    /// Whether the client's `grpc-timeout` may shorten the timeout (on by default).
    pub fn honour_grpc_timeout(mut self, honour: bool) -> Self {
        self.mode.honour_grpc_timeout = honour;
        self
    }
}

impl<S, M: Clone, C: Clone> Layer<S> for TimeoutLayer<M, C> {
    type Service = Timeout<S, M, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Timeout {
            inner,
            timeout: self.timeout.clone(),
            mode: self.mode.clone(),
            hooks: self.hooks.clone(),
            coverage: self.coverage.clone(),
        }
    }
}
