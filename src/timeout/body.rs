//! Body-inclusive timeouts: the deadline also bounds reading the response body.

use std::{
    fmt,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use http::{HeaderMap, HeaderValue, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use super::{Hooks, ResponseFuture, Scope, deadline::Meta, future::race};
use crate::{
    BoxError, call,
    mode::{ModeAnswer, RespondGrpc, RespondHttp, ResponseBody, ReturnError},
    stream::WrapBody,
};

/// Coverage marker (the default): the timeout bounds the call until the response's head
/// (status and headers) arrives; reading the body afterwards is not timed.
#[derive(Debug, Clone, Copy, Default)]
pub struct HeadOnly;

/// Coverage marker: the timeout also bounds reading the response body. Set with
/// [`TimeoutLayer::including_body`](super::TimeoutLayer::including_body); the response's body is
/// then a [`TimeoutBody`].
#[derive(Debug, Clone, Copy)]
pub struct IncludingBody {
    // Off only in the client pipeline, when `total_timeout_covers_body(false)` keeps the type.
    pub(crate) on: bool,
}

impl Default for IncludingBody {
    fn default() -> Self {
        IncludingBody { on: true }
    }
}

/// What a timeout whose head arrived in time hands on to the body.
pub(crate) struct Timer {
    pub(crate) at: Instant,
    pub(crate) after_nanos: u64,
    pub(crate) deadline: u64,
    pub(crate) call: call::Slot,
    pub(crate) hooks: Hooks,
}

pin_project! {
    /// A response body bounded by the deadline of the timeout that answered it
    /// ([`TimeoutLayer::including_body`](super::TimeoutLayer::including_body)).
    ///
    /// Frames pass through unchanged while time is left. When the deadline passes mid-body, the
    /// body fails with [`Elapsed`](super::Elapsed) as its error (a `BoxError`; through reqwest,
    /// the `Elapsed` is in the `reqwest::Error`'s source chain), then ends. In
    /// [`respond_grpc`](super::TimeoutLayer::respond_grpc) mode it ends instead with trailers
    /// `grpc-status: 4` (DEADLINE_EXCEEDED), which a gRPC client reads as that status. A body
    /// read to its end in time drops its timer at once.
    ///
    /// ```
    /// use std::time::Duration;
    /// use http_body_util::{BodyExt, StreamBody};
    /// use tower::{Service, ServiceBuilder, ServiceExt};
    /// use tower_rampart::timeout::{Elapsed, TimeoutLayer};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), tower_rampart::BoxError> {
    /// let mut svc = ServiceBuilder::new()
    ///     .layer(TimeoutLayer::new(Duration::from_secs(2))?.including_body())
    ///     .service_fn(|_: ()| async {
    ///         // The head at once, then a body that takes 5 s.
    ///         let slow = futures_util::stream::once(async {
    ///             tokio::time::sleep(Duration::from_secs(5)).await;
    ///             Ok::<_, std::convert::Infallible>(http_body::Frame::data(bytes::Bytes::new()))
    ///         });
    ///         Ok::<_, std::convert::Infallible>(http::Response::new(StreamBody::new(slow)))
    ///     });
    /// let res = svc.ready().await?.call(()).await?;
    /// let err = res.into_body().collect().await.unwrap_err();
    /// assert_eq!(err.downcast_ref::<Elapsed>().unwrap().after(), Duration::from_secs(2));
    /// # Ok(())
    /// # }
    /// ```
    pub struct TimeoutBody<B> {
        #[pin]
        inner: B,
        // Made when the body is first found pending (at the deadline the head was raced
        // against: no clock read), dropped at the end of the body.
        #[pin]
        sleep: Option<Sleep>,
        // `None`: not timed (an answer of the layer's own, or the body has ended).
        timer: Option<Timer>,
        grpc: bool,
        // The deadline passed: the error or trailers were sent, nothing more follows.
        done: bool,
    }
}

impl<B> TimeoutBody<B> {
    pub(crate) fn new(inner: B, timer: Option<Timer>, grpc: bool) -> Self {
        TimeoutBody {
            inner,
            sleep: None,
            timer,
            grpc,
            done: false,
        }
    }

    /// A body the timeout does not bound (its own answers, and the client pipeline's opt-out).
    pub(crate) fn untimed(inner: B) -> Self {
        Self::new(inner, None, false)
    }

    /// The wrapped body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// Unwraps the body, dropping its timer.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: ResponseBody> ResponseBody for TimeoutBody<B> {
    fn from_bytes(bytes: bytes::Bytes) -> Self {
        TimeoutBody::untimed(B::from_bytes(bytes))
    }
}

impl<B: Default> Default for TimeoutBody<B> {
    fn default() -> Self {
        TimeoutBody::untimed(B::default())
    }
}

impl<B> fmt::Debug for TimeoutBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimeoutBody")
            .field("deadline", &self.timer.as_ref().map(|t| t.at))
            .field("timed_out", &self.done)
            .finish_non_exhaustive()
    }
}

