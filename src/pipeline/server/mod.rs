//! The standard axum server pipeline.

use std::{
    fmt,
    future::{Ready, ready},
    time::Duration,
};

use http::StatusCode;
use tower_layer::{Identity, Layer};

use crate::{
    circuit_breaker::{self, CircuitBreaker, CircuitBreakerHandle, CircuitBreakerLayer, Single},
    classify::HttpStatus,
    fallback::{Cause, Fallback, FallbackLayer, FallbackService},
    mode::{RecogniseHttp, RespondHttp},
    timeout::{Timeout, TimeoutLayer},
};

use super::Stage;

mod builder;
mod classify;
mod idempotency;

#[cfg(feature = "axum")]
pub use builder::PerRoute;
pub use builder::ServerBuilder;
pub use classify::ServerClassifier;
pub use idempotency::{IdempotencyStage, IdempotencyStageFuture, IdempotencyStageService};

/// The service a [`StandardServerLayer`] makes around a router or handler `S`: `F` is the
/// fallback, `P` picks the breaker ([`Single`], or one per route with
/// [`ServerBuilder::breaker_per_route`]). With an Idempotency-Key stage, `S` is the stage's
/// [`IdempotencyStageService`] around the handler.
pub type StandardServer<S, F = NoFallback, P = Single> = FallbackService<
    CircuitBreaker<Timeout<S, RespondHttp>, ServerClassifier, RespondHttp, P>,
    F,
    HttpStatus,
    RecogniseHttp,
>;

/// Fallback > circuit breaker (503 + `Retry-After`) > timeout (504) > Idempotency-Key (when
/// set), for an axum `Router` or any `http` service: every stage answers an HTTP response, so
/// the error type is the inner one (`Infallible` for axum).
///
/// The breaker counts the timeout's 504s and the handler's 5xx as failures; without
/// [`ServerBuilder::circuit_breaker`] (or [`ServerBuilder::replace_circuit_breaker`], or
/// [`ServerBuilder::breaker_per_route`]) it is disabled (admits everything, records nothing).
/// The fallback runs only when one is set, and only for its triggers.
///
/// | stage, outermost first | default | why there |
/// |---|---|---|
/// | fallback | none | its degraded answers are never stored by the Idempotency-Key stage |
/// | circuit breaker | disabled; once configured, [`circuit_breaker::Builder`]'s defaults named `server` (failure rate 50 % of the last 100 calls, at least 20, open 10 s, 3 probes); one for the router, or one per route | outside the timeout, so a 504 counts as a failure; outside the Idempotency-Key stage, so its 503 refusals never reach the store (the key stays free for the retry), and replays, marked `Idempotent-Replayed`, are ignored rather than counted as calls of the handler |
/// | timeout | 30 s, answered with 504 | outside the Idempotency-Key stage: it bounds the caller's wait, while the handler, detached by the stage, runs on; the retry gets the handler's answer |
/// | Idempotency-Key | none ([`ServerBuilder::idempotency`]) | around the handler |
///
/// Per-route breakers ([`ServerBuilder::breaker_per_route`]) need the layer added with
/// `Router::layer` or `Router::route_layer`, where axum has matched the route: around the
/// router from outside, every request shares the unmatched key. For per-route timeouts, give
/// each group of routes its own pipeline with `route_layer` and `merge` the groups: a layer on
/// the whole router bounds every route, and an inner layer can shorten that bound, never
/// lengthen it.
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
pub struct StandardServerLayer<F = NoFallback, P = Single, I = Identity> {
    fallback: FallbackLayer<F, HttpStatus, RecogniseHttp>,
    breaker: CircuitBreakerLayer<ServerClassifier, RespondHttp, P>,
    timeout: TimeoutLayer<RespondHttp>,
    stage: I,
}

impl<F: Clone, P: Clone, I: Clone> Clone for StandardServerLayer<F, P, I> {
    fn clone(&self) -> Self {
        StandardServerLayer {
            fallback: self.fallback.clone(),
            breaker: self.breaker.clone(),
            timeout: self.timeout.clone(),
            stage: self.stage.clone(),
        }
    }
}

impl<F, P: fmt::Debug, I> fmt::Debug for StandardServerLayer<F, P, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StandardServerLayer")
            .field("timeout", &self.timeout.timeout())
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

impl StandardServerLayer {
    /// A builder: 30 s timeout, breaker disabled, no fallback, no Idempotency-Key stage.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::new()
    }
}

impl<F, I> StandardServerLayer<F, Single, I> {
    /// The breaker's handle.
    pub fn breaker(&self) -> CircuitBreakerHandle {
        self.breaker.handle()
    }
}

#[cfg(feature = "axum")]
impl<F, I> StandardServerLayer<F, PerRoute, I> {
    /// The per-route breakers ([`ServerBuilder::breaker_per_route`]): look one up by its route
    /// template (`.get("/items/{id}")`, or
    /// [`MatchedRoute::UNMATCHED`](circuit_breaker::MatchedRoute::UNMATCHED)), list them, or
    /// give them to [`health::Readiness`](crate::health::Readiness). Breakers are made at a
    /// route's first request, named `<name>/<route>`.
    pub fn route_breakers(
        &self,
    ) -> std::sync::Arc<circuit_breaker::KeyedBreakers<circuit_breaker::MatchedRoute>> {
        self.breaker.breakers()
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

impl<S, F: Clone, P: Clone, I: Layer<S>> Layer<S> for StandardServerLayer<F, P, I> {
    type Service = StandardServer<I::Service, F, P>;

    fn layer(&self, inner: S) -> Self::Service {
        self.fallback.layer(
            self.breaker
                .layer(self.timeout.layer(self.stage.layer(inner))),
        )
    }
}

/// The timeout stage's settings, checked.
fn timeout_layer(
    timeout: Duration,
    status: StatusCode,
) -> Result<TimeoutLayer<RespondHttp>, crate::ConfigError> {
    if timeout.is_zero() {
        return Err(crate::ConfigError::field(
            "standard server pipeline",
            "timeout",
            "must be above zero",
        ));
    }
    crate::ConfigError::check_duration("standard server pipeline", "timeout", timeout)?;
    Ok(TimeoutLayer::new(timeout)?.respond_http_with(status))
}
