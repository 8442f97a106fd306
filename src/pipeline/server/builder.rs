//! The server pipeline's builder.

use std::{fmt, marker::PhantomData, time::Duration};

use http::StatusCode;
use tower_layer::Identity;

use super::{
    IdempotencyStage, NoFallback, ServerClassifier, Stage, StandardServerLayer, default_breaker,
    timeout_layer,
};
use crate::{
    ConfigError,
    circuit_breaker::{self, CircuitBreakerLayer, Single},
    classify::HttpStatus,
    fallback::{FallbackLayer, FnFallback, Trigger},
    idempotency::IdempotencyLayer,
};

/// Builds a [`StandardServerLayer`]. Each method changes what it names and keeps every other
/// default:
///
/// | method | changes | keeps |
/// |---|---|---|
/// | [`timeout`](Self::timeout) | the timeout | its status, everything else |
/// | [`timeout_status`](Self::timeout_status) | the timeout's status | the timeout, everything else |
/// | [`circuit_breaker`](Self::circuit_breaker) | turns the breaker on, with what `f` sets on the default breaker builder | the other breaker defaults |
/// | [`replace_circuit_breaker`](Self::replace_circuit_breaker) | turns the breaker on, with `config` whole: the default breaker builder is dropped | everything else |
/// | [`breaker_per_route`](Self::breaker_per_route) (feature `axum`) | turns the breaker on, one per route | the breaker's settings, everything else |
/// | [`fallback`](Self::fallback) | the fallback and its triggers, both (a later call replaces both) | everything else |
/// | [`idempotency`](Self::idempotency) | adds the Idempotency-Key stage (a later call replaces it) | everything else |
///
/// Breaker overrides add up, in call order; a later `replace_circuit_breaker` drops the
/// overrides made before it, and overrides made after it apply to the replacement.
#[must_use]
pub struct ServerBuilder<F = NoFallback, P = Single, I = Identity> {
    timeout: Duration,
    status: StatusCode,
    breaker: Stage<circuit_breaker::Builder>,
    fallback: F,
    triggers: Vec<Trigger>,
    stage: I,
    /// Set with the Idempotency-Key stage: the breaker ignores its replays.
    ignore_replays: bool,
    picker: PhantomData<fn() -> P>,
}

impl<F, P, I> fmt::Debug for ServerBuilder<F, P, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("timeout", &self.timeout)
            .field("status", &self.status)
            .field("breaker", &self.breaker)
            .field("triggers", &self.triggers)
            .field("idempotency", &self.ignore_replays)
            .finish_non_exhaustive()
    }
}

impl ServerBuilder {
    pub(super) fn new() -> Self {
        ServerBuilder {
            timeout: Duration::from_secs(30),
            status: StatusCode::GATEWAY_TIMEOUT,
            breaker: Stage::default(),
            fallback: NoFallback,
            triggers: Vec::new(),
            stage: Identity::new(),
            ignore_replays: false,
            picker: PhantomData,
        }
    }
}

/// The checked stages, before the breaker is made.
struct Parts<F, I> {
    fallback: FallbackLayer<F, HttpStatus, crate::mode::RecogniseHttp>,
    /// `None` while the breaker stays disabled.
    breaker: Option<circuit_breaker::Config>,
    classifier: ServerClassifier,
    timeout: crate::timeout::TimeoutLayer<crate::mode::RespondHttp>,
    stage: I,
}

impl<F, P, I> ServerBuilder<F, P, I> {
    /// The request timeout (answered with 504, or [`timeout_status`](Self::timeout_status)).
    /// Changes only the timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Answer timeouts with `status` instead of 504 (e.g. 503). Changes only the status.
    pub fn timeout_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// Guard the handlers with a breaker (answering 503 when open), overriding its settings: `f`
    /// receives the default breaker builder ([`circuit_breaker::Builder`]'s defaults, named
    /// `server`) and returns it changed. What `f` does not set keeps its default.
    ///
    /// ```
    /// use tower_rampart::{circuit_breaker, pipeline::StandardServerLayer};
    ///
    /// # fn main() -> Result<(), tower_rampart::ConfigError> {
    /// // Open after 5 failures in a row; the open duration and probes stay the defaults.
    /// let layer = StandardServerLayer::builder()
    ///     .circuit_breaker(|defaults: circuit_breaker::Builder| defaults.consecutive_failures(5))
    ///     .build()?;
    /// assert_eq!(layer.breaker().name(), "server");
    /// # Ok(())
    /// # }
    /// ```
    pub fn circuit_breaker(
        mut self,
        f: impl FnOnce(circuit_breaker::Builder) -> circuit_breaker::Builder + Send + Sync + 'static,
    ) -> Self {
        self.breaker.push(f);
        self
    }

