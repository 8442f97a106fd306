//! The timeout error and its response forms.

use std::{fmt, time::Duration};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

/// The call took longer than the timeout.
///
/// In error mode the layer returns it inside a [`BoxError`](crate::BoxError):
/// `err.downcast_ref::<Elapsed>()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed {
    after: Duration,
}

impl Elapsed {
    pub(crate) fn new(after: Duration) -> Self {
        Elapsed { after }
    }

    /// The timeout that ran out.
    pub fn after(&self) -> Duration {
        self.after
    }

    /// An HTTP response with `status` (504 by default in the layer) and a problem+json body.
    pub fn to_http_response<B: From<Bytes>>(&self, status: StatusCode) -> Response<B> {
        let body = format!(
            "{{\"type\":\"{TIMEOUT_PROBLEM_TYPE}\",\"title\":\"Request timed out\",\"status\":{},\"detail\":\"{self}\"}}",
            status.as_u16()
        );
        let mut res = Response::new(B::from(Bytes::from(body)));
        *res.status_mut() = status;
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        res.extensions_mut().insert(*self);
        res
    }

    /// A gRPC trailers-only response: HTTP 200, `grpc-status: 4` (DEADLINE_EXCEEDED) and a
    /// `grpc-message`, with an empty body.
    pub fn to_grpc_response<B: Default>(&self) -> Response<B> {
        let mut res = Response::new(B::default());
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-status", HeaderValue::from_static("4"));
        h.insert(
            "grpc-message",
            HeaderValue::from_static("Timeout%20expired"),
        );
        res.extensions_mut().insert(*self);
        res
    }
}

/// The problem `type` URI of the 504 answered in HTTP response mode.
pub const TIMEOUT_PROBLEM_TYPE: &str =
    "https://docs.rs/tower-rampart/latest/tower_rampart/problems#timeout";

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "request timed out after {:.3}s",
            self.after.as_secs_f64()
        )
    }
}

impl std::error::Error for Elapsed {}
