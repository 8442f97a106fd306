//! The timeout error and its response forms.

use std::{fmt, time::Duration};

use http::{HeaderValue, Response, StatusCode, header};

use super::DeadlineOrigin;
use crate::{mode::ResponseBody, problem};

/// The call took longer than the timeout.
///
/// In error mode the layer returns it inside a [`BoxError`](crate::BoxError):
/// `err.downcast_ref::<Elapsed>()`.
///
/// It names the timeout that ran out. That is the layer's own, unless a deadline cut it short:
/// an attempt timeout shrunk to the deadline of a total timeout outside (the last attempt of a
/// retried call) fails with the total timeout, and says so
/// ([`deadline_origin`](Self::deadline_origin)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed {
    after: Duration,
    origin: Option<DeadlineOrigin>,
}

impl Elapsed {
    pub(crate) fn new(after: Duration) -> Self {
        Elapsed {
            after,
            origin: None,
        }
    }

    /// The timeout of `origin` ran out (or `None`: the layer's own).
    pub(crate) fn with_origin(after: Duration, origin: Option<DeadlineOrigin>) -> Self {
        Elapsed { after, origin }
    }

    /// The timeout that ran out: the layer's own, or, when a deadline cut it short, the
    /// timeout that set the deadline (a total timeout outside, a gRPC client's `grpc-timeout`,
    /// the time a caller's [`Deadline::scope_call`](super::Deadline::scope_call) gave).
    pub fn after(&self) -> Duration {
        self.after
    }

    /// What set the deadline that ran out, when it was not the layer's own timeout.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower::{Service, ServiceBuilder, ServiceExt};
    /// use tower_rampart::{
    ///     backoff::Backoff,
    ///     retry::RetryLayer,
    ///     timeout::{DeadlineOrigin, Elapsed, TimeoutLayer},
    /// };
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), tower_rampart::BoxError> {
    /// let retry = RetryLayer::builder()
    ///     .max_attempts(3)
    ///     .backoff(Backoff::constant(Duration::from_millis(100)))
    ///     .build()?;
    /// let mut svc = ServiceBuilder::new()
    ///     .layer(TimeoutLayer::new(Duration::from_millis(2500))?) // the whole call
    ///     .layer(retry)
    ///     .layer(TimeoutLayer::new(Duration::from_secs(1))?) // each attempt
    ///     .service_fn(|_: ()| async {
    ///         tokio::time::sleep(Duration::from_secs(60)).await;
    ///         Ok::<_, std::convert::Infallible>(())
    ///     });
    /// // Attempts at 0, 1.1 and 2.2 s; the last one is cut to the 300 ms left.
    /// let err = svc.ready().await?.call(()).await.unwrap_err();
    /// let elapsed = err.downcast_ref::<Elapsed>().unwrap();
    /// assert_eq!(elapsed.after(), Duration::from_millis(2500), "the total ran out");
    /// assert_eq!(elapsed.deadline_origin(), Some(DeadlineOrigin::Timeout));
    /// # Ok(())
    /// # }
    /// ```
    pub fn deadline_origin(&self) -> Option<DeadlineOrigin> {
        self.origin
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
        )?;
        match self.origin {
            Some(origin) => write!(f, " ({origin})"),
            None => Ok(()),
        }
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
