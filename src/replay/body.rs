//! Buffering request bodies (up to a limit) so that retries can send them again.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Request};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::BoxError;

/// The default buffering limit: 64 KiB.
pub const DEFAULT_BUFFER_LIMIT: usize = 64 * 1024;

/// A request body after [`BufferBodyLayer`]: in memory (and so replayable), or streaming (sent
/// once).
#[derive(Debug)]
pub struct Buffered<B> {
    inner: Inner<B>,
}

#[derive(Debug)]
enum Inner<B> {
    Full {
        data: Option<Bytes>,
        trailers: Option<HeaderMap>,
    },
    Streaming {
        prefix: Option<Bytes>,
        rest: B,
    },
    /// Frames that another task reads from a `B` and passes on (the Idempotency-Key layer's
    /// owner task, which keeps reading when the caller goes away).
    Relayed(Box<dyn Relay<B>>),
}

/// The receiving end of frames read from a `B` by another task. Generic over `B` rather than
/// its error type, so that `Buffered<B>` keeps its one type parameter and needs no bound.
pub(crate) trait Relay<B: ?Sized>: Send + Sync + std::fmt::Debug {
    /// The next frame, the error that ended the body, or its end.
    fn poll_relay(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>>
    where
        B: Body;
}

impl<B> Buffered<B> {
    /// A body held in memory.
    pub fn full(data: Bytes) -> Self {
        Buffered {
            inner: Inner::Full {
                data: Some(data),
                trailers: None,
            },
        }
    }

    /// A body held in memory, ending with `trailers` when given (gRPC status lives there).
    pub(crate) fn full_with_trailers(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        Buffered {
            inner: Inner::Full {
                data: Some(data),
                trailers,
            },
        }
    }

    /// A body that streams from `rest`, after `prefix` (already read from it) when given.
    pub fn streaming(prefix: Option<Bytes>, rest: B) -> Self {
        Buffered {
            inner: Inner::Streaming { prefix, rest },
        }
    }

    /// A body whose frames arrive through `relay`.
    pub(crate) fn relayed(relay: Box<dyn Relay<B>>) -> Self {
        Buffered {
            inner: Inner::Relayed(relay),
        }
    }

    /// Whether the whole body is in memory.
    pub fn is_full(&self) -> bool {
        matches!(self.inner, Inner::Full { .. })
    }

    /// A copy when the body is in memory.
    pub fn try_clone(&self) -> Option<Self> {
        match &self.inner {
            Inner::Full { data, trailers } => Some(Buffered {
                inner: Inner::Full {
                    data: data.clone(),
                    trailers: trailers.clone(),
                },
            }),
            Inner::Streaming { .. } | Inner::Relayed(_) => None,
        }
    }
}

impl<B> Body for Buffered<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match &mut self.get_mut().inner {
            Inner::Full { data, trailers } => Poll::Ready(
                data.take()
                    .filter(|d| !d.is_empty())
                    .map(Frame::data)
                    .or_else(|| trailers.take().map(Frame::trailers))
                    .map(Ok),
            ),
            Inner::Streaming { prefix, rest } => match prefix.take() {
                Some(p) => Poll::Ready(Some(Ok(Frame::data(p)))),
                None => Pin::new(rest).poll_frame(cx),
            },
            Inner::Relayed(relay) => relay.poll_relay(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Full { data, trailers } => {
                data.as_ref().is_none_or(Bytes::is_empty) && trailers.is_none()
            }
            Inner::Streaming { prefix, rest } => prefix.is_none() && rest.is_end_stream(),
            Inner::Relayed(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Inner::Streaming { prefix, rest } => {
                let p = prefix.as_ref().map_or(0, |d| d.len() as u64);
                let r = rest.size_hint();
                let mut h = SizeHint::new();
                h.set_lower(r.lower() + p);
                if let Some(u) = r.upper() {
                    h.set_upper(u + p);
                }
                h
            }
            Inner::Relayed(_) => SizeHint::new(),
        }
    }
}

/// Reads request bodies of up to `limit` bytes into memory before the call, so that the retry
/// layer inside it can send them again. Larger bodies, and bodies that announce more than the
/// limit, stream through (what was read comes first) and are sent once.
///
/// Place it outside the retry layer: `BufferBodyLayer` > `RetryLayer` > client.
///
/// ```
/// use tower::ServiceBuilder;
/// use tower_rampart::retry::{BufferBodyLayer, HttpReplay, RetryLayer};
///
/// # fn main() -> Result<(), tower_rampart::retry::ConfigError> {
/// let stack = ServiceBuilder::new()
///     .layer(BufferBodyLayer::new(64 * 1024))
///     .layer(RetryLayer::builder().build()?.replay(HttpReplay::default()));
/// # let _ = stack;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct BufferBodyLayer {
    limit: usize,
}

