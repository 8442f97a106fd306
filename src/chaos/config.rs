//! The fault-injection settings: what to inject ([`Fault`]), how often, and whether at all.

use std::{fmt, sync::Arc, time::Duration};

use http::StatusCode;

use crate::{ConfigError, classify::GrpcCode};

/// What an injected call gets instead of (or before) its normal answer.
///
/// How each fault reaches the caller depends on the layer's mode:
///
/// | fault | error mode (default) | `respond_http()` | `respond_grpc()` |
/// |---|---|---|---|
/// | [`Latency`](Fault::Latency) | the call, after the delay | the call, after the delay | the call, after the delay |
/// | [`Error`](Fault::Error) | `Err(`[`Injected`](super::Injected)`)` | 500, problem+json | `grpc-status: 13` (INTERNAL) |
/// | [`Http`](Fault::Http) | `Err(Injected)` | the status (problem+json or empty), `Retry-After` | the status, empty body, `Retry-After` (a gRPC client maps it, e.g. 503 to UNAVAILABLE) |
/// | [`Grpc`](Fault::Grpc) | `Err(Injected)` | a trailers-only gRPC response | a trailers-only gRPC response |
/// | [`Abort`](Fault::Abort) | never completes | never completes | never completes |
///
/// Except for latency, the inner service is not called.
///
/// ```
/// use std::time::Duration;
/// use http::StatusCode;
/// use tower_rampart::{chaos::Fault, classify::GrpcCode};
///
/// let slow = Fault::Latency(Duration::from_millis(200));
/// let busy = Fault::http(StatusCode::SERVICE_UNAVAILABLE).with_retry_after(Duration::from_secs(1));
/// let down = Fault::grpc(GrpcCode::Unavailable, "injected outage");
/// assert_eq!(busy.kind(), "http");
/// assert_eq!(down.kind(), "grpc");
/// assert!(slow.validate().is_ok());
/// assert!(Fault::http(StatusCode::OK).validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Wait this long, then make the call. The inner service is called at once (so it keeps
    /// the readiness `poll_ready` gave) and its future is first polled after the delay; a
    /// future does nothing until polled, so the downstream sees the request late.
    Latency(Duration),
    /// Fail with an [`Injected`](super::Injected) error (error mode), a 500 (HTTP mode) or
    /// INTERNAL (gRPC mode), without calling the inner service.
    Error,
    /// Answer an HTTP status without calling the inner service.
    Http {
        /// The status: a client or server error (400 to 599).
        status: StatusCode,
        /// A `Retry-After` header (whole seconds, rounded up), if any.
        retry_after: Option<Duration>,
        /// An `application/problem+json` body of type [`PROBLEM_TYPE`](super::PROBLEM_TYPE)
        /// (`true`, the default of [`Fault::http`]) or an empty body (`false`).
        problem: bool,
    },
    /// Answer a trailers-only gRPC response (HTTP 200, `grpc-status`, `grpc-message`) without
    /// calling the inner service.
    Grpc {
        /// The gRPC status code; not `Ok`.
        code: GrpcCode,
        /// The `grpc-message` (percent-encoded on the wire).
        message: Arc<str>,
    },
    /// Abort the call: the inner service is not called and the response future never
    /// completes; it stays pending until the caller drops it (its timeout, or a client giving
    /// up). This is a downstream that accepted the request and went silent: use it to check that
    /// timeouts are in place. (For a call that fails at once use [`Fault::Error`].)
    Abort,
}

impl Fault {
    /// An HTTP `status` with a problem+json body and no `Retry-After`.
    pub fn http(status: StatusCode) -> Self {
        Fault::Http {
            status,
            retry_after: None,
            problem: true,
        }
    }

    /// An HTTP `status` with an empty body and no `Retry-After`.
    pub fn plain_http(status: StatusCode) -> Self {
        Fault::Http {
            status,
            retry_after: None,
            problem: false,
        }
    }

    /// A gRPC status `code` with `message`.
    pub fn grpc(code: GrpcCode, message: impl Into<Arc<str>>) -> Self {
        Fault::Grpc {
            code,
            message: message.into(),
        }
    }

    /// The same fault with a `Retry-After` of `wait`; other faults are returned unchanged.
    #[must_use]
    pub fn with_retry_after(self, wait: Duration) -> Self {
        match self {
            Fault::Http {
                status, problem, ..
            } => Fault::Http {
                status,
                retry_after: Some(wait),
                problem,
            },
            other => other,
        }
    }