impl<B> Body for TimeoutBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let mut this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        // A frame ready as the deadline passes still wins, as the head does.
        let polled = this.inner.poll_frame(cx);
        let Some(timer) = this.timer.as_mut() else {
            return polled.map_err(Into::into);
        };
        match polled {
            Poll::Ready(None) => {
                // Read to its end in time: the timer goes.
                this.sleep.set(None);
                *this.timer = None;
                return Poll::Ready(None);
            }
            Poll::Ready(Some(frame)) => return Poll::Ready(Some(frame.map_err(Into::into))),
            Poll::Pending => {}
        }
        if this.sleep.is_none() {
            this.sleep.set(Some(tokio::time::sleep_until(timer.at)));
        }
        if let Some(sleep) = this.sleep.as_mut().as_pin_mut() {
            ready!(sleep.poll(cx));
        }
        *this.done = true;
        this.sleep.set(None);
        Poll::Ready(Some(timed_out(timer, *this.grpc)))
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.done {
            SizeHint::with_exact(0)
        } else {
            self.inner.size_hint()
        }
    }
}

/// Reports the timeout and makes the body's last frame: the error, or gRPC trailers.
#[cold]
fn timed_out<D>(timer: &mut Timer, grpc: bool) -> Result<Frame<D>, BoxError> {
    let after = Duration::from_nanos(timer.after_nanos);
    let hooks = &timer.hooks;
    call::within(&mut timer.call, || hooks.elapsed(after, Scope::Body));
    let elapsed = super::future::elapsed(after, Meta::from_word(timer.deadline));
    if !grpc {
        return Err(Box::new(elapsed));
    }
    let mut trailers = HeaderMap::with_capacity(2);
    trailers.insert("grpc-status", HeaderValue::from_static("4"));
    trailers.insert(
        "grpc-message",
        HeaderValue::from_static("Timeout%20expired"),
    );
    Ok(Frame::trailers(trailers))
}

pin_project! {
    /// The future of a [body-inclusive](super::TimeoutLayer::including_body) timeout: the call
    /// raced against the deadline, then its response's body wrapped in a [`TimeoutBody`] that
    /// keeps the same deadline.
    pub struct BodyResponseFuture<F, M> {
        #[pin]
        head: ResponseFuture<F, M>,
        on: bool,
    }
}

impl<F, M> BodyResponseFuture<F, M> {
    pub(crate) fn new(head: ResponseFuture<F, M>, on: bool) -> Self {
        BodyResponseFuture { head, on }
    }
}

impl<F, M> fmt::Debug for BodyResponseFuture<F, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BodyResponseFuture").finish_non_exhaustive()
    }
}

impl<F, R, E> std::future::Future for BodyResponseFuture<F, ReturnError>
where
    F: std::future::Future<Output = Result<R, E>>,
    E: Into<BoxError>,
    R: WrapBody<TimeoutBody<<R as crate::stream::Streamed>::Body>>,
{
    type Output = Result<R::Output, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        Poll::Ready(match ready!(race(this.head.as_mut(), cx)) {
            Ok(Ok(res)) => {
                let timer = this.on.then(|| this.head.body_timer());
                Ok(res.wrap_body(|b| TimeoutBody::new(b, timer, false)))
            }
            Ok(Err(e)) => Err(e.into()),
            Err(answer) => Err(answer.into_error()),
        })
    }
}

impl<F, B, E> std::future::Future for BodyResponseFuture<F, RespondHttp>
where
    F: std::future::Future<Output = Result<Response<B>, E>>,
    B: ResponseBody,
{
    type Output = Result<Response<TimeoutBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        Poll::Ready(match ready!(race(this.head.as_mut(), cx)) {
            Ok(Ok(res)) => {
                let timer = this.on.then(|| this.head.body_timer());
                Ok(res.map(|b| TimeoutBody::new(b, timer, false)))
            }
            Ok(Err(e)) => Err(e),
            Err(answer) => Ok(answer.into_http::<B>().map(TimeoutBody::untimed)),
        })
    }
}

impl<F, B, E> std::future::Future for BodyResponseFuture<F, RespondGrpc>
where
    F: std::future::Future<Output = Result<Response<B>, E>>,
    B: Default,
{
    type Output = Result<Response<TimeoutBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        Poll::Ready(match ready!(race(this.head.as_mut(), cx)) {
            Ok(Ok(res)) => {
                let timer = this.on.then(|| this.head.body_timer());
                Ok(res.map(|b| TimeoutBody::new(b, timer, true)))
            }
            Ok(Err(e)) => Err(e),
            Err(answer) => Ok(answer.into_grpc::<B>().map(TimeoutBody::untimed)),
        })
    }
}