impl BufferBodyLayer {
    /// Buffers bodies of up to `limit` bytes.
    pub fn new(limit: usize) -> Self {
        BufferBodyLayer { limit }
    }
}

impl Default for BufferBodyLayer {
    fn default() -> Self {
        BufferBodyLayer::new(DEFAULT_BUFFER_LIMIT)
    }
}

impl<S> Layer<S> for BufferBodyLayer {
    type Service = BufferBody<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BufferBody {
            inner,
            limit: self.limit,
        }
    }
}

/// The service of [`BufferBodyLayer`].
#[derive(Debug, Clone)]
pub struct BufferBody<S> {
    inner: S,
    limit: usize,
}

impl<S> BufferBody<S> {
    /// `inner` with request bodies of up to `limit` bytes buffered, like
    /// [`BufferBodyLayer::new`].
    pub fn new(inner: S, limit: usize) -> Self {
        BufferBody { inner, limit }
    }

    inner_service_accessors!();
}

impl<S, B> Service<Request<B>> for BufferBody<S>
where
    S: Service<Request<Buffered<B>>> + Clone,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BufferFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The ready service goes with the future; a fresh clone stays for the next call.
        let clone = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, clone);
        let (parts, body) = req.into_parts();
        let too_big = body.size_hint().lower() > self.limit as u64;
        BufferFuture {
            state: State::Reading {
                service: Some(service),
                parts: Some(parts),
                body: Some(body),
                read: BytesMut::new(),
                limit: if too_big { 0 } else { self.limit },
                skip: too_big,
            },
        }
    }
}

pin_project! {
    /// The future of [`BufferBody`].
    pub struct BufferFuture<S, B>
    where
        S: Service<Request<Buffered<B>>>,
    {
        #[pin]
        state: State<S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<Buffered<B>>>,
    {
        Reading {
            service: Option<S>,
            parts: Option<http::request::Parts>,
            body: Option<B>,
            read: BytesMut,
            limit: usize,
            skip: bool,
        },
        Calling { #[pin] future: S::Future },
    }
}

impl<S, B> Future for BufferFuture<S, B>
where
    S: Service<Request<Buffered<B>>>,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project().state.project() {
                StateProj::Calling { future } => {
                    return future.poll(cx).map_err(Into::into);
                }
                StateProj::Reading {
                    service,
                    parts,
                    body,
                    read,
                    limit,
                    skip,
                } => {
                    let buffered = loop {
                        let b = body.as_mut().expect("body present while reading");
                        if *skip {
                            break streaming(read, body.take().expect("body"));
                        }
                        match ready!(Pin::new(&mut *b).poll_frame(cx)) {
                            None => break full(read, None),
                            Some(Err(e)) => return Poll::Ready(Err(e.into())),
                            Some(Ok(frame)) => match frame.into_data() {
                                Ok(data) => {
                                    read.extend_from_slice(&data);
                                    if read.len() > *limit {
                                        break streaming(read, body.take().expect("body"));
                                    }
                                }
                                Err(frame) => {
                                    if let Ok(trailers) = frame.into_trailers() {
                                        break full(read, Some(trailers));
                                    }
                                }
                            },
                        }
                    };
                    let req = Request::from_parts(parts.take().expect("parts"), buffered);
                    let mut svc = service.take().expect("service");
                    State::Calling {
                        future: svc.call(req),
                    }
                }
            };
            self.as_mut().project().state.set(next);
        }
    }
}

fn full<B>(read: &mut BytesMut, trailers: Option<HeaderMap>) -> Buffered<B> {
    Buffered {
        inner: Inner::Full {
            data: Some(read.split().freeze()),
            trailers,
        },
    }
}

fn streaming<B>(read: &mut BytesMut, rest: B) -> Buffered<B> {
    let prefix = (!read.is_empty()).then(|| read.split().freeze());
    Buffered {
        inner: Inner::Streaming { prefix, rest },
    }
}
