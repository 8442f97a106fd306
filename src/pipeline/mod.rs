//! Standard pipelines: the usual stack of layers in one line, every stage overridable.
//!
//! - [`StandardClientLayer`], for HTTP clients (reqwest, or any `http::Request` client such as
//!   hyper-util's), in the spirit of Microsoft's standard resilience handler, outermost first:
//!   total timeout > retry (with a budget) > circuit breaker per authority > attempt timeout.
//! - [`StandardServerLayer`], for axum routers, outermost first: fallback > circuit breaker
//!   (503) > timeout (504), each answering proper HTTP responses so the router stays
//!   `Infallible`.

mod client;
mod server;

pub use client::{ClientBuilder, StandardClient, StandardClientLayer};
pub use server::{NoFallback, ServerBuilder, StandardServer, StandardServerLayer};
