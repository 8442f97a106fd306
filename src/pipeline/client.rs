//! The standard HTTP client pipeline.

use std::{fmt, sync::Arc, time::Duration};

use http::uri::Authority;
use tower_layer::Layer;

use crate::{
    ConfigError,
    backoff::Backoff,
    circuit_breaker::{
        self, ByAuthority, CircuitBreaker, CircuitBreakerLayer, EndOfStream, Keyed, KeyedBreakers,
    },
    classify::{ByName, HttpStatus},
    mode::ReturnError,
    retry::{self, Budget, HttpReplay, Retry, RetryLayer, RetryReload},
    timeout::{
        IncludingBody, SendGrpcTimeout, SendGrpcTimeoutLayer, Timeout, TimeoutLayer, TimeoutReload,
    },
};

use super::Stage;

/// The service a [`StandardClientLayer`] makes around a client `S`: its total timeout covers
/// the response body ([`IncludingBody`]; a `reqwest::Response` stays one, an
/// `http::Response<B>` becomes `http::Response<TimeoutBody<B>>`), its attempt timeout the head.
/// Inside the attempt timeout, [`SendGrpcTimeout`] sends the time an attempt has as
/// `grpc-timeout` on gRPC requests.
pub type StandardClient<S> = Timeout<
    Retry<
        CircuitBreaker<
            Timeout<SendGrpcTimeout<S>, ReturnError>,
            HttpStatus,
            EndOfStream,
            Keyed<Authority, ByAuthority>,
        >,
        ByName<HttpStatus>,
        HttpReplay,
    >,
    ReturnError,
    IncludingBody,
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
/// Each [`ClientBuilder`] method changes only what it names and keeps every other default:
/// `.retry(|defaults| defaults.max_attempts(5))` keeps the budget, backoff and `Retry-After`
/// cap; `.circuit_breaker(|defaults| defaults.failure_rate(0.5))` keeps the window, minimum
/// calls, open duration and probes. To drop a stage's defaults, replace it whole
/// ([`ClientBuilder::replace_retry`], [`ClientBuilder::replace_circuit_breaker`]).
///
/// The total timeout passes its deadline down: an attempt never runs past it, and the retry
/// stage makes a retry only when its delay and a whole attempt timeout fit in the time left
/// (otherwise it gives up with [`GiveUp::Deadline`](crate::retry::GiveUp::Deadline)).
///
/// The total timeout also bounds reading the response body, as reqwest's own `timeout()` does:
/// a body still streaming when it runs out fails with [`Elapsed`](crate::timeout::Elapsed)
/// (through reqwest, in the `reqwest::Error`'s source chain). Turn that off for long downloads
/// with [`ClientBuilder::total_timeout_covers_body`]. The attempt timeout covers the head only:
/// once a body has started, the call can no longer be retried, so cutting that attempt short
/// would only fail it earlier than the total timeout does.
///
/// A gRPC request (`content-type: application/grpc*`) goes out with `grpc-timeout` set to the
/// time its attempt has (the attempt timeout, or what is left of the total when that is less;
/// [`SendGrpcTimeout`]), so the server stops when the client stops waiting.
///
/// The timeouts are named `<name>/total` and `<name>/attempt` in their metrics and events.
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
    total: TimeoutLayer<ReturnError, IncludingBody>,
    total_covers_body: bool,
    retry: RetryLayer<ByName<HttpStatus>, HttpReplay>,
    breaker:
        circuit_breaker::KeyedCircuitBreakerLayer<Authority, ByAuthority, HttpStatus, EndOfStream>,
    attempt: TimeoutLayer,
}

