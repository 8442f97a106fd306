//! The timeout future: the call raced against a sleep.

use std::{
    future::Future,
    marker::PhantomData,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use http::Response;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use super::{Elapsed, EventKind, Listener};
use crate::{
    BoxError, call,
    mode::{ModeAnswer, RespondHttp, ResponseBody},
};

pin_project! {
    /// The future of [`Timeout`](super::Timeout).
    pub struct ResponseFuture<F, M> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Sleep,
        // Whole words only: the future is built in the caller's `call` and copied out with wide
        // loads, which stall on the partial stores a `Duration`'s u32 or a u16 status needs.
        after_nanos: u64,
        // The HTTP status to answer in `RespondHttp` mode (unused otherwise).
        code: u64,
        // The logical call's id once known (`call::EMPTY` before), for the events.
        call: call::Slot,
        events: Listener,
        _mode: PhantomData<fn() -> M>,
    }
}

/// When a timeout of `timeout` starting now ends: `now + timeout`, or the current
/// [`Deadline`](super::Deadline) of a timeout outside when that is earlier. The sleep that ends
/// then, and the time it lasts (what [`Elapsed::after`] reports).
#[inline]
pub(crate) fn start(timeout: Duration) -> (Sleep, Duration) {
    let now = Instant::now();
    let own = now.checked_add(timeout);
    match (own, super::deadline::current_instant()) {
        (Some(own), Some(outer)) if outer < own => (
            tokio::time::sleep_until(outer),
            outer.saturating_duration_since(now),
        ),
        (Some(own), _) => (tokio::time::sleep_until(own), timeout),
        // Beyond what an instant holds: tokio's own far-future sleep, or the outer deadline.
        (None, Some(outer)) => (
            tokio::time::sleep_until(outer),
            outer.saturating_duration_since(now),
        ),
        (None, None) => (tokio::time::sleep(timeout), timeout),
    }
}

impl<F, M> ResponseFuture<F, M> {
    pub(crate) fn new(
        inner: F,
        sleep: Sleep,
        after: Duration,
        code: u64,
        call: call::Slot,
        events: Listener,
    ) -> Self {
        ResponseFuture {
            inner,
            sleep,
            after_nanos: crate::time::nanos_of(after),
            code,
            call,
            events,
            _mode: PhantomData,
        }
    }
}

/// Polls the call first, so a call that is ready as the timer fires still wins. The call is
/// polled with this timeout's deadline current, for the layers inside.
fn race<F: Future, M>(
    this: Pin<&mut ResponseFuture<F, M>>,
    cx: &mut Context<'_>,
) -> Poll<Result<F::Output, (Elapsed, u64)>> {
    let this = this.project();
    // Inside the logical call (its id kept in the future), for the layers inside and the event.
    let (inner, sleep, events) = (this.inner, this.sleep, &*this.events);
    let (after, code) = (*this.after_nanos, *this.code);
    call::within(this.call, || {
        let polled = {
            let _deadline = super::deadline::enter(sleep.deadline());
            inner.poll(cx)
        };
        if let Poll::Ready(out) = polled {
            return Poll::Ready(Ok(out));
        }
        match sleep.poll(cx) {
            Poll::Ready(()) => {
                let after = Duration::from_nanos(after);
                events.emit(EventKind::Elapsed { after });
                Poll::Ready(Err((Elapsed::new(after), code)))
            }
            Poll::Pending => Poll::Pending,
        }
    })
}

/// The timeout and the `RespondHttp` status code.
impl ModeAnswer for (Elapsed, u64) {
    #[inline]
    fn into_error(self) -> BoxError {
        self.0.into()
    }

    #[inline]
    fn into_http<B: ResponseBody>(self) -> Response<B> {
        self.0.to_http_response(RespondHttp::status_of(self.1))
    }

    #[inline]
    fn into_grpc<B: Default>(self) -> Response<B> {
        self.0.to_grpc_response()
    }
}

mode_futures!(ResponseFuture, race);
