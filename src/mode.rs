//! Mode markers: what a layer does with its own refusals and timeouts, and which of those a
//! fallback recognises. Every layer starts in its default mode and switches with the same
//! method names.
//!
//! | switch | marker | layers | a refusal or timeout becomes |
//! |---|---|---|---|
//! | (default) | [`ReturnError`] | circuit breaker, timeout | an error inside a [`BoxError`](crate::BoxError) (`CircuitOpen`, `Elapsed`) |
//! | `.respond_http()` | [`RespondHttp`] | circuit breaker (503), timeout (504, or the status given to `respond_http_with`) | an `application/problem+json` response; the service keeps the inner error type |
//! | `.respond_grpc()` | [`RespondGrpc`] | timeout | a trailers-only gRPC response with `grpc-status: 4` (DEADLINE_EXCEEDED) |
//!
//! A fallback recognises a breaker's refusal and a timeout by their errors in every mode; in
//! HTTP mode it also recognises the responses the layers above answer:
//!
//! | switch | marker | layer | recognises |
//! |---|---|---|---|
//! | (default) | [`AnyResponse`] | fallback | errors only; responses of any type |
//! | `.recognise_http()` | [`RecogniseHttp`] | fallback | errors, and the 503 / 504 / gRPC responses of layers in `respond_http` or `respond_grpc` mode (`http::Response`s) |
//!
//! ```
//! use std::time::Duration;
//! use tower_rampart::{
//!     circuit_breaker::{CircuitBreakerLayer, Config},
//!     fallback::FallbackLayer,
//!     mode::{RecogniseHttp, RespondHttp},
//!     timeout::TimeoutLayer,
//! };
//!
//! # fn main() -> Result<(), tower_rampart::ConfigError> {
//! let _: TimeoutLayer<RespondHttp> = TimeoutLayer::new(Duration::from_secs(5))?.respond_http();
//! let breaker = CircuitBreakerLayer::new(Config::builder().build()?).respond_http();
//! let _: FallbackLayer<_, _, RecogniseHttp> = FallbackLayer::value(()).recognise_http();
//! # let _ = breaker;
//! # Ok(())
//! # }
//! ```

use http::StatusCode;

/// Mode marker: a layer's refusals and timeouts are returned as errors inside a
/// [`BoxError`](crate::BoxError) (the default mode of the circuit breaker and the timeout).
#[derive(Debug, Clone, Copy, Default)]
pub struct ReturnError;

/// Mode marker: a layer answers its refusals and timeouts with an HTTP response and a
/// problem+json body, and the service keeps its inner error type (an axum `Router` stays
/// `Infallible`). A circuit breaker answers `503 Service Unavailable` with `Retry-After`; a
/// timeout `504 Gateway Timeout`, or the status given to
/// [`TimeoutLayer::respond_http_with`](crate::timeout::TimeoutLayer::respond_http_with).
#[derive(Debug, Clone, Copy)]
pub struct RespondHttp {
    // The timeout's status code as a whole word (see the timeout future's fields).
    pub(crate) status: u64,
}

impl RespondHttp {
    pub(crate) fn new(status: StatusCode) -> Self {
        RespondHttp {
            status: u64::from(status.as_u16()),
        }
    }

    pub(crate) fn status_of(code: u64) -> StatusCode {
        u16::try_from(code)
            .ok()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::GATEWAY_TIMEOUT)
    }
}

/// Mode marker: a timeout answers a gRPC trailers-only DEADLINE_EXCEEDED, and the service keeps
/// its inner error type.
#[derive(Debug, Clone, Copy)]
pub struct RespondGrpc {
    pub(crate) honour_grpc_timeout: bool,
}

/// Mode marker: a fallback for responses of any type; breaker and timeout triggers match their
/// errors (the default mode of [`FallbackLayer`](crate::fallback::FallbackLayer)).
#[derive(Debug, Clone, Copy, Default)]
pub struct AnyResponse;

/// Mode marker: a fallback for `http::Response`s; breaker and timeout triggers also match the
/// 503 / 504 / gRPC responses those layers answer in [`RespondHttp`] and [`RespondGrpc`] mode
/// (they mark them in the response's extensions).
#[derive(Debug, Clone, Copy, Default)]
pub struct RecogniseHttp;
