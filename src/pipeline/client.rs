//! The standard HTTP client pipeline.

use std::{fmt, time::Duration};

use http::uri::Authority;
use tower_layer::Layer;

use crate::{
    ConfigError,
    backoff::Backoff,
    circuit_breaker::{
        self, ByAuthority, CircuitBreaker, CircuitBreakerLayer, Keyed, KeyedBreakers,
    },
    classify::HttpStatus,
    mode::ReturnError,
    retry::{self, Budget, HttpReplay, Retry, RetryLayer},
    timeout::{Timeout, TimeoutLayer},
};

/// The service a [`StandardClientLayer`] makes around a client `S`.
pub type StandardClient<S> = Timeout<
    Retry<
        CircuitBreaker<
            Timeout<S, ReturnError>,
            HttpStatus,
            ReturnError,
            Keyed<Authority, ByAuthority>,
        >,
        HttpStatus,
        HttpReplay,
    >,
    ReturnError,
>;

/// Total timeout > retry (with budget) > circuit breaker keyed by authority > attempt timeout,
/// for `reqwest::Client` (feature `reqwest`) and `http::Request` clients.
///
/// Defaults, after Microsoft's standard resilience pipeline:
///
/// | stage | default |
/// |---|---|
/// | total timeout | 30 s |
/// | retry | 3 attempts, exponential from 2 s with full jitter, `Retry-After` up to 30 s, retryable statuses 408/429/500/502/503/504, idempotent methods (POST/PATCH with an `Idempotency-Key`) |
/// | retry budget | 20 % of requests in 10 s, plus 10 retries per second |
/// | circuit breaker (one per `host:port`) | failure rate 10 % over a 30 s window, at least 100 calls, open 5 s, 1 probe |
/// | attempt timeout | 10 s |
///
/// The total timeout passes its deadline down: an attempt never runs past it, and the retry
/// stage makes a retry only when its delay and a whole attempt timeout fit in the time left
/// (otherwise it gives up with [`GiveUp::Deadline`](crate::retry::GiveUp::Deadline)).
///
/// ```
/// use std::time::Duration;
/// use tower::ServiceBuilder;
/// use tower_rampart::pipeline::StandardClientLayer;
///
/// # fn main() -> Result<(), tower_rampart::ConfigError> {
/// let client = ServiceBuilder::new()
///     .layer(StandardClientLayer::builder().attempt_timeout(Duration::from_secs(2)).build()?)
///     .service(reqwest::Client::new());
/// # let _ = client;
/// assert!(StandardClientLayer::builder()
///     .total_timeout(Duration::from_secs(1))
///     .attempt_timeout(Duration::from_secs(2))
///     .build()
///     .is_err());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct StandardClientLayer {
    total: TimeoutLayer,
    retry: RetryLayer<HttpStatus, HttpReplay>,
    breaker: circuit_breaker::KeyedCircuitBreakerLayer<Authority, ByAuthority, HttpStatus>,
    attempt: TimeoutLayer,
}

impl fmt::Debug for StandardClientLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StandardClientLayer")
            .field("total_timeout", &self.total.timeout())
            .field("retry", &self.retry)
            .field("attempt_timeout", &self.attempt.timeout())
            .finish_non_exhaustive()
    }
}

impl StandardClientLayer {
    /// A builder with the defaults in the table above.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// The per-authority breakers, to read or steer them.
    pub fn breakers(&self) -> std::sync::Arc<KeyedBreakers<Authority>> {
        self.breaker.breakers()
    }
}

/// Builds a [`StandardClientLayer`]; every stage can be replaced.
#[must_use]
pub struct ClientBuilder {
    name: String,
    total: Duration,
    attempt: Duration,
    retry: Option<retry::Builder>,
    breaker: Option<circuit_breaker::Builder>,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("name", &self.name)
            .field("total", &self.total)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            name: "client".into(),
            total: Duration::from_secs(30),
            attempt: Duration::from_secs(10),
            retry: None,
            breaker: None,
        }
    }
}

impl ClientBuilder {
    /// The name of the pipeline's retry layer and breakers (breakers are `<name>/<host:port>`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The whole call, retries and waits included.
    pub fn total_timeout(mut self, timeout: Duration) -> Self {
        self.total = timeout;
        self
    }

    /// Each attempt.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt = timeout;
        self
    }

    /// Replaces the retry stage's settings (its name is the pipeline's).
    pub fn retry(mut self, retry: retry::Builder) -> Self {
        self.retry = Some(retry);
        self
    }

    /// Replaces the breakers' settings (their name is the pipeline's).
    pub fn circuit_breaker(mut self, breaker: circuit_breaker::Builder) -> Self {
        self.breaker = Some(breaker);
        self
    }

    /// Checks every stage, and that an attempt cannot outlast the whole call.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when a timeout is zero, the attempt timeout exceeds the total timeout,
    /// or the retry or breaker settings are refused by their own builders.
    pub fn build(self) -> Result<StandardClientLayer, ConfigError> {
        let err = |m: String| Err(ConfigError::new("standard client pipeline", m));
        if self.total.is_zero() || self.attempt.is_zero() {
            return err("timeouts must be above zero".into());
        }
        if self.attempt > self.total {
            return err(format!(
                "attempt timeout ({:?}) exceeds the total timeout ({:?})",
                self.attempt, self.total
            ));
        }
        let retry = self
            .retry
            .unwrap_or_else(|| {
                RetryLayer::builder()
                    .max_attempts(3)
                    .backoff(Backoff::exponential(Duration::from_secs(2)))
                    .budget(
                        Budget::percent(0.2, 10, Duration::from_secs(10))
                            .expect("valid default budget"),
                    )
            })
            .name(self.name.as_str())
            // Retries fit the total timeout's deadline, each with a whole attempt timeout.
            .attempt_timeout(self.attempt)
            .build()?
            .classify(HttpStatus::retryable())
            .replay(HttpReplay::default());
        let breaker = self
            .breaker
            .unwrap_or_else(|| {
                circuit_breaker::Config::builder()
                    .time_window(Duration::from_secs(30), 10)
                    .failure_rate(0.1)
                    .minimum_calls(100)
                    .open_duration(Duration::from_secs(5))
                    .half_open_permits(1)
            })
            .name(self.name.as_str())
            .build()?;
        Ok(StandardClientLayer {
            total: TimeoutLayer::new(self.total)?,
            retry,
            breaker: CircuitBreakerLayer::keyed_by_authority(breaker)
                .classify(HttpStatus::default()),
            attempt: TimeoutLayer::new(self.attempt)?,
        })
    }
}

impl<S> Layer<S> for StandardClientLayer {
    type Service = StandardClient<S>;

    fn layer(&self, inner: S) -> Self::Service {
        self.total.layer(
            self.retry
                .layer(self.breaker.layer(self.attempt.layer(inner))),
        )
    }
}
