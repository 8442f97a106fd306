//! The timeout future: the call raced against a sleep (made once the call is pending).

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
    DeadlineOrigin, Elapsed, Hooks, Scope,
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
        // Made at the first poll that finds the call pending (for `at`, fixed when the call
        // started): a call that is ready at once makes no timer, and the runtime's timer
        // handle is neither cloned nor dropped for it.
        #[pin]
        sleep: Option<Sleep>,
        // When the timeout runs out: this timeout's own end, or the deadline outside that cut
        // it short.
        at: Instant,
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
        // The layer's name and listeners (one word: null when it has neither).
        hooks: Hooks,
        _mode: PhantomData<fn() -> M>,
    }
}

/// When a started timeout ends and what it reports: the instant its sleep waits for, the time
/// it lasts in nanoseconds (what its event reports), and the deadline it passes down and
/// reports when it runs out. Plain words: the sleep itself is made by the future, only once
/// the call it races is pending.
#[derive(Clone, Copy)]
pub(crate) struct Start {
    pub(crate) at: Instant,
    pub(crate) given: u64,
    pub(crate) deadline: Meta,
    /// What the layers inside see while the call is made and polled: this timeout's deadline,
    /// or the outer one (unchanged) when that is the earlier.
    pub(crate) current: Current,
}

/// Thirty years, tokio's own "far future" for a sleep whose end an instant cannot hold.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// When a timeout of `timeout` (`nanos` in nanoseconds; set by `origin`: the layer, or a gRPC
/// client) started `now` ends: `now + timeout`, or `outer`, the current
/// [`Deadline`](super::Deadline) of a timeout outside, when that is earlier, and then that
/// deadline is the one that runs out. No clock read and no thread-local access of its own:
/// the caller reads both once.
#[inline]
pub(crate) fn start(
    now: Instant,
    timeout: Duration,
    nanos: u64,
    origin: DeadlineOrigin,
    outer: Option<Current>,
) -> Start {
    let own = now.checked_add(timeout);
    match (own, outer) {
        (Some(own), Some(outer)) if outer.at < own => shrunk(now, outer),
        // Beyond what an instant holds: the outer deadline, or tokio's far-future sleep.
        (None, Some(outer)) => shrunk(now, outer),
        (own, _) => {
            let given = nanos;
            let deadline = Meta::of_timeout(origin, given);
            let at = own.unwrap_or_else(|| now + FAR_FUTURE);
            Start {
                at,
                given,
                deadline,
                // An outer deadline at the same instant stays the one inside sees.
                current: match outer {
                    Some(outer) if outer.at <= at => outer,
                    _ => Current { at, meta: deadline },
                },
            }
        }
    }
}

/// A timeout cut short by the deadline `outer`.
#[inline]
fn shrunk(now: Instant, outer: Current) -> Start {
    Start {
        at: outer.at,
        given: crate::time::nanos_of(outer.at.saturating_duration_since(now)),
        deadline: outer.meta.shrunk(),
        current: outer,
    }
}

impl<F, M> ResponseFuture<F, M> {
    #[inline]
    pub(crate) fn new(inner: F, start: Start, code: u64, call: call::Slot, hooks: Hooks) -> Self {
        ResponseFuture {
            inner,
            sleep: None,
            at: start.at,
            after_nanos: start.given,
            code,
            deadline: start.deadline.word(),
            call,
            hooks,
            _mode: PhantomData,
        }
    }
}

impl<F, M> ResponseFuture<F, M> {
    /// What a body-inclusive timeout hands on to the body once the head arrived in time: the
    /// same deadline (no clock read), what it reports, and the logical call's id.
    pub(crate) fn body_timer(self: Pin<&mut Self>) -> super::body::Timer {
        let this = self.project();
        super::body::Timer {
            at: *this.at,
            after_nanos: *this.after_nanos,
            deadline: *this.deadline,
            call: *this.call,
            hooks: std::mem::take(this.hooks),
        }
    }
}

/// What a timeout that ran out fails with: its own timeout, or the deadline's that cut it short.
#[cold]
pub(crate) fn elapsed(after: Duration, deadline: Meta) -> Elapsed {
    match (deadline.is_shrunk(), deadline.origin()) {
        (true, origin) => Elapsed::with_origin(deadline.after(), Some(origin)),
        (false, DeadlineOrigin::Timeout) => Elapsed::new(after),
        (false, origin) => Elapsed::with_origin(after, Some(origin)),
    }
}

/// Polls the call first, so a call that is ready as the timer fires still wins. The call is
/// polled with this timeout's deadline current, for the layers inside.
#[inline]
pub(crate) fn race<F: Future, M>(
    this: Pin<&mut ResponseFuture<F, M>>,
    cx: &mut Context<'_>,
) -> Poll<Result<F::Output, (Elapsed, u64)>> {
    let this = this.project();
    // Inside the logical call (its id kept in the future), for the layers inside and the event.
    let (inner, mut sleep, hooks, at) = (this.inner, this.sleep, &*this.hooks, *this.at);
    let (after, code, deadline) = (
        *this.after_nanos,
        *this.code,
        Meta::from_word(*this.deadline),
    );
    call::within(this.call, || {
        let polled = {
            let _deadline = super::deadline::enter(Current { at, meta: deadline });
            inner.poll(cx)
        };
        if let Poll::Ready(out) = polled {
            return Poll::Ready(Ok(out));
        }
        if sleep.is_none() {
            sleep.set(Some(tokio::time::sleep_until(at)));
        }
        match sleep.as_pin_mut().map(|s| s.poll(cx)) {
            Some(Poll::Ready(())) => {
                let after = Duration::from_nanos(after);
                hooks.elapsed(after, Scope::Head);
                Poll::Ready(Err((elapsed(after, deadline), code)))
            }
            _ => Poll::Pending,
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
