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

use super::{
    DeadlineOrigin, Elapsed, EventKind, Listener,
    deadline::{Current, Meta},
};
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
        // The deadline passed down (and reported when it runs out): what set it and the time
        // it gave (`deadline::Meta`), this timeout's own unless a deadline outside cut it short.
        deadline: u64,
        // The logical call's id once known (`call::EMPTY` before), for the events.
        call: call::Slot,
        events: Listener,
        _mode: PhantomData<fn() -> M>,
    }
}

/// A started timeout: its sleep, the time it lasts in nanoseconds (what its event reports),
/// and the deadline it passes down and reports when it runs out.
pub(crate) struct Start {
    pub(crate) sleep: Sleep,
    pub(crate) given: u64,
    pub(crate) deadline: Meta,
}

/// When a timeout of `timeout` (set by `origin`: the layer, or a gRPC client) starting now
/// ends: `now + timeout`, or the current [`Deadline`](super::Deadline) of a timeout outside
/// when that is earlier, and then that deadline is the one that runs out.
#[inline]
pub(crate) fn start(timeout: Duration, origin: DeadlineOrigin) -> Start {
    let now = Instant::now();
    let own = now.checked_add(timeout);
    let shrunk = |outer: Current| Start {
        sleep: tokio::time::sleep_until(outer.at),
        given: crate::time::nanos_of(outer.at.saturating_duration_since(now)),
        deadline: outer.meta.shrunk(),
    };
    let mine = |sleep| {
        let given = crate::time::nanos_of(timeout);
        Start {
            sleep,
            given,
            deadline: Meta::of_timeout(origin, given),
        }
    };
    match (own, super::deadline::current()) {
        (Some(own), Some(outer)) if outer.at < own => shrunk(outer),
        (Some(own), _) => mine(tokio::time::sleep_until(own)),
        // Beyond what an instant holds: tokio's own far-future sleep, or the outer deadline.
        (None, Some(outer)) => shrunk(outer),
        (None, None) => mine(tokio::time::sleep(timeout)),
    }
}

impl<F, M> ResponseFuture<F, M> {
    pub(crate) fn new(
        inner: F,
        start: Start,
        code: u64,
        call: call::Slot,
        events: Listener,
    ) -> Self {
        ResponseFuture {
            inner,
            sleep: start.sleep,
            after_nanos: start.given,
            code,
            deadline: start.deadline.word(),
            call,
            events,
            _mode: PhantomData,
        }
    }
}

/// What a timeout that ran out fails with: its own timeout, or the deadline's that cut it short.
#[cold]
fn elapsed(after: Duration, deadline: Meta) -> Elapsed {
    match (deadline.is_shrunk(), deadline.origin()) {
        (true, origin) => Elapsed::with_origin(deadline.after(), Some(origin)),
        (false, DeadlineOrigin::Timeout) => Elapsed::new(after),
        (false, origin) => Elapsed::with_origin(after, Some(origin)),
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
    let (after, code, deadline) = (
        *this.after_nanos,
        *this.code,
        Meta::from_word(*this.deadline),
    );
    call::within(this.call, || {
        let polled = {
            let _deadline = super::deadline::enter(Current {
                at: sleep.deadline(),
                meta: deadline,
            });
            inner.poll(cx)
        };
        if let Poll::Ready(out) = polled {
            return Poll::Ready(Ok(out));
        }
        match sleep.poll(cx) {
            Poll::Ready(()) => {
                let after = Duration::from_nanos(after);
                events.emit(EventKind::Elapsed { after });
                Poll::Ready(Err((elapsed(after, deadline), code)))
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