    /// The fault's name, as in the `kind` label of
    /// [`metric_names::INJECTED`](super::metric_names::INJECTED): `latency`, `error`, `http`,
    /// `grpc` or `abort`.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Latency(_) => "latency",
            Fault::Error => "error",
            Fault::Http { .. } => "http",
            Fault::Grpc { .. } => "grpc",
            Fault::Abort => "abort",
        }
    }

    #[cfg(feature = "metrics")]
    pub(crate) fn kind_index(&self) -> usize {
        match self {
            Fault::Latency(_) => 0,
            Fault::Error => 1,
            Fault::Http { .. } => 2,
            Fault::Grpc { .. } => 3,
            Fault::Abort => 4,
        }
    }

    /// Checks the fault: a latency above zero, an HTTP status from 400 to 599, a gRPC code other
    /// than `Ok`, a latency and a `Retry-After` of at most [`MAX_DURATION`](crate::MAX_DURATION)
    /// (refused as `latency` and `retry_after`).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming what is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |m: String| Err(ConfigError::field("chaos", "fault", m));
        match self {
            Fault::Latency(d) if d.is_zero() => err("latency must be above zero".into()),
            // At most a year, so that an added delay is never "forever" written as
            // `Duration::MAX`.
            Fault::Latency(d) => ConfigError::check_duration("chaos", "latency", *d).map(drop),
            Fault::Http {
                retry_after: Some(d),
                ..
            } if *d > crate::MAX_DURATION => {
                ConfigError::check_duration("chaos", "retry_after", *d).map(drop)
            }
            Fault::Http { status, .. } if !(400..=599).contains(&status.as_u16()) => err(format!(
                "an injected HTTP status must be from 400 to 599, not {}",
                status.as_u16()
            )),
            Fault::Grpc {
                code: GrpcCode::Ok, ..
            } => err("an injected gRPC status must not be OK".into()),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Latency(d) => write!(f, "latency of {:.3}s", d.as_secs_f64()),
            Fault::Error => f.write_str("error"),
            Fault::Http { status, .. } => write!(f, "HTTP {status}"),
            Fault::Grpc { code, message } => {
                write!(f, "gRPC {code:?} ({}): {message}", *code as u8)
            }
            Fault::Abort => f.write_str("aborted call"),
        }
    }
}

/// The settings of one [`ChaosLayer`](super::ChaosLayer): a [`Fault`], the fraction of calls
/// that get it, whether injection is on, the random seed and a name for metrics.
///
/// Plain data: a configuration file (or a registry entry) can build one through
/// [`Config::builder`], and a running layer takes a new one through
/// [`ChaosHandle::apply`](super::ChaosHandle::apply). Off unless
/// [`enabled`](Builder::enabled).
///
/// ```
/// use http::StatusCode;
/// use tower_rampart::chaos::{Config, Fault};
///
/// let config = Config::builder()
///     .name("payments")
///     .fault(Fault::http(StatusCode::SERVICE_UNAVAILABLE))
///     .injection_rate(0.3)
///     .enabled(true)
///     .seed(7)
///     .build()?;
/// assert_eq!(config.injection_rate(), 0.3);
/// assert!(Config::builder().injection_rate(1.5).build().is_err());
/// # Ok::<_, tower_rampart::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub(crate) name: Arc<str>,
    pub(crate) fault: Fault,
    pub(crate) rate: f64,
    pub(crate) enabled: bool,
    pub(crate) seed: u64,
}

impl Config {
    /// A builder: fault [`Fault::Error`], injection rate 0, disabled, a random seed, name
    /// `chaos`.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// The name (the `chaos` label of the metrics).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The fault injected.
    pub fn fault(&self) -> &Fault {
        &self.fault
    }

    /// The fraction of calls injected, from 0 to 1.
    pub fn injection_rate(&self) -> f64 {
        self.rate
    }

    /// Whether injection is on.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The seed of the random source.
    pub fn seed(&self) -> u64 {
        self.seed
    }
}

/// Builds a [`Config`]; [`build`](Builder::build) validates it.
///
/// ```
/// use std::time::Duration;
/// use tower_rampart::chaos::{Config, Fault};
///
/// let err = Config::builder().fault(Fault::Latency(Duration::ZERO)).build().unwrap_err();
/// assert_eq!(err.to_string(), "invalid chaos configuration: fault latency must be above zero");
/// assert_eq!(err.setting(), Some("fault"));
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct Builder {
    name: Arc<str>,
    fault: Fault,
    rate: f64,
    enabled: bool,
    seed: Option<u64>,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            name: Arc::from("chaos"),
            fault: Fault::Error,
            rate: 0.0,
            enabled: false,
            seed: None,
        }
    }
}

impl Builder {
    /// The name: the `chaos` label of the metrics (`chaos` by default).
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// The fault to inject ([`Fault::Error`] by default).
    pub fn fault(mut self, fault: Fault) -> Self {
        self.fault = fault;
        self
    }

    /// The fraction of calls to inject, from 0 (none, the default) to 1 (every call).
    pub fn injection_rate(mut self, rate: f64) -> Self {
        self.rate = rate;
        self
    }

    /// Whether the layer injects at all (off by default).
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self
    }

    /// The seed of the random source, for reproducible runs. Without one, a random seed.
    ///
    /// The `n`-th decision of a layer (counting the calls that were enabled and matched the
    /// predicate, across every service the layer made) depends only on the seed and `n`, so a
    /// run of `N` such calls injects the same number of faults every time, however the calls
    /// interleave.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Checks the settings.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when the injection rate is not within 0..=1 (or is NaN), or the fault is
    /// invalid ([`Fault::validate`]).
    pub fn build(self) -> Result<Config, ConfigError> {
        check_rate(self.rate)?;
        self.fault.validate()?;
        Ok(Config {
            name: self.name,
            fault: self.fault,
            rate: self.rate,
            enabled: self.enabled,
            seed: self.seed.unwrap_or_else(|| fastrand::u64(..)),
        })
    }
}

pub(crate) fn check_rate(rate: f64) -> Result<(), ConfigError> {
    if (0.0..=1.0).contains(&rate) {
        Ok(())
    } else {
        Err(ConfigError::field(
            "chaos",
            "injection_rate",
            format!("must be from 0 to 1, not {rate}"),
        ))
    }
}
