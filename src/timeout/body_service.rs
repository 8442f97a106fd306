//! The services of body-inclusive timeouts: the same call as the head-only ones, then the
//! response's body wrapped in a [`TimeoutBody`] with the same deadline.

use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::{
    BodyResponseFuture, DeadlineOrigin, IncludingBody, Timeout, TimeoutBody,
    service::{call, grpc_call, keep},
};
use crate::{
    BoxError,
    mode::{RespondGrpc, RespondHttp, ResponseBody, ReturnError},
    stream::{Streamed, WrapBody},
};

impl<S, Req, R> Service<Req> for Timeout<S, ReturnError, IncludingBody>
where
    S: Service<Req, Response = R>,
    S::Error: Into<BoxError>,
    R: WrapBody<TimeoutBody<<R as Streamed>::Body>>,
{
    type Response = R::Output;
    type Error = BoxError;
    type Future = BodyResponseFuture<S::Future, ReturnError>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let head = call(
            &mut self.inner,
            req,
            self.timeout.get_with_nanos(),
            DeadlineOrigin::Timeout,
            0,
            &self.hooks,
            keep,
        );
        BodyResponseFuture::new(head, self.coverage.on)
    }
}

impl<S, Req, B> Service<Req> for Timeout<S, RespondHttp, IncludingBody>
where
    S: Service<Req, Response = Response<B>>,
    B: ResponseBody,
{
    type Response = Response<TimeoutBody<B>>;
    type Error = S::Error;
    type Future = BodyResponseFuture<S::Future, RespondHttp>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let head = call(
            &mut self.inner,
            req,
            self.timeout.get_with_nanos(),
            DeadlineOrigin::Timeout,
            self.mode.status,
            &self.hooks,
            keep,
        );
        BodyResponseFuture::new(head, self.coverage.on)
    }
}

impl<S, ReqB, B> Service<Request<ReqB>> for Timeout<S, RespondGrpc, IncludingBody>
where
    S: Service<Request<ReqB>, Response = Response<B>>,
    B: Default,
{
    type Response = Response<TimeoutBody<B>>;
    type Error = S::Error;
    type Future = BodyResponseFuture<S::Future, RespondGrpc>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let head = grpc_call(
            &mut self.inner,
            req,
            &self.timeout,
            self.mode.honour_grpc_timeout,
            &self.hooks,
        );
        BodyResponseFuture::new(head, self.coverage.on)
    }
}