    /// Guard the handlers with a breaker built from `config` whole (answering 503 when open):
    /// nothing of the default breaker builder is kept, not even its name. Breaker overrides made
    /// before this call are dropped.
    pub fn replace_circuit_breaker(mut self, config: circuit_breaker::Builder) -> Self {
        self.breaker.replace(config);
        self
    }

    /// Answer `f(cause)` for the given triggers. Replaces the fallback and its triggers, both.
    pub fn fallback<G>(self, f: G, triggers: &[Trigger]) -> ServerBuilder<FnFallback<G>, P, I> {
        ServerBuilder {
            timeout: self.timeout,
            status: self.status,
            breaker: self.breaker,
            fallback: FallbackLayer::from_fn(f).into_fallback(),
            triggers: triggers.to_vec(),
            stage: self.stage,
            ignore_replays: self.ignore_replays,
            picker: PhantomData,
        }
    }

    /// Add an Idempotency-Key stage: `layer` around the handler, inside the timeout and the
    /// breaker. The timeout then bounds the caller's wait while the handler, detached by the
    /// stage, runs on, and a retry with the same key gets the handler's answer; the breaker's
    /// refusals never reach the store, and its replays are not counted by the breaker. Replaces
    /// a stage set before.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_rampart::{idempotency::IdempotencyLayer, pipeline::StandardServerLayer};
    ///
    /// # fn main() -> Result<(), tower_rampart::ConfigError> {
    /// let payments = IdempotencyLayer::builder()
    ///     .scope(|req| req.headers.get("x-tenant")?.to_str().ok().map(str::to_owned))
    ///     .build()?;
    /// let layer = StandardServerLayer::builder()
    ///     .timeout(Duration::from_secs(2))
    ///     .idempotency(payments)
    ///     .build()?;
    /// let app: axum::Router = axum::Router::new()
    ///     .route("/payments", axum::routing::post(|| async { "paid" }))
    ///     .layer(layer);
    /// # let _ = app;
    /// # Ok(())
    /// # }
    /// ```
    pub fn idempotency<St>(
        self,
        layer: IdempotencyLayer<St>,
    ) -> ServerBuilder<F, P, IdempotencyStage<St>> {
        ServerBuilder {
            timeout: self.timeout,
            status: self.status,
            breaker: self.breaker,
            fallback: self.fallback,
            triggers: self.triggers,
            stage: IdempotencyStage::new(layer),
            ignore_replays: true,
            picker: PhantomData,
        }
    }

