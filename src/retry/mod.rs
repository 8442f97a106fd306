//! Retry: attempt again after a failure, with jittered backoff, within attempt, elapsed-time and
//! budget limits, honouring the downstream's `Retry-After`.
//!
//! - Limits: [`Builder::max_attempts`] (first attempt included), [`Builder::max_elapsed`].
//! - Delays: any [`Backoff`](crate::backoff::Backoff); a failure's retry-after hint (HTTP
//!   `Retry-After` seconds or date, gRPC `grpc-retry-pushback-ms`) replaces the backoff, up to a
//!   cap ([`Builder::retry_after`]).
//! - Budgets shared by every clone: gRPC-style token bucket or Finagle-style percentage
//!   ([`Budget`]).
//! - Requests are copied for later attempts by a [`Replay`]: `Clone` for plain services,
//!   [`HttpReplay`] for `http::Request` and `reqwest::Request` (only methods safe to repeat,
//!   POST/PATCH only with an `Idempotency-Key`), with [`BufferBodyLayer`] to make streaming
//!   bodies replayable up to a limit. [`SetIdempotencyKeyLayer`] gives POST/PATCH a key once per
//!   logical request.
//! - A circuit breaker's refusal is never retried unless asked, whether the breaker returned a
//!   `CircuitOpen` error or answered its own 503 ([`Classify::is_refused`](crate::classify::Classify::is_refused)).
//! - Reloadable: [`RetryLayer::reloadable`] gives a [`RetryReload`] handle that replaces the
//!   policy of live services (on a configuration reload), each call keeping the version it
//!   started with, and the rules its classifier had then (live error names,
//!   [`Classify::for_call`](crate::classify::Classify::for_call)). [`RetryLayer::settings`]
//!   says what calls starting now run with.
//! - Inside a [`TimeoutLayer`](crate::timeout::TimeoutLayer), no retry is made that cannot start
//!   (or, with [`Builder::attempt_timeout`], finish) before its
//!   [`Deadline`](crate::timeout::Deadline): the call gives up with [`GiveUp::Deadline`].
//!
//! ```
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//! use tower_rampart::{
//!     backoff::Backoff,
//!     classify::HttpStatus,
//!     retry::{Budget, BufferBodyLayer, HttpReplay, SetIdempotencyKeyLayer, RetryLayer},
//! };
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let retry = RetryLayer::builder()
//!     .name("payments-api")
//!     .max_attempts(3)
//!     .backoff(Backoff::exponential(Duration::from_millis(100)))
//!     .budget(Budget::percent(0.2, 10, Duration::from_secs(10))?)
//!     .build()?
//!     .classify(HttpStatus::retryable())
//!     .replay(HttpReplay::default());
//! let stack = ServiceBuilder::new()
//!     .layer(SetIdempotencyKeyLayer::new())
//!     .layer(BufferBodyLayer::default())
//!     .layer(retry);
//! # let _ = stack;
//! # Ok(())
//! # }
//! ```

mod budget;
mod future;
mod layer;
mod measures;
mod policy;
mod reload;
mod service;
mod set_idempotency_key;
mod spans;

use std::time::Duration;

pub use crate::ConfigError;
use crate::call::CallId;
pub use budget::Budget;
pub use future::ResponseFuture;
pub use layer::RetryLayer;
pub use measures::metric_names;
pub use policy::{Builder, GiveUp};
pub use reload::{RetryReload, Settings};
pub use set_idempotency_key::{SetIdempotencyKey, SetIdempotencyKeyLayer};
// Copying requests lives in `crate::replay` (shared with fallback and idempotency); retry users
// find what they stack with a retry layer here too.
pub use crate::idempotency::IDEMPOTENCY_KEY;
pub use crate::replay::{
    BufferBody, BufferBodyLayer, BufferFuture, Buffered, CloneRequest, DEFAULT_BUFFER_LIMIT,
    GrpcReplay, HttpReplay, Replay, ReplayBody,
};
pub use service::Retry;

#[cfg(test)]
mod reload_tests;

/// Something a retry layer did.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    /// The layer's name.
    pub retry: &'a str,
    /// The logical call: every attempt of a retried call, and the events the breaker, timeout
    /// and fallback layers around and inside report about it, carry the same id.
    pub call: CallId,
    /// What happened.
    pub kind: EventKind,
}

/// Where the delay before a retry came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DelayCause {
    /// The layer's [`Backoff`](crate::backoff::Backoff): the failure carried no retry-after
    /// hint, or hints are ignored ([`Builder::retry_after`] with `None`).
    Backoff,
    /// The downstream's hint (HTTP `Retry-After`, gRPC `grpc-retry-pushback-ms`), within the
    /// cap, in place of the backoff.
    RetryAfter,
}

impl DelayCause {
    /// A stable lower-case name: `backoff`, `retry_after`.
    pub fn as_str(self) -> &'static str {
        match self {
            DelayCause::Backoff => "backoff",
            DelayCause::RetryAfter => "retry_after",
        }
    }
}

impl std::fmt::Display for DelayCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kinds of [`Event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventKind {
    /// Attempt `attempt` (2 for the first retry) starts after `delay`.
    Retry {
        /// The number of the coming attempt.
        attempt: u32,
        /// The wait before it.
        delay: Duration,
        /// Whether the failed attempt ended in an error (rather than a failure response).
        after_error: bool,
        /// Where `delay` came from: the backoff or the downstream's retry-after hint.
        cause: DelayCause,
    },
    /// A failing call is returned as it is.
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// Why no more.
        reason: GiveUp,
    },
}
