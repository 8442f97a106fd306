//! Health and readiness from breaker state and store reachability, in the shape health-check
//! conventions use (draft-inadarei-api-health-check, content type `application/health+json`).
//!
//! - [`Readiness`] answers "send me traffic?": 200 with `pass` or `warn`, 503 with `fail` when a
//!   breaker marked critical is open (for a keyed family, when enough of its breakers are:
//!   [`Readiness::critical_when`]) or a store does not answer in time. Point the
//!   orchestrator's readiness probe (Kubernetes `readinessProbe`) at it.
//! - [`Liveness`] answers "is the process alive?": always 200. Liveness must **not** depend on
//!   breakers or stores: a downstream outage would then make the orchestrator restart every
//!   instance, healthy ones included, and take the cache of open breakers with them.
//!
//! ```json
//! {
//!   "status": "fail",
//!   "checks": {
//!     "payments:state": [{"componentId": "payments", "componentType": "circuit_breaker",
//!       "status": "fail", "observedValue": "open",
//!       "output": "open, next probe in 4.2 s; the breaker is critical",
//!       "time": "2026-12-02T08:09:26.123Z"}],
//!     "idempotency_store:responseTime": [{"componentId": "idempotency_store",
//!       "componentType": "datastore", "status": "pass", "observedValue": 0.412,
//!       "observedUnit": "ms", "time": "2026-12-02T08:09:30.001Z"}]
//!   }
//! }
//! ```
//!
//! A breaker's `time` is when it entered its state; a store's, when it was asked. A breaker's
//! `observedValue` is its state read on the clock (see
//! [`Snapshot`](crate::circuit_breaker::Snapshot)).
//!
//! ```
//! use std::time::Duration;
//! use tower_rampart::circuit_breaker::{CircuitBreakerLayer, Config};
//! use tower_rampart::health::{Liveness, Readiness};
//! use tower_rampart::idempotency::MemoryStore;
//!
//! # fn main() -> Result<(), tower_rampart::ConfigError> {
//! let payments = CircuitBreakerLayer::new(Config::builder().name("payments").build()?);
//! let search = CircuitBreakerLayer::new(Config::builder().name("search").build()?);
//! let store = MemoryStore::new();
//!
//! let readiness = Readiness::new()
//!     .critical(payments.handle()) // open: 503
//!     .breaker(search.handle()) // open: 200 with "warn"
//!     .store(store.clone()) // no answer within 500 ms: 503
//!     .store_timeout(Duration::from_millis(500));
//!
//! let app: axum::Router = axum::Router::new()
//!     .route_service("/readyz", readiness)
//!     .route_service("/livez", Liveness);
//! # let _ = app;
//! # Ok(())
//! # }
//! ```

mod quorum;
mod readiness;
mod report;

use std::{
    convert::Infallible,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body_util::Full;

pub use quorum::OpenBreakers;
pub use readiness::{BreakerSource, DEFAULT_STORE_NAME, FromFn, Readiness, from_fn};
pub use report::{Check, HEALTH_JSON, ObservedValue, Report, Status};

/// A liveness probe: always 200 with `{"status":"pass"}` (`application/health+json`), whatever
/// breakers and stores say. See the [module documentation](self) for why.
#[derive(Debug, Clone, Copy, Default)]
pub struct Liveness;

impl Liveness {
    /// The answer.
    pub fn response() -> http::Response<Full<Bytes>> {
        Report::new(Vec::new()).into_response()
    }
}

impl<B> tower_service::Service<http::Request<B>> for Liveness {
    type Response = http::Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<B>) -> Self::Future {
        std::future::ready(Ok(Liveness::response()))
    }
}
