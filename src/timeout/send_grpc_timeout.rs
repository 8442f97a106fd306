//! Sends the current deadline on as `grpc-timeout`, for stacks whose timeouts are in error mode
//! (the standard client pipeline) and so cannot touch the request themselves.

use std::task::{Context, Poll};

use http::{HeaderMap, header::CONTENT_TYPE};
use tower_layer::Layer;
use tower_service::Service;

use super::{Deadline, encode_grpc_timeout, parse_grpc_timeout};

/// Sets `grpc-timeout` on gRPC requests (`content-type: application/grpc*`) to the time left
/// before the current [`Deadline`] (that of the innermost timeout around it), unless the request
/// already carries one no longer than that. Other requests, and calls made with no deadline
/// current, pass unchanged.
///
/// The standard client pipeline puts one inside its attempt timeout. A timeout in
/// [`respond_grpc`](super::TimeoutLayer::respond_grpc) mode does the same by itself; this layer
/// is for stacks whose timeouts return errors, placed inside the innermost of them.
///
/// ```
/// use std::time::Duration;
/// use tower::{Service, ServiceBuilder, ServiceExt};
/// use tower_rampart::timeout::{SendGrpcTimeoutLayer, TimeoutLayer};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), tower_rampart::BoxError> {
/// let mut svc = ServiceBuilder::new()
///     .layer(TimeoutLayer::new(Duration::from_millis(1500))?)
///     .layer(SendGrpcTimeoutLayer)
///     .service_fn(|req: http::Request<()>| async move {
///         Ok::<_, std::convert::Infallible>(req.headers().get("grpc-timeout").cloned())
///     });
/// let req = http::Request::post("/pkg.Svc/Call")
///     .header("content-type", "application/grpc")
///     .body(())?;
/// let sent = svc.ready().await?.call(req).await?;
/// assert_eq!(sent.unwrap(), "1500000u");
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct SendGrpcTimeoutLayer;

impl<S> Layer<S> for SendGrpcTimeoutLayer {
    type Service = SendGrpcTimeout<S>;

    fn layer(&self, inner: S) -> SendGrpcTimeout<S> {
        SendGrpcTimeout { inner }
    }
}

/// The service of [`SendGrpcTimeoutLayer`].
#[derive(Debug, Clone)]
pub struct SendGrpcTimeout<S> {
    inner: S,
}

impl<S> SendGrpcTimeout<S> {
    inner_service_accessors!();
}

/// Sets `grpc-timeout` in `headers` when they are a gRPC call's and a deadline is current.
#[inline]
fn send(headers: &mut HeaderMap) {
    let grpc = headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        set(headers);
    }
}

#[cold]
fn set(headers: &mut HeaderMap) {
    let Some(deadline) = Deadline::current() else {
        return;
    };
    let left = deadline.remaining();
    let existing = headers.get(GRPC_TIMEOUT).and_then(parse_grpc_timeout);
    if existing.is_none_or(|e| e > left) {
        headers.insert(GRPC_TIMEOUT, encode_grpc_timeout(left));
    }
}

const GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

impl<S, B> Service<http::Request<B>> for SendGrpcTimeout<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, mut req: http::Request<B>) -> S::Future {
        send(req.headers_mut());
        self.inner.call(req)
    }
}

#[cfg(feature = "reqwest")]
impl<S> Service<reqwest::Request> for SendGrpcTimeout<S>
where
    S: Service<reqwest::Request>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, mut req: reqwest::Request) -> S::Future {
        send(req.headers_mut());
        self.inner.call(req)
    }
}
