//! The timeout service and its modes.

use std::{
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use tower_service::Service;

use super::{ResponseFuture, parse_grpc_timeout};
use crate::{BoxError, ReturnError};

/// Mode: answer an HTTP response with this status and a problem+json body.
#[derive(Debug, Clone, Copy)]
pub struct RespondHttp {
    // The status code as a whole word (see the future's fields).
    status: u64,
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

/// Mode: answer a gRPC trailers-only DEADLINE_EXCEEDED.
#[derive(Debug, Clone, Copy)]
pub struct RespondGrpc {
    pub(crate) honour_grpc_timeout: bool,
}

/// A service whose calls time out. Made by [`TimeoutLayer`](super::TimeoutLayer).
#[derive(Debug, Clone)]
pub struct Timeout<S, M> {
    pub(crate) inner: S,
    pub(crate) timeout: Duration,
    pub(crate) mode: M,
}

impl<S, M> Timeout<S, M> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
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
        ResponseFuture::new(self.inner.call(req), self.timeout, 0)
    }
}

impl<S, Req, B> Service<Req> for Timeout<S, RespondHttp>
where
    S: Service<Req, Response = Response<B>>,
    B: From<Bytes>,
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
        ResponseFuture::new(self.inner.call(req), self.timeout, self.mode.status)
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
        let timeout = client.map_or(self.timeout, |c| c.min(self.timeout));
        ResponseFuture::new(self.inner.call(req), timeout, 0)
    }
}
