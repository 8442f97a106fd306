//! The timeout service and its modes.

use std::{
    task::{Context, Poll},
    time::Duration,
};

use http::{Request, Response};
use tower_service::Service;

use tower_layer::Layer;

use super::{
    DeadlineOrigin, Listener, ResponseFuture, TimeoutLayer, parse_grpc_timeout, reload::Limit,
};
use crate::{
    BoxError, ConfigError,
    mode::{RespondGrpc, RespondHttp, ResponseBody, ReturnError},
};

/// A service whose calls time out. Made by [`TimeoutLayer`](super::TimeoutLayer).
#[derive(Debug, Clone)]
pub struct Timeout<S, M> {
    pub(crate) inner: S,
    // Read once per call: a call keeps the timeout it started with.
    pub(crate) timeout: Limit,
    pub(crate) mode: M,
    pub(crate) events: Listener,
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

impl<S, M> Timeout<S, M> {
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
            &self.events,
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
            &self.events,
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
        let client = self
            .mode
            .honour_grpc_timeout
            .then(|| {
                req.headers()
                    .get("grpc-timeout")
                    .and_then(parse_grpc_timeout)
            })
            .flatten();
        let own = self.timeout.get_with_nanos();
        // The client's deadline, when it is the shorter one, is what an `Elapsed` names.
        let (timeout, origin) = match client {
            Some(c) if c < own.0 => ((c, crate::time::nanos_of(c)), DeadlineOrigin::GrpcTimeout),
            _ => (own, DeadlineOrigin::Timeout),
        };
        call(&mut self.inner, req, timeout, origin, 0, &self.events)
    }
}

/// Works out when the timeout ends (shortened to the current deadline of a timeout outside),
/// then calls `inner` with that deadline current, so the layers inside see it. One clock read
/// and one read of the outer deadline; the timer itself is made by the future, only if the
/// call is still pending when first polled.
#[inline]
fn call<S: Service<Req>, Req, M>(
    inner: &mut S,
    req: Req,
    (timeout, nanos): (Duration, u64),
    origin: DeadlineOrigin,
    code: u64,
    events: &Listener,
) -> ResponseFuture<S::Future, M> {
    let now = tokio::time::Instant::now();
    // One read of the outer deadline: what this timeout shrinks to, and what it restores.
    let outer = super::deadline::current();
    let start = super::future::start(now, timeout, nanos, origin, outer);
    let mut call = crate::call::EMPTY;
    let future = crate::call::within(&mut call, || {
        let _deadline = super::deadline::replace(outer, start.current);
        inner.call(req)
    });
    ResponseFuture::new(future, start, code, call, events.clone())
}
