//! Fallback: turn chosen failures into a degraded response instead of an error.
//!
//! The triggers are explicit ([`FallbackLayer::on`]); anything not chosen passes through as it
//! was, so a fallback never hides an error it was not asked to handle:
//!
//! | trigger | what it matches |
//! |---|---|
//! | [`Trigger::CircuitOpen`] | a breaker's refusal: a `CircuitOpen` error, or the 503 of a breaker in `respond_http` mode |
//! | [`Trigger::Timeout`] | an `Elapsed` error, or the 504 / DEADLINE_EXCEEDED of a timeout in response mode |
//! | [`Trigger::Error`] | any other `Err` |
//! | [`Trigger::Failure`] | an `Ok` response the classifier calls a failure |
//!
//! The fallback is a fixed value ([`FallbackLayer::value`]), a function of the [`Cause`]
//! ([`FallbackLayer::from_fn`]) or another service called with a copy of the request
//! ([`FallbackLayer::service`]).
//!
//! ```
//! use std::time::Duration;
//! use axum::response::IntoResponse;
//! use tower::ServiceBuilder;
//! use tower_rampart::{fallback::{FallbackLayer, Trigger}, timeout::TimeoutLayer};
//!
//! let app: axum::Router = axum::Router::new()
//!     .route("/price", axum::routing::get(|| async { "42.00" }))
//!     .layer(
//!         ServiceBuilder::new()
//!             .layer(
//!                 FallbackLayer::from_fn(|_cause| "41.80 (cached)".into_response())
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
    Fallback, FallbackLayer, FallbackService, FnFallback, ResponseMarks, ServiceFallback,
    ValueFallback,
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
    let ext = res.extensions();
    if ext.get::<CircuitOpen>().is_some() {
        Some(Trigger::CircuitOpen)
    } else if ext.get::<Elapsed>().is_some() {
        Some(Trigger::Timeout)
    } else {
        None
    }
}

/// Responses of other types carry no marks.
pub(crate) fn no_response_trigger<Res>(_: &Res) -> Option<Trigger> {
    None
}
