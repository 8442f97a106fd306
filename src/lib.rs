//! # tower-rampart
//!
//! Resilience middleware for [tower](https://docs.rs/tower): layers that keep a service standing
//! when what it calls falls over. Native to axum routers, tonic channels and reqwest clients.
//!
//! | layer | what it does | module |
//! |---|---|---|
//! | circuit breaker | stops calling a failing downstream, probes, recovers; count or time windows, slow calls, keyed per host/route | [`circuit_breaker`] |
//! | retry | jittered backoff, attempt and elapsed limits, `Retry-After`, budgets, HTTP method safety | [`retry`], [`backoff`] |
//! | timeout | per attempt or total; an error, a 504 or a gRPC DEADLINE_EXCEEDED | [`timeout`] |
//! | fallback | degraded responses for the failures you choose | [`fallback`] |
//! | pipelines | the standard client and server stacks in one line | [`pipeline`] |
//! | Idempotency-Key | a retried POST never runs twice; memory, Redis and Redis Cluster stores | [`idempotency`] |
//! | classification | one success/failure/ignore vocabulary for HTTP, gRPC and errors, shared by every layer | [`classify`] |
//! | copying requests | bodies held in memory and copies of requests, for retries, backup services and idempotency | [`replay`] |
//! | streams | the response types whose body layers follow to its end (end-of-stream outcomes, body-inclusive timeouts) | [`stream`] |
//! | modes | one vocabulary for what a layer does with a refusal or a timeout: `.respond_http()`, `.respond_grpc()` | [`mode`] |
//! | problem types | every `application/problem+json` `type` the layers send, documented | [`problems`] |
//! | fault injection (feature `chaos`) | latency, errors, HTTP and gRPC statuses or aborted calls in a seeded fraction of calls, switchable at run time | `chaos` |
//! | health and readiness | breaker snapshots and store reachability as an `application/health+json` readiness probe | [`health`] |
//! | configuration (feature `serde`) | every layer's settings as YAML, TOML or JSON, with the design-document vocabulary | `config` |
//! | registry (feature `serde`) | named policies over shared defaults, built by name, reloaded live | `registry` |
//! | reqwest-middleware (feature `reqwest-middleware`) | the client pipeline as one middleware of a `ClientWithMiddleware` | `reqwest_middleware` |
//!
//! ## Quick start
//!
//! ```
//! use std::time::Duration;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_rampart::circuit_breaker::{CircuitBreakerLayer, CircuitOpen, Config};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_rampart::BoxError> {
//! let breaker = CircuitBreakerLayer::new(
//!     Config::builder()
//!         .name("ledger")
//!         .count_window(20)
//!         .minimum_calls(10)
//!         .failure_rate(0.5)
//!         .open_duration(Duration::from_secs(5))
//!         .build()?,
//! );
//! let mut ledger = ServiceBuilder::new()
//!     .layer(breaker)
//!     .service_fn(|n: u32| async move { if n % 2 == 0 { Ok(n) } else { Err("odd") } });
//!
//! for n in 0..10 {
//!     let _ = ledger.ready().await?.call(n).await;
//! }
//! // Half of ten calls failed: the breaker is open and refuses at once.
//! let err = ledger.ready().await?.call(2).await.unwrap_err();
//! let open = err.downcast_ref::<CircuitOpen>().expect("refused by the breaker");
//! assert!(open.retry_after().unwrap() <= Duration::from_secs(5));
//! # Ok(())
//! # }
//! ```
//!
//! ## Features
//!
//! - `metrics` (default): counters and gauges through the [`metrics`](https://docs.rs/metrics)
//!   facade.
//! - `tracing`: `tracing` events (state transitions, retries, refusals, timeouts) and a span per
//!   call and per attempt of a retry layer.
//! - `tonic`: classify `tonic::Status` errors by gRPC code.
//! - `reqwest`: classify `reqwest::Response`s, retry `reqwest::Request`s, key breakers by their
//!   authority.
//! - `redis`: `RedisStore` for the Idempotency-Key layer.
//! - `redis-tls`: `rediss://` URLs for `RedisStore` (rustls with aws-lc-rs, no system
//!   OpenSSL; turns `redis` on).
//! - `axum` (default): build `axum::body::Body` answers (breaker 503, timeout 504, canned
//!   fallbacks) through `axum-core`, and key breakers by axum's `MatchedPath` (per-route
//!   breakers).
//! - `reqwest-middleware`: `RampartMiddleware`, the standard client pipeline inside a
//!   `reqwest_middleware::ClientWithMiddleware` (turns `reqwest` on).
//! - `chaos`: `ChaosLayer`, fault injection for testing your own stacks.
//! - `serde`: the `config` module (settings as data) and the `registry` (named policies, live
//!   reload); `yaml` and `toml` add those file formats.
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[macro_use]
mod macros;

pub mod backoff;
pub mod call;
mod catch;
#[cfg(feature = "chaos")]
pub mod chaos;
pub mod circuit_breaker;
pub mod classify;
#[cfg(feature = "serde")]
pub mod config;
mod error;
pub mod fallback;
pub mod health;
pub mod idempotency;
mod listener;
pub mod message;
pub mod mode;
pub mod pipeline;
mod problem;
pub mod problems;
#[cfg(feature = "serde")]
pub mod registry;
pub mod replay;
#[cfg(feature = "reqwest-middleware")]
pub mod reqwest_middleware;
pub mod retry;
pub mod stream;
mod telemetry;
mod time;
pub mod timeout;
mod window;

pub use error::{BoxError, ConfigError, MAX_DURATION};

// Every Rust snippet in the README is compiled (and run where it can be) as a doc test, so the
// README cannot drift from the API. A snippet users copy must not leave them a warning.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
#[doc(test(attr(deny(unused_imports, unused_mut, unused_variables))))]
mod readme_doctests {}