impl fmt::Debug for StandardClientLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StandardClientLayer")
            .field("total_timeout", &self.total.timeout())
            .field("total_covers_body", &self.total_covers_body)
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
    pub fn breakers(&self) -> Arc<KeyedBreakers<Authority>> {
        self.breaker.breakers()
    }

    /// Makes the stack's settings replaceable while it serves: the returned layer (and every
    /// service it makes) follows what [`ClientReload::apply`] sets. The layer's own clones
    /// and services share one set of settings, as before.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_rampart::pipeline::StandardClientLayer;
    ///
    /// # fn main() -> Result<(), tower_rampart::ConfigError> {
    /// let (layer, reload) = StandardClientLayer::builder().build()?.reloadable();
    /// reload.apply(StandardClientLayer::builder().attempt_timeout(Duration::from_secs(2)))?;
    /// // An attempt timeout above the total timeout is refused, and nothing changes.
    /// assert!(reload
    ///     .apply(StandardClientLayer::builder().attempt_timeout(Duration::from_secs(60)))
    ///     .is_err());
    /// # let _ = layer;
    /// # Ok(())
    /// # }
    /// ```
    pub fn reloadable(self) -> (StandardClientLayer, ClientReload) {
        let (total, total_reload) = self.total.reloadable();
        let (retry, retry_reload) = self.retry.reloadable();
        let (attempt, attempt_reload) = self.attempt.reloadable();
        let reload = ClientReload {
            total: total_reload,
            attempt: attempt_reload,
            retry: retry_reload,
            breakers: self.breaker.breakers(),
        };
        let layer = StandardClientLayer {
            total,
            total_covers_body: self.total_covers_body,
            retry,
            breaker: self.breaker,
            attempt,
        };
        (layer, reload)
    }

    /// The stack from checked parts, with `classifier` for retries.
    pub(crate) fn from_parts(
        parts: ClientParts,
        classifier: ByName<HttpStatus>,
    ) -> Result<StandardClientLayer, ConfigError> {
        let retry = parts
            .retry
            .build()?
            .classify(classifier)
            .replay(HttpReplay::default());
        let name = parts.breaker.name.clone();
        Ok(StandardClientLayer {
            total: TimeoutLayer::new(parts.total)?
                .name(format!("{name}/total"))
                .covering_body(true),
            total_covers_body: true,
            retry,
            // Judged at the end of the body: a response cut after its head is a failure.
            breaker: CircuitBreakerLayer::keyed_by_authority(parts.breaker)
                .classify(HttpStatus::default())
                .end_of_stream(),
            attempt: TimeoutLayer::new(parts.attempt)?.name(format!("{name}/attempt")),
        })
    }

    /// Sets whether the total timeout bounds reading the body
    /// ([`ClientBuilder::total_timeout_covers_body`]).
    fn covering_body(mut self, on: bool) -> Self {
        self.total = self.total.covering_body(on);
        self.total_covers_body = on;
        self
    }
}

/// Changes the settings of a [reloadable](StandardClientLayer::reloadable) client stack while
/// it serves. Cheap to clone.
///
/// Each stage switches atomically: a call keeps the retry policy it started with, timeouts apply
/// to calls that start afterwards, and the per-authority breakers take new thresholds in place
/// (keeping their state) or, when the window changes, start afresh.
#[derive(Clone)]
pub struct ClientReload {
    total: TimeoutReload,
    attempt: TimeoutReload,
    retry: RetryReload,
    breakers: Arc<KeyedBreakers<Authority>>,
}

impl fmt::Debug for ClientReload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientReload")
            .field("total", &self.total.get())
            .field("attempt", &self.attempt.get())
            .finish_non_exhaustive()
    }
}

impl ClientReload {
    /// Applies the settings `builder` describes (its name is ignored: the stack keeps its own,
    /// and so do its metrics and listeners). Checked whole first.
    ///
    /// # Errors
    ///
    /// What [`ClientBuilder::build`] would refuse; nothing changes then.
    pub fn apply(&self, builder: ClientBuilder) -> Result<(), ConfigError> {
        self.apply_parts(builder.parts()?)
    }

