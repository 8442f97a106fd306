//! End-of-stream outcomes: the response body of a breaker that follows bodies holds the call's
//! permit until the body ends, then records what the classifier makes of the end.

use std::{
    fmt,
    marker::PhantomData,
    ops::Deref,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use pin_project_lite::pin_project;

use super::{Breaker, future::Guard};
use crate::{
    call,
    classify::{BodyEnd, Outcome},
    mode::{RespondHttp, ResponseBody, ReturnError},
};

/// Mode marker of a breaker that judges calls at the end of their response bodies (see
/// [`CircuitBreakerLayer::end_of_stream`](super::CircuitBreakerLayer::end_of_stream)); `M` is
/// how it answers its refusals: [`ReturnError`] (a `CircuitOpen` error) or
/// [`RespondHttp`](crate::mode::RespondHttp) (a 503).
///
/// ```
/// use tower_rampart::{
///     circuit_breaker::{CircuitBreakerLayer, Config, EndOfStream},
///     classify::GrpcResponse,
///     mode::RespondHttp,
/// };
///
/// let client: CircuitBreakerLayer<GrpcResponse, EndOfStream> =
///     CircuitBreakerLayer::new(Config::builder().build()?).classify(GrpcResponse::default()).end_of_stream();
/// let server: CircuitBreakerLayer<GrpcResponse, EndOfStream<RespondHttp>> = client.respond_http();
/// # let _ = server;
/// # Ok::<_, tower_rampart::ConfigError>(())
/// ```
pub struct EndOfStream<M = ReturnError>(PhantomData<fn() -> M>);

impl<M> fmt::Debug for EndOfStream<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EndOfStream")
    }
}

/// The modes a breaker layer switches between: [`ReturnError`] and
/// [`RespondHttp`] judge calls at their heads, [`EndOfStream`] at the end of their bodies.
/// `Http` is the mode after [`respond_http`](super::CircuitBreakerLayer::respond_http),
/// `Following` after [`end_of_stream`](super::CircuitBreakerLayer::end_of_stream). Sealed.
///
/// ```
/// use tower_rampart::{
///     circuit_breaker::{BreakerMode, EndOfStream},
///     mode::{RespondHttp, ReturnError},
/// };
///
/// fn following<M: BreakerMode<Following = EndOfStream<ReturnError>>>() {}
/// following::<ReturnError>();
/// let _: Option<<RespondHttp as BreakerMode>::Following> = None::<EndOfStream<RespondHttp>>;
/// ```
pub trait BreakerMode: sealed::Sealed {
    /// The mode answering refusals with a 503.
    type Http;
    /// The mode following response bodies.
    type Following;
}

mod sealed {
    pub trait Sealed {}
}

impl sealed::Sealed for ReturnError {}
impl sealed::Sealed for RespondHttp {}
impl<M> sealed::Sealed for EndOfStream<M> {}

impl BreakerMode for ReturnError {
    type Http = RespondHttp;
    type Following = EndOfStream<ReturnError>;
}

impl BreakerMode for RespondHttp {
    type Http = RespondHttp;
    type Following = EndOfStream<RespondHttp>;
}

impl<M> BreakerMode for EndOfStream<M> {
    type Http = EndOfStream<RespondHttp>;
    type Following = EndOfStream<M>;
}

/// What a followed body records when it ends: the call's permit, its classifier and the head's
/// outcome.
pub(crate) struct End<C, K: Deref<Target = Breaker>> {
    pub(crate) guard: Guard<K>,
    pub(crate) classifier: C,
    pub(crate) head: Outcome,
    /// `Classify::classify_end` of the classifier for the call's response and error types,
    /// which the body does not name.
    pub(crate) classify: fn(&C, Outcome, BodyEnd<'_>) -> Outcome,
    /// The logical call's id, so the outcome's events carry it.
    pub(crate) call: call::Slot,
}

impl<C, K: Deref<Target = Breaker>> End<C, K> {
    fn finish(mut self, end: BodyEnd<'_>) {
        // The classifier runs here, with no lock held; `record` takes what it needs.
        let outcome = (self.classify)(&self.classifier, self.head, end);
        self.record(&outcome);
    }

    fn record(&mut self, outcome: &Outcome) {
        let guard = &mut self.guard;
        call::within(&mut self.call, || guard.finish(outcome));
    }
}

/// A body dropped before its end records the head's outcome: the caller stopped reading (many
/// read only the status), which says nothing against the downstream. Failures are final at the
/// head, so this is never one; without it, a client that drops its bodies would never record a
/// success, and a consecutive-failures breaker would count failures across them.
impl<C, K: Deref<Target = Breaker>> Drop for End<C, K> {
    fn drop(&mut self) {
        let head = self.head;
        self.record(&head);
    }
}

pin_project! {
    /// The response body of a breaker that follows bodies
    /// ([`end_of_stream`](super::CircuitBreakerLayer::end_of_stream)): the inner body, and,
    /// while the call's outcome waits for the end, the call's permit. The outcome is recorded
    /// when the body yields its trailers, ends, or fails ([`Classify::classify_end`]); a body
    /// dropped before its end records the head's outcome (the caller stopped reading, which says
    /// nothing against the downstream). Frames, `size_hint` and `is_end_stream` are the inner
    /// body's.
    ///
    /// It is a [`ResponseBody`] when the inner body is, so layers outside can still answer in
    /// it (a timeout's 504, a fallback's response).
    ///
    /// [`Classify::classify_end`]: crate::classify::Classify::classify_end
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body_util::{BodyExt, Full};
    /// use tower::{Service, ServiceExt};
    /// use tower_rampart::{
    ///     circuit_breaker::{CircuitBreakerLayer, Config},
    ///     classify::HttpStatus,
    /// };
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_rampart::BoxError> {
    /// let layer = CircuitBreakerLayer::new(Config::builder().count_window(20).build()?)
    ///     .classify(HttpStatus::default())
    ///     .end_of_stream();
    /// let handle = layer.handle();
    /// let mut svc = tower::ServiceBuilder::new().layer(layer).service_fn(|_: ()| async {
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from("hi"))))
    /// });
    /// let res = svc.ready().await?.call(()).await?;
    /// assert_eq!(handle.snapshot().calls, 0, "the 200 waits for its body");
    /// assert_eq!(res.into_body().collect().await?.to_bytes(), "hi");
    /// assert_eq!(handle.snapshot().calls, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub struct BreakerBody<B, C, K = Arc<Breaker>>
    where
        K: Deref<Target = Breaker>,
    {
        #[pin]
        inner: B,
        end: Option<End<C, K>>,
    }
}

