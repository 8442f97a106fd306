//! The injected fault as an error, and its response forms.

use std::fmt::{self, Write};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use super::Fault;
use crate::{mode::ResponseBody, problem};

/// The problem `type` URI of the problem+json answers of a [`ChaosLayer`](super::ChaosLayer) in
/// HTTP response mode.
pub const PROBLEM_TYPE: &str = crate::problems::CHAOS_FAULT_INJECTED;

/// A fault the [`ChaosLayer`](super::ChaosLayer) injected.
///
/// In error mode the layer returns it inside a [`BoxError`](crate::BoxError)
/// (`err.downcast_ref::<Injected>()`); in response mode the injected response's extensions hold
/// it, so tests and fallbacks can tell an injected answer from a real one.
///
/// ```
/// use http::StatusCode;
/// use tower::{Service, ServiceBuilder, ServiceExt};
/// use tower_rampart::chaos::{ChaosLayer, Config, Fault, Injected};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_rampart::BoxError> {
/// let config = Config::builder().fault(Fault::Error).injection_rate(1.0).enabled(true).build()?;
/// let mut svc = ServiceBuilder::new()
///     .layer(ChaosLayer::new(config))
///     .service_fn(|_: ()| async { Ok::<_, std::convert::Infallible>("real") });
/// let err = svc.ready().await?.call(()).await.unwrap_err();
/// let injected = err.downcast_ref::<Injected>().expect("an injected fault");
/// assert_eq!(injected.fault(), &Fault::Error);
/// assert_eq!(err.to_string(), "fault injected by chaos layer `chaos`: error");
///
/// let res = injected.to_http_response::<String>();
/// assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injected {
    fault: Fault,
    layer: std::sync::Arc<str>,
}

impl Injected {
    pub(crate) fn new(fault: Fault, layer: std::sync::Arc<str>) -> Self {
        Injected { fault, layer }
    }

    /// The fault injected.
    pub fn fault(&self) -> &Fault {
        &self.fault
    }

    /// The name of the layer that injected it.
    pub fn layer(&self) -> &str {
        &self.layer
    }

    /// The HTTP answer of a layer in `respond_http` mode: for [`Fault::Http`] its status, with
    /// `Retry-After` when set, and a problem+json body of type [`PROBLEM_TYPE`] or an empty one;
    /// for [`Fault::Grpc`] a trailers-only gRPC response; otherwise `500 Internal Server Error`
    /// with a problem+json body. The response's extensions hold this `Injected`.
    pub fn to_http_response<B: ResponseBody>(&self) -> Response<B> {
        let mut res = match &self.fault {
            Fault::Http {
                status,
                retry_after,
                problem: true,
            } => problem::response(*status, PROBLEM_TYPE, self, *retry_after, B::from_bytes),
            Fault::Http {
                status,
                retry_after,
                problem: false,
            } => plain(*status, *retry_after, B::from_bytes(Bytes::new())),
            Fault::Grpc { .. } => self.grpc(B::from_bytes(Bytes::new())),
            _ => problem::response(
                StatusCode::INTERNAL_SERVER_ERROR,
                PROBLEM_TYPE,
                self,
                None,
                B::from_bytes,
            ),
        };
        res.extensions_mut().insert(self.clone());
        res
    }

    /// The answer of a layer in `respond_grpc` mode: for [`Fault::Grpc`] a trailers-only
    /// response (HTTP 200, `content-type: application/grpc`, `grpc-status`, a percent-encoded
    /// `grpc-message`); for [`Fault::Http`] its status with an empty body (and `Retry-After`),
    /// which a gRPC client maps to a code (503 to UNAVAILABLE); otherwise `grpc-status: 13`
    /// (INTERNAL). The response's extensions hold this `Injected`.
    pub fn to_grpc_response<B: Default>(&self) -> Response<B> {
        let mut res = match &self.fault {
            Fault::Http {
                status,
                retry_after,
                ..
            } => plain(*status, *retry_after, B::default()),
            _ => self.grpc(B::default()),
        };
        res.extensions_mut().insert(self.clone());
        res
    }

    fn grpc<B>(&self, body: B) -> Response<B> {
        let (code, message) = match &self.fault {
            Fault::Grpc { code, message } => (*code as u8, &**message),
            _ => (13, "fault injected"),
        };
        let mut res = Response::new(body);
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-status", HeaderValue::from(u16::from(code)));
        if let Ok(v) = HeaderValue::from_str(&percent_encode(message)) {
            h.insert("grpc-message", v);
        }
        res
    }
}

fn plain<B>(status: StatusCode, retry_after: Option<std::time::Duration>, body: B) -> Response<B> {
    let mut res = Response::new(body);
    *res.status_mut() = status;
    if let Some(wait) = retry_after {
        res.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(problem::retry_after_secs(wait)),
        );
    }
    res
}

/// `grpc-message` encoding: bytes outside printable ASCII, and `%`, as `%XX`.
fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

impl fmt::Display for Injected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "fault injected by chaos layer `{}`: {}",
            self.layer, self.fault
        )
    }
}

impl std::error::Error for Injected {}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::classify::GrpcCode;

    fn injected(fault: Fault) -> Injected {
        Injected::new(fault, "t".into())
    }

    #[test]
    fn http_forms() {
        let busy = Fault::http(StatusCode::SERVICE_UNAVAILABLE)
            .with_retry_after(Duration::from_millis(1500));
        let res = injected(busy).to_http_response::<Bytes>();
        assert_eq!(res.status(), 503);
        assert_eq!(res.headers()[header::RETRY_AFTER], "2");
        assert_eq!(
            res.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let body: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
        assert_eq!(body["type"], PROBLEM_TYPE);
        assert_eq!(body["status"], 503);
        assert!(res.extensions().get::<Injected>().is_some());

        let res =
            injected(Fault::plain_http(StatusCode::TOO_MANY_REQUESTS)).to_http_response::<Bytes>();
        assert_eq!(res.status(), 429);
        assert!(res.body().is_empty());
        assert!(res.headers().get(header::CONTENT_TYPE).is_none());

        let res = injected(Fault::Error).to_http_response::<Bytes>();
        assert_eq!(res.status(), 500);
    }

    #[test]
    fn grpc_forms() {
        let res =
            injected(Fault::grpc(GrpcCode::Unavailable, "down 100%\n")).to_grpc_response::<()>();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["grpc-status"], "14");
        assert_eq!(res.headers()["grpc-message"], "down 100%25%0A");
        assert_eq!(res.headers()[header::CONTENT_TYPE], "application/grpc");
        let res = injected(Fault::Error).to_grpc_response::<()>();
        assert_eq!(res.headers()["grpc-status"], "13");
        let res = injected(Fault::http(StatusCode::SERVICE_UNAVAILABLE)).to_grpc_response::<()>();
        assert_eq!(res.status(), 503);
    }
}
