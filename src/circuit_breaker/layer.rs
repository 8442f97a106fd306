//! The circuit-breaker layer: a configured breaker (or family of keyed breakers) shared by
//! every service it makes.

use std::{fmt, hash::Hash, marker::PhantomData, sync::Arc, time::Duration};

use http::uri::Authority;
use tower_layer::Layer;

use super::{
    Breaker, BreakerMode, ByAuthority, CircuitBreaker, CircuitBreakerHandle, Config, KeyFn, Keyed,
    KeyedBreakers, LiveBreaker,
    select::{Single, Static},
};
use crate::{classify::AnyError, mode::ReturnError};

/// Applies a circuit breaker to services.
///
/// The layer owns the breaker: every [`Layer::layer`] call and every clone of the resulting
/// service share it. An axum `Router` layers each route separately, and all routes still see
/// one breaker.
///
/// By default every `Err` is a failure ([`AnyError`]) and a refused call fails with a boxed
/// [`CircuitOpen`](super::CircuitOpen). Change the classifier with [`classify`](Self::classify)
/// and answer refusals with `503` responses with [`respond_http`](Self::respond_http).
///
/// ```
/// use std::convert::Infallible;
/// use tower::{Service, ServiceBuilder, ServiceExt};
/// use tower_rampart::circuit_breaker::{CircuitBreakerLayer, CircuitOpen, Config, State};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_rampart::BoxError> {
/// let layer = CircuitBreakerLayer::new(Config::builder().consecutive_failures(3).build()?);
/// let handle = layer.handle();
/// let mut svc = ServiceBuilder::new()
///     .layer(layer)
///     .service_fn(|fail: bool| async move { if fail { Err("boom") } else { Ok("ok") } });
///
/// assert_eq!(svc.ready().await?.call(false).await?, "ok");
/// for _ in 0..3 {
///     assert!(svc.ready().await?.call(true).await.is_err());
/// }
/// assert_eq!(handle.state(), State::Open);
/// let err = svc.ready().await?.call(false).await.unwrap_err();
/// assert!(err.downcast_ref::<CircuitOpen>().is_some());
/// # Ok(())
/// # }
/// ```
pub struct CircuitBreakerLayer<C = AnyError, M = ReturnError, P = Single> {
    picker: P,
    classifier: C,
    _mode: PhantomData<fn() -> M>,
}

/// A layer with one breaker per key. See [`CircuitBreakerLayer::keyed`].
pub type KeyedCircuitBreakerLayer<K, F, C = AnyError, M = ReturnError> =
    CircuitBreakerLayer<C, M, Keyed<K, F>>;

const DEFAULT_MAX_KEYS: usize = 1024;
const DEFAULT_IDLE: Duration = Duration::from_secs(600);

impl CircuitBreakerLayer {
    /// A layer with one breaker built from `config`.
    pub fn new(config: Config) -> Self {
        CircuitBreakerLayer {
            picker: Single(Arc::new(Breaker::new(config))),
            classifier: AnyError,
            _mode: PhantomData,
        }
    }

