//! The timeout error and its response forms.

use std::{fmt, time::Duration};

use http::{HeaderValue, Response, StatusCode, header};

use crate::{mode::ResponseBody, problem};

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

    /// An HTTP response with `status` (504 by default in the layer) and an
    /// `application/problem+json` body of type [`timeout`](crate::problems#timeout). The
    /// response's extensions hold this `Elapsed`.
    pub fn to_http_response<B: ResponseBody>(&self, status: StatusCode) -> Response<B> {
        let mut res = problem::response(status, TIMEOUT_PROBLEM_TYPE, self, None, B::from_bytes);
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

/// The problem `type` URI of the 504 answered in HTTP response mode:
/// [`problems::TIMEOUT`](crate::problems::TIMEOUT).
pub const TIMEOUT_PROBLEM_TYPE: &str = crate::problems::TIMEOUT;

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

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn http_form() {
        let res = Elapsed::new(Duration::from_millis(1500))
            .to_http_response::<Bytes>(StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(res.status(), 504);
        assert_eq!(
            res.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        assert!(res.headers().get(header::RETRY_AFTER).is_none());
        assert!(res.extensions().get::<Elapsed>().is_some());
        let body: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
        assert_eq!(body["type"], TIMEOUT_PROBLEM_TYPE);
        assert_eq!(body["title"], "Gateway Timeout");
        assert_eq!(body["status"], 504);
        assert_eq!(body["detail"], "request timed out after 1.500s");
    }
}