    pub(crate) fn apply_parts(&self, parts: ClientParts) -> Result<(), ConfigError> {
        // The only step that can still refuse goes first, so a refusal changes nothing.
        self.retry.apply(parts.retry)?;
        self.total.set(parts.total)?;
        self.attempt.set(parts.attempt)?;
        // The family keeps its base name: breakers made from now on are `<stack>/<host:port>`,
        // whatever name the builder carried (metric labels and readiness names stay put).
        let mut breaker = parts.breaker;
        breaker.name = self.breakers.config().name.clone();
        self.breakers.reconfigure(breaker);
        Ok(())
    }
}

/// A client stack's settings, checked but not yet built.
pub(crate) struct ClientParts {
    pub(crate) total: Duration,
    pub(crate) attempt: Duration,
    /// With the attempt timeout set.
    pub(crate) retry: retry::Builder,
    pub(crate) breaker: circuit_breaker::Config,
}

impl ClientParts {
    /// Checks that both timeouts are above zero and an attempt cannot outlast the whole call.
    pub(crate) fn check_timeouts(total: Duration, attempt: Duration) -> Result<(), ConfigError> {
        let err =
            |f: &'static str, m: String| Err(ConfigError::field("standard client pipeline", f, m));
        if total.is_zero() {
            return err("total", "must be above zero".into());
        }
        if attempt.is_zero() {
            return err("attempt", "must be above zero".into());
        }
        // At most a year each, checked before comparing them: the refusal names the one at fault.
        ConfigError::check_duration("standard client pipeline", "total", total)?;
        ConfigError::check_duration("standard client pipeline", "attempt", attempt)?;
        if attempt > total {
            return err(
                "attempt",
                format!("({attempt:?}) exceeds the total timeout ({total:?})"),
            );
        }
        Ok(())
    }
}

/// Builds a [`StandardClientLayer`]. Each method changes what it names and keeps every other
/// default:
///
/// | method | changes | keeps |
/// |---|---|---|
/// | [`name`](Self::name) | the retry layer's name and the breakers' (`<name>/<host:port>`) | everything else |
/// | [`total_timeout`](Self::total_timeout) | the total timeout | everything else |
/// | [`total_timeout_covers_body`](Self::total_timeout_covers_body) | whether the total timeout bounds reading the body (on by default) | everything else |
/// | [`attempt_timeout`](Self::attempt_timeout) | the attempt timeout stage, and the retry stage's attempt timeout with it | everything else |
/// | [`retry`](Self::retry) | what `f` sets on the pipeline's default retry builder | the other retry defaults: attempts, backoff, `Retry-After` cap, budget |
/// | [`replace_retry`](Self::replace_retry) | the whole retry stage: the pipeline's retry defaults (budget included) are dropped | the name and attempt timeout, which the pipeline sets on it |
/// | [`circuit_breaker`](Self::circuit_breaker) | what `f` sets on the pipeline's default breaker builder | the other breaker defaults: window, failure rate, minimum calls, open duration, probes |
/// | [`replace_circuit_breaker`](Self::replace_circuit_breaker) | the whole breaker config: the pipeline's breaker defaults are dropped | the name, which the pipeline sets on it |
///
/// Overrides of one stage add up, in call order: `.retry(f).retry(g)` applies `f` then `g`;
/// a later `replace_*` drops the overrides made before it, and overrides made after it apply
/// to the replacement. What no override changes: the retry stage classifies
/// with [`HttpStatus::retryable`] and copies requests with [`HttpReplay`], the breakers
/// classify with [`HttpStatus::default`] (stack your own layers for anything else).
#[must_use]
pub struct ClientBuilder {
    name: String,
    total: Duration,
    total_covers_body: bool,
    attempt: Duration,
    retry: Stage<retry::Builder>,
    breaker: Stage<circuit_breaker::Builder>,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("name", &self.name)
            .field("total", &self.total)
            .field("total_covers_body", &self.total_covers_body)
            .field("attempt", &self.attempt)
            .field("retry", &self.retry)
            .field("breaker", &self.breaker)
            .finish()
    }
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            name: "client".into(),
            total: Duration::from_secs(30),
            total_covers_body: true,
            attempt: Duration::from_secs(10),
            retry: Stage::default(),
            breaker: Stage::default(),
        }
    }
}

