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
//!
//! ## Response bodies
//!
//! In HTTP mode a layer builds its own answer, so it must be able to make the response body type
//! of the service it wraps: that type implements [`ResponseBody`]. The crate implements it for
//! the bodies axum, tonic and hyper services answer with:
//!
//! | body | for |
//! |---|---|
//! | `axum::body::Body` (feature `axum`, on by default) | axum routers and handlers |
//! | `tonic::body::Body` (feature `tonic`) | tonic servers |
//! | `http_body_util::Full<D>`, `BoxBody<D, E>`, `UnsyncBoxBody<D, E>` (`D: From<Bytes>`) | hyper services |
//! | `String`, `Bytes`, `Vec<u8>` | tests and simple services |
//!
//! A body the layers cannot build (a hyper client's `Incoming`, a streaming body of your own)
//! fails to compile with a message naming `ResponseBody`: box the body first
//! (`res.map(BodyExt::boxed_unsync)`) or implement the trait for your type.

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{
    BodyExt, Full,
    combinators::{BoxBody, UnsyncBoxBody},
};

/// A response body the layers can build their own answers in: the circuit breaker's 503 and
/// the timeout's 504 problem+json bodies in [`RespondHttp`] mode, and the canned response of
/// [`FallbackLayer::response`](crate::fallback::FallbackLayer::response).
///
/// Implemented for `axum::body::Body` (feature `axum`), `tonic::body::Body` (feature `tonic`),
/// `http_body_util::Full<D>`, `BoxBody<D, E>` and `UnsyncBoxBody<D, E>` (for any `D:
/// From<Bytes>` and any error `E`), `String`, `Bytes` and `Vec<u8>`. The bytes are shared, not
/// copied, except for `String`, which reuses them when they are not shared and checks they are
/// UTF-8 (the crate's own answers always are).
///
/// Your own body type can implement it:
///
/// ```
/// use bytes::Bytes;
/// use tower_rampart::mode::ResponseBody;
///
/// struct MyBody(Bytes);
///
/// impl ResponseBody for MyBody {
///     fn from_bytes(bytes: Bytes) -> Self {
///         MyBody(bytes)
///     }
/// }
/// ```
///
/// A body it is not implemented for is named in the error wherever a function requires the
/// stack to be a service (axum's `Router::layer` and `axum::serve`, tonic's `Server::layer`,
/// `ServiceBuilder::check_service`):
///
/// ```compile_fail
/// use std::{convert::Infallible, time::Duration};
/// use tower::{Layer, Service};
/// use tower_rampart::timeout::TimeoutLayer;
///
/// struct Streaming; // no way to build one from bytes
///
/// fn serve<S: Service<()>>(_: S) {}
///
/// let inner = tower::service_fn(|_: ()| async { Ok::<_, Infallible>(http::Response::new(Streaming)) });
/// // error[E0277]: `Streaming` is not a response body the timeout or breaker can build in HTTP mode
/// serve(TimeoutLayer::new(Duration::from_secs(1)).unwrap().respond_http().layer(inner));
/// ```
///
/// A method call on the stack itself (`svc.oneshot(req)`) only says that the method's "trait
/// bounds were not satisfied" (rustc does not name the inner bound there): check the body type.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a response body the timeout or breaker can build in HTTP mode",
    label = "the layer in `respond_http` mode must build `{Self}` for its 503 / 504 answer",
    note = "`tower_rampart::mode::ResponseBody` is implemented for axum::body::Body (feature `axum`), tonic::body::Body (feature `tonic`), http_body_util::{{Full, BoxBody, UnsyncBoxBody}}, String, Bytes and Vec<u8>",
    note = "box a streaming body before the layer (`res.map(BodyExt::boxed_unsync)`), implement `ResponseBody` for your type, or leave the layer in error mode"
)]
pub trait ResponseBody: Sized {
    /// A body holding `bytes` (a problem+json document, or a canned fallback response).
    fn from_bytes(bytes: Bytes) -> Self;
}

impl ResponseBody for Bytes {
    #[inline]
    fn from_bytes(bytes: Bytes) -> Self {
        bytes
    }
}

impl ResponseBody for Vec<u8> {
    #[inline]
    fn from_bytes(bytes: Bytes) -> Self {
        // Reuses the buffer when `bytes` is its only owner.
        Vec::from(bytes)
    }
}

impl ResponseBody for String {
    #[inline]
    fn from_bytes(bytes: Bytes) -> Self {
        String::from_utf8(Vec::from(bytes))
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }
}

impl<D> ResponseBody for Full<D>
where
    D: bytes::Buf + From<Bytes>,
{
    #[inline]
    fn from_bytes(bytes: Bytes) -> Self {
        Full::new(D::from(bytes))
    }
}

impl<D, E> ResponseBody for BoxBody<D, E>
where
    D: bytes::Buf + From<Bytes> + Send + Sync + 'static,
    E: 'static,
{
    fn from_bytes(bytes: Bytes) -> Self {
        BoxBody::new(Full::new(D::from(bytes)).map_err(|never| match never {}))
    }
}

impl<D, E> ResponseBody for UnsyncBoxBody<D, E>
where
    D: bytes::Buf + From<Bytes> + Send + 'static,
    E: 'static,
{
    fn from_bytes(bytes: Bytes) -> Self {
        UnsyncBoxBody::new(Full::new(D::from(bytes)).map_err(|never| match never {}))
    }
}

#[cfg(feature = "axum")]
impl ResponseBody for axum_core::body::Body {
    #[inline]
    fn from_bytes(bytes: Bytes) -> Self {
        axum_core::body::Body::from(bytes)
    }
}

#[cfg(feature = "tonic")]
impl ResponseBody for tonic::body::Body {
    fn from_bytes(bytes: Bytes) -> Self {
        tonic::body::Body::new(Full::new(bytes))
    }
}

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

/// What a layer's future ends a call with instead of the inner call's output (a timeout, an
/// injected fault), in each mode: the error of [`ReturnError`], the response of
/// [`RespondHttp`], the response of [`RespondGrpc`]. The futures' `Future` impls are
/// `mode_futures!`.
pub(crate) trait ModeAnswer {
    /// The error returned in [`ReturnError`] mode.
    fn into_error(self) -> crate::BoxError;

    /// The response answered in [`RespondHttp`] mode.
    fn into_http<B: ResponseBody>(self) -> http::Response<B>;

    /// The response answered in [`RespondGrpc`] mode.
    fn into_grpc<B: Default>(self) -> http::Response<B>;
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
