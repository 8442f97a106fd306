//! Fallback: turn chosen failures into a degraded response instead of an error.
//!
//! The triggers are explicit ([`FallbackLayer::on`]); anything not chosen passes through as it
//! was, so a fallback never hides an error it was not asked to handle:
//!
//! | trigger | what it matches |
//! |---|---|
//! | [`Trigger::CircuitOpen`] | a breaker's refusal, as the classifier's [`is_refused`](crate::classify::Classify::is_refused) sees it (a `CircuitOpen` error; the marked 503 of a breaker in `respond_http` mode for the HTTP classifiers), and with `recognise_http` the marked 503 whatever the classifier |
//! | [`Trigger::Timeout`] | an `Elapsed` error, or the 504 / DEADLINE_EXCEEDED of a timeout in response mode |
//! | [`Trigger::Error`] | any other `Err` |
//! | [`Trigger::Failure`] | an `Ok` response the classifier calls a failure |
//!
//! The fallback is one of:
//!
//! | constructor | answers | for |
//! |---|---|---|
//! | [`FallbackLayer::response`], [`FallbackLayer::json`] | a fixed HTTP response built from status, headers and [`Bytes`](bytes::Bytes) shared by every call | `http::Response<B>` for any [`ResponseBody`](crate::mode::ResponseBody) `B` (axum, tonic, hyper bodies, `String`) |
//! | [`FallbackLayer::value`] | a clone of a fixed value | `Clone` responses (`http::Response` is not `Clone`: use `response` / `json`) |
//! | [`FallbackLayer::from_fn`] | `f(cause)` | any response; a value factory when it ignores the cause |
//! | [`FallbackLayer::service`] | a backup service called with a copy of the request, made by the [`Replay`](crate::replay::Replay) rule you pass | any request; HTTP requests only when the rule allows a copy |
//!
//! A backup service the copy rule refused (a POST without an `Idempotency-Key` under
//! [`HttpReplay::default()`](crate::replay::HttpReplay)) is not called: the call's own outcome
//! is returned and [`EventKind::BackupSkipped`] is reported to
//! [`on_event`](FallbackLayer::on_event) listeners (and to `tracing` as a warning).
//!
//! ```
//! use std::time::Duration;
//! use http::StatusCode;
//! use tower::ServiceBuilder;
//! use tower_rampart::{fallback::{FallbackLayer, Trigger}, timeout::TimeoutLayer};
//!
//! let app: axum::Router = axum::Router::new()
//!     .route("/price", axum::routing::get(|| async { "42.00" }))
//!     .layer(
//!         ServiceBuilder::new()
//!             .layer(
//!                 FallbackLayer::json(StatusCode::OK, r#"{"price":"41.80","stale":true}"#)
//!                     .on(&[Trigger::Timeout])
//!                     .recognise_http(),
//!             )
//!             .layer(TimeoutLayer::new(Duration::from_millis(200))?.respond_http()),
//!     );
//! # let _ = app;
//! # Ok::<_, tower_rampart::ConfigError>(())
//! ```

mod future;
mod layer;

pub use future::ResponseFuture;
pub use future::ServiceCall;
pub use layer::{
    Fallback, FallbackLayer, FallbackService, FnFallback, ResponseFallback, ResponseMarks,
    ServiceFallback, ValueFallback,
};

use crate::{circuit_breaker::CircuitOpen, error::find_error as downcast, timeout::Elapsed};

/// What a fallback can be triggered by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Trigger {
    /// A circuit breaker's refusal (error or 503 response).
    CircuitOpen,
    /// A timeout (error or timeout response).
    Timeout,
    /// Any other error.
    Error,
    /// A response the classifier calls a failure.
    Failure,
}

/// Something a fallback layer did (see [`FallbackLayer::on_event`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Event {
    /// The logical call: the id the breaker, retry and timeout layers around and inside report
    /// for the same call.
    pub call: crate::call::CallId,
    /// The trigger the call's outcome matched.
    pub trigger: Trigger,
    /// What the layer did about it.
    pub kind: EventKind,
}

/// The kinds of [`Event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EventKind {
    /// The fallback answered in place of the call's outcome.
    FellBack,
    /// A trigger matched, but the backup service was not called because no copy of the request
    /// could be made: the copy rule refused it (a POST or PATCH without an `Idempotency-Key`
    /// under [`HttpReplay::default()`](crate::replay::HttpReplay)) or its body streams. The
    /// call's own outcome was returned.
    BackupSkipped,
}

impl EventKind {
    /// A short name: `fell_back`, `backup_skipped`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::FellBack => "fell_back",
            EventKind::BackupSkipped => "backup_skipped",
        }
    }
}

/// A set of triggers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Triggers(u8);

impl Triggers {
    /// From a list.
    pub fn from_list(list: &[Trigger]) -> Self {
        Triggers(list.iter().fold(0, |m, t| m | 1 << *t as u8))
    }

    /// Whether `t` is in the set.
    pub fn contains(self, t: Trigger) -> bool {
        self.0 & (1 << t as u8) != 0
    }
}

/// Why the fallback runs, with what the call produced.
#[derive(Debug)]
pub struct Cause<Res, E> {
    trigger: Trigger,
    outcome: Result<Res, E>,
}

impl<Res, E> Cause<Res, E> {
    pub(crate) fn new(trigger: Trigger, outcome: Result<Res, E>) -> Self {
        Cause { trigger, outcome }
    }

    /// The trigger this cause matched.
    pub fn trigger(&self) -> Trigger {
        self.trigger
    }

    /// The error, when the call failed with one.
    pub fn error(&self) -> Option<&E> {
        self.outcome.as_ref().err()
    }

    /// The response, when the call answered a failure response (or a breaker's 503, a
    /// timeout's 504).
    pub fn response(&self) -> Option<&Res> {
        self.outcome.as_ref().ok()
    }

    /// What the call produced.
    pub fn into_outcome(self) -> Result<Res, E> {
        self.outcome
    }
}

impl<Res, E: 'static> Cause<Res, E> {
    /// The breaker's refusal, when the call failed with one. (A breaker's 503 response carries
    /// it in the response's extensions.)
    pub fn circuit_open(&self) -> Option<&CircuitOpen> {
        self.error().and_then(downcast::<CircuitOpen, E>)
    }

    /// The timeout, when the call failed with one. (A timeout response carries it in the
    /// response's extensions.)
    pub fn elapsed(&self) -> Option<&Elapsed> {
        self.error().and_then(downcast::<Elapsed, E>)
    }
}

/// Which trigger an error matches.
pub(crate) fn error_trigger<E: 'static>(e: &E) -> Trigger {
    if downcast::<CircuitOpen, E>(e).is_some() {
        Trigger::CircuitOpen
    } else if downcast::<Elapsed, E>(e).is_some() {
        Trigger::Timeout
    } else {
        Trigger::Error
    }
}

/// Which trigger a response made by one of our layers matches (they mark their responses).
pub(crate) fn http_response_trigger<B>(res: &http::Response<B>) -> Option<Trigger> {
    if crate::classify::breaker_refusal(res).is_some() {
        Some(Trigger::CircuitOpen)
    } else if res.extensions().get::<Elapsed>().is_some() {
        Some(Trigger::Timeout)
    } else {
        None
    }
}

/// Responses of other types carry no marks.
pub(crate) fn no_response_trigger<Res>(_: &Res) -> Option<Trigger> {
    None
}