/// The pipeline's retry defaults (the table on [`StandardClientLayer`]), named `name`, with
/// `attempt` as the attempt timeout.
pub(crate) fn default_retry(name: &str, attempt: Duration) -> retry::Builder {
    RetryLayer::builder()
        .name(name)
        .max_attempts(3)
        .backoff(Backoff::exponential(Duration::from_secs(2)))
        .retry_after(Some(Duration::from_secs(30)))
        .budget(Budget::percent(0.2, 10, Duration::from_secs(10)).expect("valid default budget"))
        .attempt_timeout(attempt)
}

/// The pipeline's breaker defaults (the table on [`StandardClientLayer`]), named `name`.
pub(crate) fn default_breaker(name: &str) -> circuit_breaker::Builder {
    circuit_breaker::Config::builder()
        .name(name)
        .time_window(Duration::from_secs(30), 10)
        .failure_rate(0.1)
        .minimum_calls(100)
        .open_duration(Duration::from_secs(5))
        .half_open_permits(1)
}

impl ClientBuilder {
    /// The name of the pipeline's retry layer and breakers (breakers are `<name>/<host:port>`).
    /// Changes only the names.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The whole call, retries and waits included. Changes only the total timeout.
    pub fn total_timeout(mut self, timeout: Duration) -> Self {
        self.total = timeout;
        self
    }

    /// Whether the total timeout also bounds reading the response body (on by default, as
    /// reqwest's `timeout()`): when it runs out mid-body, the body fails with
    /// [`Elapsed`](crate::timeout::Elapsed). Off, the total timeout stops at the response's
    /// head and a body may stream for as long as it takes (downloads, server-sent events).
    /// Changes only that; the body is wrapped either way, so the service's type stays
    /// [`StandardClient`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_rampart::pipeline::StandardClientLayer;
    ///
    /// # fn main() -> Result<(), tower_rampart::ConfigError> {
    /// let downloads = StandardClientLayer::builder()
    ///     .total_timeout(Duration::from_secs(10))
    ///     .total_timeout_covers_body(false)
    ///     .build()?;
    /// # let _ = downloads;
    /// # Ok(())
    /// # }
    /// ```
    pub fn total_timeout_covers_body(mut self, covers: bool) -> Self {
        self.total_covers_body = covers;
        self
    }