    /// A layer with the one breaker of `breaker`, which a configuration reload can retune or
    /// replace while the layer's services run ([`LiveBreaker::reconfigure`]). Keep a clone of
    /// `breaker` to reconfigure it; classify and respond as with [`new`](Self::new).
    ///
    /// ```
    /// use tower::{Service, ServiceBuilder, ServiceExt};
    /// use tower_rampart::circuit_breaker::{
    ///     CircuitBreakerLayer, Config, LiveBreaker, Reconfigured, State,
    /// };
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_rampart::BoxError> {
    /// let live = LiveBreaker::new(Config::builder().consecutive_failures(2).build()?);
    /// let mut svc = ServiceBuilder::new()
    ///     .layer(CircuitBreakerLayer::live(live.clone()))
    ///     .service_fn(|fail: bool| async move { if fail { Err("boom") } else { Ok("ok") } });
    ///
    /// assert!(svc.ready().await?.call(true).await.is_err());
    /// // Reloaded with a threshold of 1 failure in a row: retuned in place, the run of one
    /// // failure kept, so the next failure opens it.
    /// let reloaded = Config::builder().consecutive_failures(1).build()?;
    /// assert_eq!(live.reconfigure(reloaded), Reconfigured::Retuned);
    /// assert!(svc.ready().await?.call(true).await.is_err());
    /// assert_eq!(live.current().state(), State::Open);
    /// # Ok(())
    /// # }
    /// ```
    pub fn live(breaker: LiveBreaker) -> CircuitBreakerLayer<AnyError, ReturnError, LiveBreaker> {
        CircuitBreakerLayer {
            picker: breaker,
            classifier: AnyError,
            _mode: PhantomData,
        }
    }

    /// A layer with one breaker per key computed by `key` from each request, all built from
    /// `config` and named `<name>/<key>`. At most 1024 keys by default: to make room the least
    /// recently used closed breaker goes, and closed breakers idle for 10 minutes are dropped
    /// when a new key arrives. Open and half-open breakers are never dropped, nor breakers with
    /// calls in flight (their outcomes count for their key); while every slot holds one, new
    /// keys share an overflow breaker named `<name>/(other)`. Only the first
    /// `max_keys` keys get their own metrics label; later ones use `<name>/(other)`.
    ///
    /// ```
    /// use tower_rampart::circuit_breaker::{CircuitBreakerLayer, Config};
    ///
    /// // One breaker per tenant header value.
    /// let layer = CircuitBreakerLayer::keyed(Config::builder().build()?, |req: &http::Request<()>| {
    ///     req.headers()
    ///         .get("x-tenant")
    ///         .and_then(|v| v.to_str().ok())
    ///         .unwrap_or("none")
    ///         .to_owned()
    /// })
    /// .max_keys(100);
    /// assert_eq!(layer.breakers().len(), 0);
    /// # Ok::<_, tower_rampart::circuit_breaker::ConfigError>(())
    /// ```
    pub fn keyed<Req, K, F>(config: Config, key: F) -> KeyedCircuitBreakerLayer<K, F>
    where
        F: KeyFn<Req, Key = K>,
        K: Hash + Eq + Clone + fmt::Display,
    {
        CircuitBreakerLayer {
            picker: Keyed {
                breakers: Arc::new(KeyedBreakers::new(config, DEFAULT_MAX_KEYS, DEFAULT_IDLE)),
                key,
            },
            classifier: AnyError,
            _mode: PhantomData,
        }
    }

    /// [`keyed`](Self::keyed) by [`ByAuthority`]: one breaker per downstream `host:port`, the
    /// usual choice for an HTTP client.
    pub fn keyed_by_authority(config: Config) -> KeyedCircuitBreakerLayer<Authority, ByAuthority> {
        CircuitBreakerLayer {
            picker: Keyed {
                breakers: Arc::new(KeyedBreakers::new(config, DEFAULT_MAX_KEYS, DEFAULT_IDLE)),
                key: ByAuthority,
            },
            classifier: AnyError,
            _mode: PhantomData,
        }
    }
}

impl<C, M> CircuitBreakerLayer<C, M, Single> {
    /// A handle to read and steer the shared breaker.
    pub fn handle(&self) -> CircuitBreakerHandle {
        CircuitBreakerHandle::new(self.picker.0.clone())
    }

