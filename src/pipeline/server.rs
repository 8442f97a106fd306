//! The standard axum server pipeline.

use std::{
    fmt,
    future::{Ready, ready},
    time::Duration,
};

use http::StatusCode;
use tower_layer::Layer;

use crate::{
    ConfigError,
    circuit_breaker::{self, CircuitBreaker, CircuitBreakerHandle, CircuitBreakerLayer, Single},
    classify::HttpStatus,
    fallback::{Cause, Fallback, FallbackLayer, FallbackService, FnFallback, Trigger},
    mode::{RecogniseHttp, RespondHttp},
    timeout::{Timeout, TimeoutLayer},
};

use super::Stage;

/// The service a [`StandardServerLayer`] makes around a router or handler `S`.
pub type StandardServer<S, F> = FallbackService<
    CircuitBreaker<Timeout<S, RespondHttp>, HttpStatus, RespondHttp, Single>,
    F,
    HttpStatus,
    RecogniseHttp,
>;

/// Fallback > circuit breaker (503 + `Retry-After`) > timeout (504), for an axum `Router` or
/// any `http` service: every stage answers an HTTP response, so the error type is the inner
/// one (`Infallible` for axum).
///
/// The breaker counts the timeout's 504s and the handler's 5xx as failures; without
/// [`ServerBuilder::circuit_breaker`] (or [`ServerBuilder::replace_circuit_breaker`]) it is
/// disabled (admits everything, records nothing). The fallback runs only when one is set, and
/// only for its triggers.
///
/// | stage | default |
/// |---|---|
/// | fallback | none |
/// | circuit breaker | disabled; once configured, [`circuit_breaker::Builder`]'s defaults named `server` (failure rate 50 % of the last 100 calls, at least 20, open 10 s, 3 probes) |
/// | timeout | 30 s, answered with 504 |
///
/// Each [`ServerBuilder`] method changes only what it names and keeps every other default.
///
/// ```
/// use std::time::Duration;
/// use axum::response::IntoResponse;
/// use tower_rampart::{circuit_breaker, fallback::Trigger, pipeline::StandardServerLayer};
///
/// # fn main() -> Result<(), tower_rampart::ConfigError> {
/// let resilience = StandardServerLayer::builder()
///     .timeout(Duration::from_secs(5))
///     .circuit_breaker(|defaults: circuit_breaker::Builder| {
///         defaults.name("quotes").failure_rate(0.5)
///     })
///     .fallback(
///         |_| (axum::http::StatusCode::OK, "cached quote").into_response(),
///         &[Trigger::CircuitOpen, Trigger::Timeout],
///     )
///     .build()?;
/// let app: axum::Router = axum::Router::new()
///     .route("/quote", axum::routing::get(|| async { "live quote" }))
///     .layer(resilience);
/// # let _ = app;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct StandardServerLayer<F = NoFallback> {
    fallback: FallbackLayer<F, HttpStatus, RecogniseHttp>,
    breaker: CircuitBreakerLayer<HttpStatus, RespondHttp, Single>,
    timeout: TimeoutLayer<RespondHttp>,
}

impl<F> fmt::Debug for StandardServerLayer<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StandardServerLayer")
            .field("timeout", &self.timeout.timeout())
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

impl StandardServerLayer {
    /// A builder: 30 s timeout, breaker disabled, no fallback.
    pub fn builder() -> ServerBuilder {
        ServerBuilder {
            timeout: Duration::from_secs(30),
            status: StatusCode::GATEWAY_TIMEOUT,
            breaker: Stage::default(),
            fallback: NoFallback,
            triggers: Vec::new(),
        }
    }
}

impl<F> StandardServerLayer<F> {
    /// The breaker's handle.
    pub fn breaker(&self) -> CircuitBreakerHandle {
        self.breaker.handle()
    }
}

/// The server pipeline's default breaker builder: the breaker's own defaults, named `server`.
fn default_breaker() -> circuit_breaker::Builder {
    circuit_breaker::Config::builder().name("server")
}

/// The fallback of a pipeline that has none: never triggered.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoFallback;

impl<Req, Res, E> Fallback<Req, Res, E> for NoFallback {
    type Future = Ready<Result<Res, E>>;

    fn fallback(&mut self, cause: Cause<Res, E>, _: Option<Req>) -> Self::Future {
        ready(cause.into_outcome())
    }
}

/// Builds a [`StandardServerLayer`]. Each method changes what it names and keeps every other
/// default:
///
/// | method | changes | keeps |
/// |---|---|---|
/// | [`timeout`](Self::timeout) | the timeout | its status, everything else |
/// | [`timeout_status`](Self::timeout_status) | the timeout's status | the timeout, everything else |
/// | [`circuit_breaker`](Self::circuit_breaker) | turns the breaker on, with what `f` sets on the default breaker builder | the other breaker defaults |
/// | [`replace_circuit_breaker`](Self::replace_circuit_breaker) | turns the breaker on, with `config` whole: the default breaker builder is dropped | everything else |
/// | [`fallback`](Self::fallback) | the fallback and its triggers, both (a later call replaces both) | everything else |
///
/// Breaker overrides add up, in call order; a later `replace_circuit_breaker` drops the
/// overrides made before it, and overrides made after it apply to the replacement.
#[must_use]
pub struct ServerBuilder<F = NoFallback> {
    timeout: Duration,
    status: StatusCode,
    breaker: Stage<circuit_breaker::Builder>,
    fallback: F,
    triggers: Vec<Trigger>,
}

impl<F> fmt::Debug for ServerBuilder<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("timeout", &self.timeout)
            .field("status", &self.status)
            .field("breaker", &self.breaker)
            .field("triggers", &self.triggers)
            .finish_non_exhaustive()
    }
}

impl<F> ServerBuilder<F> {
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
    pub fn fallback<G>(self, f: G, triggers: &[Trigger]) -> ServerBuilder<FnFallback<G>> {
        ServerBuilder {
            timeout: self.timeout,
            status: self.status,
            breaker: self.breaker,
            fallback: FallbackLayer::from_fn(f).into_fallback(),
            triggers: triggers.to_vec(),
        }
    }

    /// Checks the stages.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when the timeout is zero or above [`MAX_DURATION`](crate::MAX_DURATION)
    /// (one year), or the breaker's settings are refused by its builder.
    pub fn build(self) -> Result<StandardServerLayer<F>, ConfigError> {
        if self.timeout.is_zero() {
            return Err(ConfigError::field(
                "standard server pipeline",
                "timeout",
                "must be above zero",
            ));
        }
        ConfigError::check_duration("standard server pipeline", "timeout", self.timeout)?;
        let breaker = if self.breaker.is_set() {
            CircuitBreakerLayer::new(self.breaker.resolve(default_breaker, |b| b).build()?)
        } else {
            let layer = CircuitBreakerLayer::new(default_breaker().build()?);
            layer.handle().disable();
            layer
        };
        Ok(StandardServerLayer {
            fallback: FallbackLayer::with_fallback(self.fallback)
                .on(&self.triggers)
                .classify(HttpStatus::default())
                .recognise_http(),
            breaker: breaker.classify(HttpStatus::default()).respond_http(),
            timeout: TimeoutLayer::new(self.timeout)?.respond_http_with(self.status),
        })
    }
}

impl<S, F: Clone> Layer<S> for StandardServerLayer<F> {
    type Service = StandardServer<S, F>;

    fn layer(&self, inner: S) -> Self::Service {
        self.fallback
            .layer(self.breaker.layer(self.timeout.layer(inner)))
    }
}
