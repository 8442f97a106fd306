//! Policies as data (feature `serde`): every layer's settings deserialize from, and serialize
//! to, configuration files, with human durations (`30s`, `1500ms`, `1m 30s`, through
//! `humantime-serde`), unknown fields refused, and the same checks as the builders.
//!
//! An error names the path to the field at fault:
//! `policies.payment-gateway.circuit_breaker.minimum_calls: must be at least 1`.
//!
//! | type | section | builds |
//! |---|---|---|
//! | [`BreakerSettings`] | `circuit_breaker` | [`circuit_breaker::Config`](crate::circuit_breaker::Config) |
//! | [`RetrySettings`] (with [`BudgetSettings`]) | `retry` / `retry_policy` | [`RetryLayer`](crate::retry::RetryLayer), a [`ByName`](crate::classify::ByName) classifier |
//! | [`TimeoutSettings`] | `timeout` | [`TimeoutLayer`](crate::timeout::TimeoutLayer)s |
//! | [`FallbackSettings`] | `fallback` | triggers, a canned-response [`FallbackLayer`](crate::fallback::FallbackLayer) |
//! | [`IdempotencySettings`] | `idempotency` | options of the [`idempotency::Builder`](crate::idempotency::Builder) |
//! | `ChaosSettings` (feature `chaos`) | `chaos` | [`chaos::Config`](crate::chaos::Config) |
//! | [`PolicySettings`] | one downstream | all of the above |
//! | [`RegistrySettings`] | a file | `defaults` + named `policies`, for the [`Registry`](crate::registry::Registry) |
//!
//! Files are YAML (feature `yaml`, parsed by `serde-saphyr`) or TOML (feature `toml`); any
//! format serde reads can go through `serde_json::Value` and `from_value`.
//!
//! Errors are in an operator's words, each naming the key: a count is "a whole number from 0
//! to 4294967295", a duration "cannot be negative" and is at most one year
//! ([`MAX_DURATION`](crate::MAX_DURATION), in every section), a key written twice is named
//! with both its lines, an empty (or comment-only) file is refused as empty, a file whose top
//! level is not a mapping is told what it must hold, and TOML given to a YAML loader (or the
//! reverse) is told which loader to use. Error names may be written unquoted where they are
//! numbers (`retry_on: [503, 429]`).
//!
//! ```
//! use tower_rampart::config::RegistrySettings;
//!
//! let err = RegistrySettings::from_yaml("policies:\n  a:\n    timeout: { total: -5s }\n");
//! assert_eq!(
//!     err.unwrap_err().to_string(),
//!     "policies.a.timeout.total: cannot be negative: write a duration such as \"5s\", got \"-5s\"",
//! );
//! let err = RegistrySettings::from_yaml("# nothing yet\n").unwrap_err();
//! assert!(err.to_string().starts_with("the file is empty"));
//! ```
//!
//! # The design-document vocabulary
//!
//! Snippets such as this one load as written:
//!
//! ```yaml
//! circuit_breaker:
//!   service: payment-gateway
//!   failure_threshold: 5             # consecutive failures to open
//!   recovery_timeout: 30s            # wait before half-open
//!   permitted_calls_in_half_open: 3
//!   sliding_window_size: 10          # requests to evaluate
//!   minimum_calls: 5
//!   slow_call_duration_threshold: 2s
//!   slow_call_rate_threshold: 0.8
//! retry_policy:
//!   max_attempts: 3
//!   initial_interval: 1s
//!   max_interval: 30s
//!   multiplier: 2.0
//!   jitter: true
//!   retryable_exceptions: ["NetworkTimeout", "ServiceUnavailable"]
//!   non_retryable_exceptions: ["ValidationError", "AuthenticationFailed"]
//! ```
//!
//! How it maps onto the crate's model:
//!
//! - `failure_threshold: 5` next to `sliding_window_size: 10` is a failure rate of 5/10 over
//!   the last 10 calls, judged from `minimum_calls` (5) on: five failures in a row always open
//!   the breaker, as the comment says, and so do five failures among the last ten calls. Alone
//!   (no window), `failure_threshold` means failures in a row (`consecutive_failures`).
//! - `recovery_timeout` is the open duration, `permitted_calls_in_half_open` the half-open
//!   probes, `slow_call_*_threshold` the slow-call duration and rate.
//! - `max_attempts` counts every attempt, the first included (3: one call and two retries).
//!   `initial_interval`, `max_interval`, `multiplier` shape an exponential backoff; `jitter:
//!   true` is full jitter.
//! - `retryable_exceptions` (or `retry_on`): only failures with these names are retried;
//!   `non_retryable_exceptions` (or `never_retry`): these never are. Names are those of
//!   [`ErrorNames`](crate::classify::ErrorNames): transport and timeout errors
//!   (`NetworkTimeout`, `ConnectionError`), `CircuitOpen`, HTTP statuses and classes (`503`,
//!   `5xx`, `429`), gRPC codes (`UNAVAILABLE`), and your own error types through
//!   [`NamedError`](crate::classify::NamedError). An unknown name is an error at load time.
//!
//! ```
//! use tower_rampart::config::PolicySettings;
//!
//! let policy = PolicySettings::from_value(serde_json::json!({
//!     "circuit_breaker": {"service": "payment-gateway", "failure_threshold": 5,
//!                         "sliding_window_size": 10, "minimum_calls": 0},
//! }));
//! assert_eq!(
//!     policy.unwrap_err().to_string(),
//!     "circuit_breaker.minimum_calls: must be at least 1",
//! );
//! ```

mod breaker;
#[cfg(feature = "chaos")]
mod chaos;
pub(crate) mod error;
pub(crate) mod load;
mod merge;
mod policy;
mod retry;
mod sections;
mod value;

pub use breaker::BreakerSettings;
#[cfg(feature = "chaos")]
pub use chaos::{ChaosSettings, FaultKind, GrpcCodeName};
pub use error::Error;
pub use policy::{PolicySettings, RegistrySettings};
pub use retry::{BackoffKind, BudgetSettings, RetrySettings};
pub use sections::{
    FallbackSettings, IdempotencySettings, StoreErrorChoice, TimeoutSettings, TriggerName,
};
pub use value::{JitterSetting, Limit};