impl<B, C, K: Deref<Target = Breaker>> BreakerBody<B, C, K> {
    /// `inner`, with `end` to record when it ends (at once when it already has).
    pub(crate) fn new(inner: B, end: Option<End<C, K>>) -> Self
    where
        B: http_body::Body,
    {
        match end {
            Some(end) if inner.is_end_stream() => {
                end.finish(BodyEnd::Clean);
                BreakerBody { inner, end: None }
            }
            end => BreakerBody { inner, end },
        }
    }

    /// A body that records nothing.
    pub(crate) fn done(inner: B) -> Self {
        BreakerBody { inner, end: None }
    }

    /// The inner body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// Whether the body still holds its call's permit: the outcome waits for its end.
    pub fn is_following(&self) -> bool {
        self.end.is_some()
    }
}

impl<B, C, K> http_body::Body for BreakerBody<B, C, K>
where
    B: http_body::Body,
    K: Deref<Target = Breaker>,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        if this.end.is_some() {
            let ended = match &frame {
                None => Some(BodyEnd::Clean),
                Some(Err(_)) => Some(BodyEnd::Failed),
                Some(Ok(frame)) => match frame.trailers_ref() {
                    Some(trailers) => Some(BodyEnd::Trailers(trailers)),
                    // A consumer may stop polling once the body says it ended (hyper does).
                    None => this.inner.is_end_stream().then_some(BodyEnd::Clean),
                },
            };
            if let Some(ended) = ended
                && let Some(end) = this.end.take()
            {
                end.finish(ended);
            }
        }
        Poll::Ready(frame)
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: ResponseBody, C, K: Deref<Target = Breaker>> ResponseBody for BreakerBody<B, C, K> {
    #[inline]
    fn from_bytes(bytes: Bytes) -> Self {
        BreakerBody::done(B::from_bytes(bytes))
    }
}

impl<B: fmt::Debug, C, K: Deref<Target = Breaker>> fmt::Debug for BreakerBody<B, C, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerBody")
            .field("inner", &self.inner)
            .field("following", &self.end.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty, Full};
    use tower::{Service, ServiceBuilder, ServiceExt};

    use crate::{
        circuit_breaker::{CircuitBreakerLayer, Config},
        classify::HttpStatus,
    };

    fn layer() -> CircuitBreakerLayer<HttpStatus, super::EndOfStream> {
        let config = Config::builder().count_window(20).build().unwrap();
        CircuitBreakerLayer::new(config)
            .classify(HttpStatus::default())
            .end_of_stream()
    }

    #[tokio::test]
    async fn a_body_ended_at_the_head_is_recorded_at_once() {
        let layer = layer();
        let handle = layer.handle();
        let mut svc = ServiceBuilder::new()
            .layer(layer)
            .service_fn(|_: ()| async {
                Ok::<_, Infallible>(http::Response::new(Empty::<Bytes>::new()))
            });
        let res = svc.ready().await.unwrap().call(()).await.unwrap();
        assert!(!res.body().is_following());
        assert_eq!(handle.snapshot().calls, 1);
    }

    #[tokio::test]
    async fn a_failure_at_the_head_is_recorded_at_once_and_a_dropped_body_records_its_head() {
        let layer = layer();
        let handle = layer.handle();
        let mut svc = ServiceBuilder::new()
            .layer(layer)
            .service_fn(|status: u16| async move {
                let res = http::Response::builder()
                    .status(status)
                    .body(Full::new(Bytes::from_static(b"body")));
                Ok::<_, Infallible>(res.unwrap())
            });
        let failed = svc.ready().await.unwrap().call(502).await.unwrap();
        assert!(!failed.body().is_following());
        assert_eq!(handle.snapshot().failures, 1);

        let ok = svc.ready().await.unwrap().call(200).await.unwrap();
        assert!(ok.body().is_following());
        assert_eq!(handle.snapshot().calls, 1, "the 200 waits for its end");
        drop(ok);
        let s = handle.snapshot();
        assert_eq!(
            (s.calls, s.failures),
            (2, 1),
            "a dropped body records its head"
        );

        let ok = svc.ready().await.unwrap().call(200).await.unwrap();
        let bytes = ok.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(bytes, "body");
        let s = handle.snapshot();
        assert_eq!((s.calls, s.failures), (3, 1));
    }
}