    /// One breaker per route instead of one for the router: keyed by axum's `MatchedPath` (the
    /// route's template, `/items/{id}`) with [`ByRoute`](circuit_breaker::ByRoute), so that a
    /// failing route opens only its own. Turns the breaker on; its settings (defaults and
    /// overrides) are those of every route's breaker, named `<name>/<route>` (`server//items`).
    /// Requests no route matched (the router's fallback) share the key
    /// [`MatchedRoute::UNMATCHED`](circuit_breaker::MatchedRoute::UNMATCHED). At most 1024
    /// routes get their own breaker, as for [`CircuitBreakerLayer::keyed`].
    ///
    /// Add the layer with `Router::layer` (or `route_layer`): axum inserts the `MatchedPath`
    /// before it calls each route. Around the whole router from outside (`ServiceBuilder` around
    /// `Router::into_service`) no route has been matched yet, and every request shares the
    /// unmatched key.
    ///
    /// ```
    /// use tower_rampart::pipeline::StandardServerLayer;
    ///
    /// # fn main() -> Result<(), tower_rampart::ConfigError> {
    /// let layer = StandardServerLayer::builder()
    ///     .breaker_per_route()
    ///     .circuit_breaker(|defaults| defaults.consecutive_failures(5))
    ///     .build()?;
    /// let app: axum::Router = axum::Router::new()
    ///     .route("/items", axum::routing::get(|| async { "items" }))
    ///     .route("/fail", axum::routing::get(|| async { axum::http::StatusCode::BAD_GATEWAY }))
    ///     .layer(layer.clone());
    /// # let _ = app;
    /// // Each route's breaker, once the route had a request:
    /// // layer.route_breakers().get("/fail")
    /// assert!(layer.route_breakers().is_empty());
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "axum")]
    pub fn breaker_per_route(mut self) -> ServerBuilder<F, PerRoute, I> {
        if !self.breaker.is_set() {
            self.breaker.push(|b| b);
        }
        ServerBuilder {
            timeout: self.timeout,
            status: self.status,
            breaker: self.breaker,
            fallback: self.fallback,
            triggers: self.triggers,
            stage: self.stage,
            ignore_replays: self.ignore_replays,
            picker: PhantomData,
        }
    }

    /// Checks the stages; the breaker's configuration when it is on.
    fn parts(self) -> Result<Parts<F, I>, ConfigError> {
        let timeout = timeout_layer(self.timeout, self.status)?;
        let breaker = if self.breaker.is_set() {
            Some(self.breaker.resolve(default_breaker, |b| b).build()?)
        } else {
            None
        };
        let classifier = if self.ignore_replays {
            ServerClassifier::default().ignore_replays()
        } else {
            ServerClassifier::default()
        };
        Ok(Parts {
            fallback: FallbackLayer::with_fallback(self.fallback)
                .on(&self.triggers)
                .classify(HttpStatus::default())
                .recognise_http(),
            breaker,
            classifier,
            timeout,
            stage: self.stage,
        })
    }
}

/// How a per-route pipeline picks breakers: by [`ByRoute`](circuit_breaker::ByRoute).
#[cfg(feature = "axum")]
pub type PerRoute = circuit_breaker::Keyed<circuit_breaker::MatchedRoute, circuit_breaker::ByRoute>;

impl<F, I> ServerBuilder<F, Single, I> {
    /// Checks the stages.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when the timeout is zero or above [`MAX_DURATION`](crate::MAX_DURATION)
    /// (one year), or the breaker's settings are refused by its builder.
    pub fn build(self) -> Result<StandardServerLayer<F, Single, I>, ConfigError> {
        let parts = self.parts()?;
        let breaker = match parts.breaker {
            Some(config) => CircuitBreakerLayer::new(config),
            None => {
                let layer = CircuitBreakerLayer::new(default_breaker().build()?);
                layer.handle().disable();
                layer
            }
        };
        Ok(StandardServerLayer {
            fallback: parts.fallback,
            breaker: breaker.classify(parts.classifier).respond_http(),
            timeout: parts.timeout,
            stage: parts.stage,
        })
    }
}

#[cfg(feature = "axum")]
impl<F, I> ServerBuilder<F, PerRoute, I> {
    /// Checks the stages.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when the timeout is zero or above [`MAX_DURATION`](crate::MAX_DURATION)
    /// (one year), or the breaker's settings are refused by its builder.
    pub fn build(self) -> Result<StandardServerLayer<F, PerRoute, I>, ConfigError> {
        let parts = self.parts()?;
        // `breaker_per_route` turned the breaker on.
        let config = match parts.breaker {
            Some(config) => config,
            None => default_breaker().build()?,
        };
        Ok(StandardServerLayer {
            fallback: parts.fallback,
            breaker: CircuitBreakerLayer::keyed::<http::Request<()>, _, _>(
                config,
                circuit_breaker::ByRoute,
            )
            .classify(parts.classifier)
            .respond_http(),
            timeout: parts.timeout,
            stage: parts.stage,
        })
    }
}
