//! Timeouts: give up on a call that takes too long.
//!
//! Use one inside a retry layer for each attempt and one outside it for the whole call. A timed
//! out call is a failure for every classifier: in error mode it fails with [`Elapsed`]; in
//! response mode an HTTP server answers `504 Gateway Timeout` (problem+json) and a gRPC server a
//! trailers-only response with `grpc-status: 4` (DEADLINE_EXCEEDED), honouring the client's
//! `grpc-timeout` when it is shorter. A zero timeout, or one above
//! [`MAX_DURATION`](crate::MAX_DURATION) (one year), is refused with a
//! [`ConfigError`](crate::ConfigError).
//!
//! [`TimeoutLayer::reloadable`] gives a [`TimeoutReload`] handle that changes the timeout of
//! live services (on a configuration reload); each call keeps the timeout it started with.
//!
//! A timeout passes its [`Deadline`] down to the layers it encloses: an attempt timeout inside
//! never waits past the total timeout outside (it shrinks to the time left, and when it runs
//! out the [`Elapsed`] names the total timeout: [`Elapsed::deadline_origin`]), and a retry
//! layer between them gives up ([`GiveUp::Deadline`](crate::retry::GiveUp::Deadline)) rather
//! than sleep or start an attempt that cannot finish in time. A caller passes a deadline of its
//! own down with [`Deadline::scope_call`].
//!
//! ## Head or whole body
//!
//! By default a timeout bounds the call until the response's head arrives ([`HeadOnly`]); a
//! body streamed afterwards is not timed. [`TimeoutLayer::including_body`] makes the same
//! deadline bound reading the body too ([`IncludingBody`]; the body becomes a [`TimeoutBody`]):
//!
//! | layer / mode | covers |
//! |---|---|
//! | `TimeoutLayer::new(d)` (any mode) | the head only |
//! | `.including_body()`, error or `respond_http` mode | head and body; a body cut off fails with [`Elapsed`] as its error |
//! | `.including_body()`, `respond_grpc` mode | head and body; a stream cut off ends with trailers `grpc-status: 4` (DEADLINE_EXCEEDED) |
//! | standard client pipeline, total timeout | head and body (as reqwest's `timeout()`); `total_timeout_covers_body(false)` for the head only |
//! | standard client pipeline, attempt timeout | the head only: an attempt whose body has started cannot be retried |
//!
//! ## gRPC deadlines
//!
//! In [`respond_grpc`](TimeoutLayer::respond_grpc) mode a timeout around a client (a tonic
//! `Channel`) sends the time the call has as `grpc-timeout` on every gRPC request
//! ([`encode_grpc_timeout`]), unless the request carries a shorter one;
//! [`SendGrpcTimeoutLayer`] does the same inside timeouts in error mode.
//!
//! ## Metrics and tracing
//!
//! Every call cut off counts in `rampart_timeouts_total` ([`metric_names::TIMEOUTS`], labels
//! `timeout`: the layer's [`name`](TimeoutLayer::name), and `scope`: `head` or `body`), and,
//! with feature `tracing`, logs an INFO event with the same fields and a numeric `timeout_ms`.
//! Nothing is done for a call that finishes in time.
//!
//! ```
//! use std::time::Duration;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_rampart::timeout::{Elapsed, TimeoutLayer};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), tower_rampart::BoxError> {
//! let mut svc = ServiceBuilder::new()
//!     .layer(TimeoutLayer::new(Duration::from_secs(1))?)
//!     .service_fn(|_: ()| async {
//!         tokio::time::sleep(Duration::from_secs(5)).await;
//!         Ok::<_, std::convert::Infallible>("late")
//!     });
//! let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
//! assert_eq!(err.downcast_ref::<Elapsed>().unwrap().after(), Duration::from_secs(1));
//! # Ok(())
//! # }
//! ```

mod body;
mod body_service;
mod deadline;
mod error;
mod future;
mod grpc_timeout;
mod hooks;
mod layer;
mod reload;
mod send_grpc_timeout;
mod service;
#[cfg(test)]
mod tests;

use std::time::Duration;

use crate::call::CallId;
pub use body::{BodyResponseFuture, HeadOnly, IncludingBody, TimeoutBody};
pub use deadline::{Deadline, DeadlineOrigin, ScopedFuture};
pub use error::{Elapsed, TIMEOUT_PROBLEM_TYPE};
pub use future::ResponseFuture;
pub use grpc_timeout::{encode_grpc_timeout, parse_grpc_timeout};
pub use hooks::metric_names;
pub(crate) use hooks::{Hooks, Scope};
pub use layer::TimeoutLayer;
pub use reload::TimeoutReload;
pub use send_grpc_timeout::{SendGrpcTimeout, SendGrpcTimeoutLayer};
pub use service::Timeout;

/// Something a timeout layer did (see [`TimeoutLayer::on_event`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Event {
    /// The logical call: the id the breaker, retry and fallback layers around and inside report
    /// for the same call (a timeout per attempt inside a retry reports the retried call's id).
    pub call: CallId,
    /// What happened.
    pub kind: EventKind,
}

/// The kinds of [`Event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventKind {
    /// The call was cut off (what [`Elapsed`] reports, in whichever mode the layer answers).
    Elapsed {
        /// The time it was given: the layer's timeout, or less when a deadline outside (or a
        /// gRPC client's `grpc-timeout`) shortened it. (The [`Elapsed`] the call fails with
        /// then names the deadline's timeout: [`Elapsed::deadline_origin`].)
        after: Duration,
    },
    /// A [body-inclusive](TimeoutLayer::including_body) timeout ran out while the response body
    /// was read: the body failed with [`Elapsed`] (or, in
    /// [`respond_grpc`](TimeoutLayer::respond_grpc) mode, ended with DEADLINE_EXCEEDED trailers).
    BodyElapsed {
        /// The time it was given, as for [`EventKind::Elapsed`].
        after: Duration,
    },
}
