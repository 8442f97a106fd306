//! Fault injection (feature `chaos`): make a chosen fraction of calls slow, failed or silent, to
//! check that timeouts, retries, breakers and fallbacks do their job before production does it
//! for you.
//!
//! A [`ChaosLayer`] injects one [`Fault`] into a fraction of calls (the injection rate, 0 to 1):
//!
//! | fault | what the caller sees |
//! |---|---|
//! | [`Fault::Latency`] | the call, after a delay |
//! | [`Fault::Error`] | an [`Injected`] error (error mode), a 500 (HTTP mode), INTERNAL (gRPC mode) |
//! | [`Fault::Http`] | an HTTP status, problem+json of type [`PROBLEM_TYPE`] or empty, with optional `Retry-After` |
//! | [`Fault::Grpc`] | a trailers-only gRPC response with `grpc-status` and `grpc-message` |
//! | [`Fault::Abort`] | nothing: the call never completes until the caller drops it |
//!
//! Stack layers to combine faults (e.g. 200 ms latency and 503s, each with its own rate).
//!
//! - **Off unless enabled**, in the [`Config`] or at run time through a [`ChaosHandle`] shared
//!   by every service the layer made; a disabled layer costs one relaxed atomic load per call.
//! - **Per request**: [`ChaosLayer::when`] takes a predicate (`Fn(&Req) -> bool`: a header, a
//!   route).
//! - **Reproducible**: the random source is seeded ([`Builder::seed`]); the `n`-th decision
//!   depends only on the seed and `n`, so a fixed seed injects the same number of faults into
//!   `N` calls every run, however they interleave. A decision is a few atomics and no lock.
//! - **Metrics** (feature `metrics`): a counter of injected faults by kind,
//!   [`metric_names::INJECTED`]; and [`ChaosHandle::injected`].
//!
//! Put the layer on a server to see how its clients cope, or on a client to see how it copes
//! with its downstream.
//!
//! ```
//! use std::time::Duration;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_rampart::chaos::{ChaosLayer, Config, Fault, Injected};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_rampart::BoxError> {
//! let chaos = ChaosLayer::new(
//!     Config::builder()
//!         .name("ledger")
//!         .fault(Fault::Error)
//!         .injection_rate(0.5)
//!         .enabled(true)
//!         .seed(42)
//!         .build()?,
//! );
//! let handle = chaos.handle();
//! let mut ledger = ServiceBuilder::new()
//!     .layer(chaos)
//!     .service_fn(|n: u32| async move { Ok::<_, std::convert::Infallible>(n) });
//!
//! let mut failed = 0;
//! for n in 0..100 {
//!     if let Err(e) = ledger.ready().await?.call(n).await {
//!         assert!(e.downcast_ref::<Injected>().is_some());
//!         failed += 1;
//!     }
//! }
//! assert_eq!(failed, handle.injected());
//! assert!((25..=75).contains(&failed));
//!
//! handle.disable();
//! assert_eq!(ledger.ready().await?.call(7).await?, 7);
//! # Ok(())
//! # }
//! ```
//!
//! # Driving it from configuration
//!
//! [`Config`] and [`Fault`] are plain data: a configuration file's `chaos` section can map onto
//! [`Config::builder`] (`enabled`, `injection_rate`, `seed`, and a fault such as
//! `{ http: { status: 503, retry_after: 1s } }` or `{ latency: 200ms }`), validated by
//! [`Builder::build`]. A registry keeps the [`ChaosHandle`] of each layer it built and, on
//! reload, validates the new section whole and then calls [`ChaosHandle::apply`], which swaps
//! the settings in at once; a policy without a `chaos` section builds no layer (or a disabled
//! one), so it never injects.

mod config;
mod error;
mod future;
mod handle;
mod layer;
mod service;

pub use crate::ConfigError;
pub use config::{Builder, Config, Fault};
pub use error::{Injected, PROBLEM_TYPE};
pub use future::ResponseFuture;
pub use handle::{ChaosHandle, metric_names};
pub use layer::{Always, ChaosLayer, Predicate};
pub use service::Chaos;
