//! Circuit breaker: stop calling a downstream that is failing, probe it now and then, resume when
//! it recovers.
//!
//! - **Windows**: the last N calls ([`Builder::count_window`], a true ring), the last T seconds
//!   in fixed buckets ([`Builder::time_window`]), or failures in a row
//!   ([`Builder::consecutive_failures`]).
//! - **Thresholds**: failure rate and slow-call rate (inclusive), or a number of failures in a
//!   count window ([`Builder::failure_count`]), judged once the window holds a minimum number of
//!   calls.
//! - **Open → half-open → closed**: after the open duration (fixed or growing with consecutive
//!   openings; lengthened by a downstream's `Retry-After`), exactly N probes decide. A cancelled
//!   probe returns its permit, and so does one whose inner `call` or future panics; a probe that
//!   hangs without being dropped is given up after the half-open max wait
//!   ([`Builder::half_open_max_wait`], on by default); results from an earlier period are
//!   ignored.
//! - **Operator control** through a [`CircuitBreakerHandle`] (every breaker layer has
//!   `handle()`), events through listeners (which run with no lock held, so they may steer the
//!   breaker: see [`Builder::on_event`]), and metrics through the `metrics` facade (feature
//!   `metrics`, on by default).
//! - **Keyed** breakers, one per host or route: [`CircuitBreakerLayer::keyed`].
//! - **Live reconfiguration**: [`Breaker::retune`] changes thresholds and durations in place,
//!   state kept; [`LiveBreaker`] (layered with [`CircuitBreakerLayer::live`]) and
//!   [`KeyedBreakers::reconfigure`] also replace breakers whose window changed.
//!
//! The state machine itself is [`Breaker`], which knows nothing about tower or HTTP.
//!
//! ```
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//! use tower_rampart::circuit_breaker::{CircuitBreakerLayer, Config};
//! use tower_rampart::classify::HttpStatus;
//!
//! # fn main() -> Result<(), tower_rampart::circuit_breaker::ConfigError> {
//! let breaker = CircuitBreakerLayer::new(
//!     Config::builder()
//!         .name("inventory")
//!         .time_window(Duration::from_secs(30), 10)
//!         .failure_rate(0.5)
//!         .minimum_calls(20)
//!         .slow_calls(Duration::from_secs(2), 0.8)
//!         .build()?,
//! )
//! .classify(HttpStatus::default())
//! .respond_http();
//!
//! let app: axum::Router = axum::Router::new()
//!     .route("/", axum::routing::get(|| async { "hello" }))
//!     .layer(breaker);
//! # let _ = app;
//! # Ok(())
//! # }
//! ```

mod body;
mod breaker;
#[cfg(feature = "axum")]
mod by_route;
mod config;
mod error;
mod events;
mod future;
mod handle;
mod keyed;
mod layer;
mod live;
mod select;
mod service;
mod state;
pub(crate) mod sync;
mod tuning;

#[cfg(all(test, rampart_loom))]
mod loom_tests;
#[cfg(all(test, not(rampart_loom)))]
mod retune_tests;

pub use crate::ConfigError;
pub use body::{BreakerBody, BreakerMode, EndOfStream};
pub use breaker::{Breaker, Permit, Rejected, Snapshot};
#[cfg(feature = "axum")]
pub use by_route::{ByRoute, MatchedRoute};
pub use config::{Builder, Config, WindowKind};
pub use error::{CircuitOpen, PROBLEM_TYPE};
pub use events::{Event, EventKind, metric_names};
pub use future::{EndOfStreamFuture, ResponseFuture};
pub use handle::CircuitBreakerHandle;
pub use keyed::{ByAuthority, KeyFn, Keyed, KeyedBreakers};
pub use layer::{CircuitBreakerLayer, KeyedCircuitBreakerLayer};
pub use live::{LiveBreaker, Reconfigured};
pub use select::{SelectBreaker, Single, Static};
pub use service::CircuitBreaker;
pub use state::State;
