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
/// [`ServerBuilder::circuit_breaker`] it is disabled (admits everything, records nothing). The
/// fallback runs only when one is set, and only for its triggers.
///
/// ```
/// use std::time::Duration;
/// use axum::response::IntoResponse;
/// use tower_rampart::{circuit_breaker::Config, fallback::Trigger, pipeline::StandardServerLayer};
///
/// # fn main() -> Result<(), tower_rampart::ConfigError> {
/// let resilience = StandardServerLayer::builder()
///     .timeout(Duration::from_secs(5))
///     .circuit_breaker(Config::builder().name("quotes").failure_rate(0.5))
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
            breaker: None,
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

/// The fallback of a pipeline that has none: never triggered.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoFallback;

impl<Req, Res, E> Fallback<Req, Res, E> for NoFallback {
    type Future = Ready<Result<Res, E>>;

    fn fallback(&mut self, cause: Cause<Res, E>, _: Option<Req>) -> Self::Future {
        ready(cause.into_outcome())
    }
}

/// Builds a [`StandardServerLayer`].
#[must_use]
pub struct ServerBuilder<F = NoFallback> {
    timeout: Duration,
    status: StatusCode,
    breaker: Option<circuit_breaker::Builder>,
    fallback: F,
    triggers: Vec<Trigger>,
}

impl<F> fmt::Debug for ServerBuilder<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("timeout", &self.timeout)
            .field("status", &self.status)
            .field("triggers", &self.triggers)
            .finish_non_exhaustive()
    }
}

impl<F> ServerBuilder<F> {
    /// The request timeout (answered with 504).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Answer timeouts with `status` instead of 504 (e.g. 503).
    pub fn timeout_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// Guard the handlers with a breaker built from `config` (answering 503 when open).
    pub fn circuit_breaker(mut self, config: circuit_breaker::Builder) -> Self {
        self.breaker = Some(config);
        self
    }

    /// Answer `f(cause)` for the given triggers.
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
    /// A [`ConfigError`] when the timeout is zero or the breaker's settings are refused by its
    /// builder.
    pub fn build(self) -> Result<StandardServerLayer<F>, ConfigError> {
        if self.timeout.is_zero() {
            return Err(ConfigError::new(
                "standard server pipeline",
                "timeout must be above zero",
            ));
        }
        let breaker = match self.breaker {
            Some(b) => CircuitBreakerLayer::new(b.build()?),
            None => {
                let layer = CircuitBreakerLayer::new(
                    circuit_breaker::Config::builder().name("server").build()?,
                );
                layer.handle().disable();
                layer
            }
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
