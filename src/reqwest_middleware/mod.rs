//! [`reqwest-middleware`](https://docs.rs/reqwest-middleware) integration (feature
//! `reqwest-middleware`): the crate's breaker, retry and timeout as a
//! [`reqwest_middleware::Middleware`], so a `ClientWithMiddleware` keeps `.send()`, and other
//! middlewares (`reqwest-tracing`, `reqwest-retry`, your own) stack around and inside it.
//!
//! - [`RampartMiddleware`]: runs the [standard client
//!   pipeline](crate::pipeline::StandardClientLayer) or any tower layer of `reqwest::Request`s.
//! - [`NextService`]: the rest of the chain as the tower service that layer wraps, called once
//!   per attempt.
//!
//! Where it goes in the chain: middlewares placed before it see one call per `.send()`; those
//! after it see every attempt (put `reqwest-tracing` after it for a span per attempt, before it
//! for one per call). Use it instead of `reqwest-retry`, not with it: two retry layers
//! multiply attempts, and `reqwest-retry` outside wraps every error in its `RetryError` (the
//! `reqwest_middleware::Error` it holds is the one this middleware returned).
//!
//! Cost: `reqwest-middleware` boxes each middleware's future; on top of that each call builds
//! the layer's services around the chain (reference counts, no allocation) and each attempt
//! boxes one future that owns its copy of the extensions (copied only when there are some).

mod error;
mod middleware;
mod next;

pub use middleware::RampartMiddleware;
pub use next::{AttemptFuture, NextService};