    /// Moves the layer's shared state (here the breaker) to static memory, never freed, so
    /// that calls hold it without reference counting: two atomic read-modify-writes fewer per
    /// call, and no cache line that every core writes. Nothing else changes: the services
    /// behave the same, and handles taken before or after steer the same breaker. For layers
    /// built once for the life of the process (the usual case): each call leaks one small
    /// allocation, so a program that builds layers again and again should not leak them.
    ///
    /// ```
    /// use tower_rampart::circuit_breaker::{CircuitBreakerLayer, Config};
    ///
    /// let layer = CircuitBreakerLayer::new(Config::builder().name("static").build()?).leak();
    /// assert_eq!(layer.handle().name(), "static");
    /// # Ok::<_, tower_rampart::circuit_breaker::ConfigError>(())
    /// ```
    pub fn leak(self) -> CircuitBreakerLayer<C, M, Static> {
        let held: &'static Arc<Breaker> = Box::leak(Box::new(self.picker.0));
        CircuitBreakerLayer {
            picker: Static(held),
            classifier: self.classifier,
            _mode: PhantomData,
        }
    }
}

impl<C, M> CircuitBreakerLayer<C, M, Static> {
    /// A handle to read and steer the shared breaker.
    pub fn handle(&self) -> CircuitBreakerHandle {
        CircuitBreakerHandle::new_static(self.picker.0)
    }
}

impl<C, M> CircuitBreakerLayer<C, M, LiveBreaker> {
    /// A handle to read and steer the live breaker (a registry's breaker included). It follows
    /// reloads: after one replaces the breaker, it steers the new one.
    ///
    /// ```
    /// use tower_rampart::circuit_breaker::{CircuitBreakerLayer, Config, LiveBreaker, State};
    ///
    /// let live = LiveBreaker::new(Config::builder().name("ledger").build()?);
    /// let layer = CircuitBreakerLayer::live(live);
    /// let handle = layer.handle();
    /// handle.force_open();
    /// assert_eq!(handle.state(), State::ForcedOpen);
    /// # Ok::<_, tower_rampart::circuit_breaker::ConfigError>(())
    /// ```
    pub fn handle(&self) -> CircuitBreakerHandle {
        self.picker.handle()
    }

    /// The live breaker, to reconfigure it.
    pub fn live_breaker(&self) -> &LiveBreaker {
        &self.picker
    }
}

impl<C, M, K, F> CircuitBreakerLayer<C, M, Keyed<K, F>>
where
    K: Hash + Eq + Clone + fmt::Display,
{
    /// The handle of a keyed layer: its family of breakers, the same as
    /// [`breakers`](Self::breakers). Steer one key's breaker with
    /// [`get`](KeyedBreakers::get), list them with [`handles`](KeyedBreakers::handles).
    ///
    /// ```
    /// use tower_rampart::circuit_breaker::{CircuitBreakerLayer, Config, State};
    ///
    /// let layer = CircuitBreakerLayer::keyed(Config::builder().name("api").build()?, |k: &String| k.clone());
    /// let family = layer.handle();
    /// family.get_or_insert("a.example".to_owned(), tokio::time::Instant::now());
    /// family.get("a.example").unwrap().force_open();
    /// assert_eq!(family.get("a.example").unwrap().state(), State::ForcedOpen);
    /// # Ok::<_, tower_rampart::circuit_breaker::ConfigError>(())
    /// ```
    pub fn handle(&self) -> Arc<KeyedBreakers<K>> {
        self.breakers()
    }

    /// The shared family of breakers: look one up by key, list keys, evict idle ones.
    pub fn breakers(&self) -> Arc<KeyedBreakers<K>> {
        self.picker.breakers.clone()
    }

    /// At most `max` breakers (at least 1), plus the shared overflow breaker, and at most `max`
    /// own metric labels plus `<name>/(other)`. Set it before layering or cloning: it starts a
    /// new, empty family.
    pub fn max_keys(mut self, max: usize) -> Self {
        let b = &self.picker.breakers;
        self.picker.breakers = Arc::new(KeyedBreakers::new(b.config(), max, b.idle_timeout()));
        self
    }

    /// Drop closed breakers unused for `idle`. Set it before layering or cloning: it starts a
    /// new, empty family.
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        let b = &self.picker.breakers;
        self.picker.breakers = Arc::new(KeyedBreakers::new(b.config(), b.max_keys(), idle));
        self
    }
}