    /// Each attempt. Changes the attempt timeout stage and the retry stage's
    /// [`attempt_timeout`](retry::Builder::attempt_timeout), which the pipeline keeps equal to
    /// it, and nothing else.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt = timeout;
        self
    }

    /// Overrides retry settings: `f` receives the pipeline's default retry builder (named after
    /// the pipeline, 3 attempts, exponential backoff from 2 s, `Retry-After` up to 30 s, the
    /// 20 % budget, the attempt timeout) and returns it changed. What `f` does not set keeps its
    /// default; in particular the budget stays unless `f` sets another.
    ///
    /// `f` runs in [`build`](Self::build), after every other setting is known. The retry stage's
    /// attempt timeout is set to the pipeline's after `f` runs, so that it always matches the
    /// attempt timeout stage: change it with [`attempt_timeout`](Self::attempt_timeout).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_rampart::{backoff::Backoff, pipeline::StandardClientLayer, retry};
    ///
    /// # fn main() -> Result<(), tower_rampart::ConfigError> {
    /// // 5 attempts; the budget, backoff and Retry-After cap stay the pipeline's.
    /// let layer = StandardClientLayer::builder()
    ///     .retry(|defaults: retry::Builder| defaults.max_attempts(5))
    ///     .retry(|defaults| defaults.backoff(Backoff::exponential(Duration::from_millis(100))))
    ///     .build()?;
    /// # let _ = layer;
    /// # Ok(())
    /// # }
    /// ```
    pub fn retry(
        mut self,
        f: impl FnOnce(retry::Builder) -> retry::Builder + Send + Sync + 'static,
    ) -> Self {
        self.retry.push(f);
        self
    }

    /// Replaces the retry stage's settings whole: nothing of the pipeline's retry defaults is
    /// kept (a builder without [`budget`](retry::Builder::budget) retries without a budget), but
    /// the pipeline sets its name on it before later [`retry`](Self::retry) overrides run, and
    /// its attempt timeout after them. Overrides made before this call are dropped.
    pub fn replace_retry(mut self, retry: retry::Builder) -> Self {
        self.retry.replace(retry);
        self
    }

    /// Overrides breaker settings: `f` receives the pipeline's default breaker builder (named
    /// after the pipeline, failure rate 10 % over a 30 s window in 10 buckets, at least 100
    /// calls, open 5 s, 1 probe) and returns it changed. What `f` does not set keeps its
    /// default. The settings apply to every per-authority breaker.
    ///
    /// ```
    /// use tower_rampart::{circuit_breaker, pipeline::StandardClientLayer};
    ///
    /// # fn main() -> Result<(), tower_rampart::ConfigError> {
    /// // Open at 50 % failures; the window, minimum calls, open duration and probes stay.
    /// let layer = StandardClientLayer::builder()
    ///     .circuit_breaker(|defaults: circuit_breaker::Builder| defaults.failure_rate(0.5))
    ///     .build()?;
    /// # let _ = layer;
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

    /// Replaces the breakers' settings whole: nothing of the pipeline's breaker defaults is kept
    /// (what `breaker` does not set has [`circuit_breaker::Builder`]'s own defaults), but the
    /// pipeline sets its name on it before later [`circuit_breaker`](Self::circuit_breaker)
    /// overrides run. Overrides made before this call are dropped.
    pub fn replace_circuit_breaker(mut self, breaker: circuit_breaker::Builder) -> Self {
        self.breaker.replace(breaker);
        self
    }

    /// Checks every stage, and that an attempt cannot outlast the whole call.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when a timeout is zero or above [`MAX_DURATION`](crate::MAX_DURATION)
    /// (one year; named `total` or `attempt`), the attempt timeout exceeds the total timeout,
    /// or the retry or breaker settings are refused by their own builders.
    pub fn build(self) -> Result<StandardClientLayer, ConfigError> {
        let covers_body = self.total_covers_body;
        StandardClientLayer::from_parts(self.parts()?, ByName::new(HttpStatus::retryable()))
            .map(|layer| layer.covering_body(covers_body))
    }

    /// Every stage's settings, checked (the retry stage when it is built).
    pub(crate) fn parts(self) -> Result<ClientParts, ConfigError> {
        ClientParts::check_timeouts(self.total, self.attempt)?;
        let (name, attempt) = (self.name.as_str(), self.attempt);
        let retry = self
            .retry
            .resolve(|| default_retry(name, attempt), |b| b.name(name))
            // Retries fit the total timeout's deadline, each with a whole attempt timeout.
            .attempt_timeout(attempt);
        let breaker = self
            .breaker
            .resolve(|| default_breaker(name), |b| b.name(name))
            .build()?;
        Ok(ClientParts {
            total: self.total,
            attempt,
            retry,
            breaker,
        })
    }
}

impl<S> Layer<S> for StandardClientLayer {
    type Service = StandardClient<S>;

    fn layer(&self, inner: S) -> Self::Service {
        self.total.layer(
            self.retry.layer(
                self.breaker
                    .layer(self.attempt.layer(SendGrpcTimeoutLayer.layer(inner))),
            ),
        )
    }
}
