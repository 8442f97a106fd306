//! The timeout service and its modes.

use std::{
    task::{Context, Poll},
    time::Duration,
};

use http::{Request, Response};
use tower_service::Service;

use tower_layer::Layer;

use super::{
    DeadlineOrigin, HeadOnly, Hooks, ResponseFuture, TimeoutLayer, encode_grpc_timeout,
    future::Start, parse_grpc_timeout, reload::Limit,
};
use crate::{
    BoxError, ConfigError,
    mode::{RespondGrpc, RespondHttp, ResponseBody, ReturnError},
};

/// A service whose calls time out. Made by [`TimeoutLayer`](super::TimeoutLayer).
///
/// `C` says what the timeout covers: [`HeadOnly`] (the default) or, with
/// [`TimeoutLayer::including_body`](super::TimeoutLayer::including_body),
/// [`IncludingBody`](super::IncludingBody).
#[derive(Debug, Clone)]
pub struct Timeout<S, M, C = HeadOnly> {
    pub(crate) inner: S,
    // Read once per call: a call keeps the timeout it started with.
    pub(crate) timeout: Limit,
    pub(crate) mode: M,
    pub(crate) hooks: Hooks,
    pub(crate) coverage: C,
}

impl<S> Timeout<S, ReturnError> {
    /// `inner` with calls that fail with [`Elapsed`](super::Elapsed) after `timeout`: the same
    /// as [`TimeoutLayer::new(timeout)`](super::TimeoutLayer::new)`?.layer(inner)`.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when `timeout` is zero.
    pub fn new(inner: S, timeout: Duration) -> Result<Self, ConfigError> {
        Ok(TimeoutLayer::new(timeout)?.layer(inner))
    }
}

impl<S, M, C> Timeout<S, M, C> {
    inner_service_accessors!();
}

impl<S, Req> Service<Req> for Timeout<S, ReturnError>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, ReturnError>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        call(
            &mut self.inner,
            req,
            self.timeout.get_with_nanos(),
            DeadlineOrigin::Timeout,
            0,
            &self.hooks,
            keep,
        )
    }
}

impl<S, Req, B> Service<Req> for Timeout<S, RespondHttp>
where
    S: Service<Req, Response = Response<B>>,
    B: ResponseBody,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, RespondHttp>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        call(
            &mut self.inner,
            req,
            self.timeout.get_with_nanos(),
            DeadlineOrigin::Timeout,
            self.mode.status,
            &self.hooks,
            keep,
        )
    }
}

impl<S, ReqB, B> Service<Request<ReqB>> for Timeout<S, RespondGrpc>
where
    S: Service<Request<ReqB>, Response = Response<B>>,
    B: Default,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, RespondGrpc>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        grpc_call(
            &mut self.inner,
            req,
            &self.timeout,
            self.mode.honour_grpc_timeout,
            &self.hooks,
        )
    }
}

/// The request as it came (every mode but gRPC's).
#[inline(always)]
pub(super) fn keep<Req>(req: Req, _: &Start) -> Req {
    req
}

/// Whether `req` is a gRPC call (`content-type: application/grpc`, `application/grpc+proto`...).
fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// A timeout in gRPC mode: the request's `grpc-timeout` shortens it (when honoured), and a gRPC
/// request goes on with `grpc-timeout` set to the time the call is given (this timeout, or less
/// when a deadline outside or the request's own is earlier), unless it already carries no more.
pub(super) fn grpc_call<S, ReqB, M>(
    inner: &mut S,
    req: Request<ReqB>,
    limit: &Limit,
    honour: bool,
    hooks: &Hooks,
) -> ResponseFuture<S::Future, M>
where
    S: Service<Request<ReqB>>,
{
    let existing = req.headers().get(GRPC_TIMEOUT).and_then(parse_grpc_timeout);
    let own = limit.get_with_nanos();
    // The client's deadline, when it is the shorter one, is what an `Elapsed` names.
    let (timeout, origin) = match existing {
        Some(c) if honour && c < own.0 => {
            ((c, crate::time::nanos_of(c)), DeadlineOrigin::GrpcTimeout)
        }
        _ => (own, DeadlineOrigin::Timeout),
    };
    call(inner, req, timeout, origin, 0, hooks, |mut req, start| {
        let left = Duration::from_nanos(start.given);
        if is_grpc(&req) && existing.is_none_or(|e| e > left) {
            req.headers_mut()
                .insert(GRPC_TIMEOUT, encode_grpc_timeout(left));
        }
        req
    })
}

const GRPC_TIMEOUT: &str = "grpc-timeout";

/// Works out when the timeout ends (shortened to the current deadline of a timeout outside),
/// then calls `inner` with that deadline current, so the layers inside see it. One clock read
/// and one read of the outer deadline; the timer itself is made by the future, only if the
/// call is still pending when first polled.
#[inline]
pub(super) fn call<S: Service<Req>, Req, M>(
    inner: &mut S,
    req: Req,
    (timeout, nanos): (Duration, u64),
    origin: DeadlineOrigin,
    code: u64,
    hooks: &Hooks,
    prepare: impl FnOnce(Req, &Start) -> Req,
) -> ResponseFuture<S::Future, M> {
    let now = tokio::time::Instant::now();
    // One read of the outer deadline: what this timeout shrinks to, and what it restores.
    let outer = super::deadline::current();
    let start = super::future::start(now, timeout, nanos, origin, outer);
    let req = prepare(req, &start);
    let mut call = crate::call::EMPTY;
    let future = crate::call::within(&mut call, || {
        let _deadline = super::deadline::replace(outer, start.current);
        inner.call(req)
    });
    ResponseFuture::new(future, start, code, call, hooks.clone())
}