impl<C, M, P> CircuitBreakerLayer<C, M, P> {
    /// Classifies outcomes with `classifier` (e.g. [`HttpStatus`](crate::classify::HttpStatus)).
    pub fn classify<C2>(self, classifier: C2) -> CircuitBreakerLayer<C2, M, P> {
        CircuitBreakerLayer {
            picker: self.picker,
            classifier,
            _mode: PhantomData,
        }
    }

    /// Answers refused calls with `503 Service Unavailable` (with `Retry-After` when known and an
    /// `application/problem+json` body) instead of an error, keeping the inner error type. A
    /// layer switched with [`end_of_stream`](Self::end_of_stream) keeps following bodies.
    pub fn respond_http(self) -> CircuitBreakerLayer<C, M::Http, P>
    where
        M: BreakerMode,
    {
        CircuitBreakerLayer {
            picker: self.picker,
            classifier: self.classifier,
            _mode: PhantomData,
        }
    }

    /// Judges calls at the end of their response bodies, not at their heads: the response's
    /// body is wrapped in a [`BreakerBody`](super::BreakerBody) that holds the call's permit until the body yields
    /// its trailers, ends or fails, and then records the classifier's
    /// [`classify_end`](crate::classify::Classify::classify_end) (a gRPC stream's
    /// `grpc-status` trailer, a body cut after a `200`). A body dropped before its end gives
    /// the permit back without an outcome (a half-open probe is not lost). Outcomes that the
    /// classifier makes final at the head ([`follows_body`](crate::classify::Classify::follows_body)
    /// false: a 5xx, a trailers-only gRPC error, every `Err`) are recorded at once, as without
    /// the switch; slow calls are timed to the end of the body.
    ///
    /// For services answering `http::Response<B>` (a tonic `Channel`, a hyper client, an axum
    /// router with [`respond_http`](Self::respond_http)) or, with feature `reqwest`,
    /// `reqwest::Response` ([`WrapBody`](crate::stream::WrapBody)).
    ///
    /// ```
    /// use tower::ServiceBuilder;
    /// use tower_rampart::{
    ///     circuit_breaker::{CircuitBreakerLayer, Config},
    ///     classify::GrpcResponse,
    /// };
    ///
    /// # async fn run(channel: tonic::transport::Channel) -> Result<(), tower_rampart::ConfigError> {
    /// // A tonic client whose server streams count by the status in their trailers.
    /// let breaker = CircuitBreakerLayer::new(Config::builder().name("feed").build()?)
    ///     .classify(GrpcResponse::default())
    ///     .end_of_stream();
    /// let grpc = tonic::client::Grpc::new(ServiceBuilder::new().layer(breaker).service(channel));
    /// # let _ = grpc;
    /// # Ok(())
    /// # }
    /// ```
    pub fn end_of_stream(self) -> CircuitBreakerLayer<C, M::Following, P>
    where
        M: BreakerMode,
    {
        CircuitBreakerLayer {
            picker: self.picker,
            classifier: self.classifier,
            _mode: PhantomData,
        }
    }
}

impl<C: Clone, M, P: Clone> Clone for CircuitBreakerLayer<C, M, P> {
    fn clone(&self) -> Self {
        CircuitBreakerLayer {
            picker: self.picker.clone(),
            classifier: self.classifier.clone(),
            _mode: PhantomData,
        }
    }
}

impl<C, M, P: fmt::Debug> fmt::Debug for CircuitBreakerLayer<C, M, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("breaker", &self.picker)
            .finish_non_exhaustive()
    }
}

impl<S, C: Clone, M, P: Clone> Layer<S> for CircuitBreakerLayer<C, M, P> {
    type Service = CircuitBreaker<S, C, M, P>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker {
            inner,
            picker: self.picker.clone(),
            classifier: self.classifier.clone(),
            _mode: PhantomData,
        }
    }
}
