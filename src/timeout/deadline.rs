//! The deadline a timeout passes down to the layers and handlers it encloses.

use std::{
    cell::Cell,
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use pin_project_lite::pin_project;
use tokio::time::Instant;

thread_local! {
    // The deadline of the innermost timeout whose call is being made or polled on this thread,
    // with what set it (for the `Elapsed` of a timeout it cuts short).
    static CURRENT: Cell<Option<Current>> = const { Cell::new(None) };
}

/// Where a [`Deadline`] comes from: what an [`Elapsed`](super::Elapsed) names
/// ([`Elapsed::deadline_origin`](super::Elapsed::deadline_origin)) when a timeout inside was cut
/// short by it, or when a gRPC client's `grpc-timeout` shortened a server's timeout.
///
/// ```
/// use tower_rampart::timeout::DeadlineOrigin;
///
/// assert_eq!(DeadlineOrigin::Timeout.to_string(), "the deadline of a timeout outside");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeadlineOrigin {
    /// The timeout of a [`TimeoutLayer`](super::TimeoutLayer) outside, e.g. the total timeout
    /// around a retry layer: [`Elapsed::after`](super::Elapsed::after) is that timeout.
    Timeout,
    /// A gRPC client's `grpc-timeout`, honoured by a server's timeout in
    /// [`respond_grpc`](super::TimeoutLayer::respond_grpc) mode: `after` is the client's timeout.
    GrpcTimeout,
    /// A caller's deadline, given with [`Deadline::scope`] or [`Deadline::scope_call`]:
    /// `after` is the time from when the scope began to the deadline.
    Scope,
}

impl DeadlineOrigin {
    const ALL: [DeadlineOrigin; 3] = [
        DeadlineOrigin::Timeout,
        DeadlineOrigin::GrpcTimeout,
        DeadlineOrigin::Scope,
    ];
}

impl fmt::Display for DeadlineOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeadlineOrigin::Timeout => "the deadline of a timeout outside",
            DeadlineOrigin::GrpcTimeout => "the client's grpc-timeout",
            DeadlineOrigin::Scope => "the caller's deadline",
        })
    }
}

/// A deadline with what set it, in one word besides the instant (see [`Meta`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Current {
    pub(crate) at: Instant,
    pub(crate) meta: Meta,
}

/// What set a deadline and the whole time it gave (what an `Elapsed` reports), in one word:
/// the origin in the top two bits, `SHRUNK` below them when the timeout holding it was cut
/// short by it (it is then an outer deadline's), and the time in nanoseconds in the others
/// (saturated at 2^61 - 1, about 73 years).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta(u64);

const ORIGIN_SHIFT: u32 = 62;
const SHRUNK: u64 = 1 << 61;
const NANOS: u64 = SHRUNK - 1;

impl Meta {
    /// `after` given by `origin`.
    #[inline]
    pub(crate) fn new(origin: DeadlineOrigin, after: Duration) -> Meta {
        Meta(((origin as u64) << ORIGIN_SHIFT) | crate::time::nanos_of(after).min(NANOS))
    }

    /// A timeout's own: `nanos` at most a year (as every timeout is checked to be), so it needs
    /// no saturation: a timeout layer's is its nanoseconds as they are.
    #[inline]
    pub(crate) fn of_timeout(origin: DeadlineOrigin, nanos: u64) -> Meta {
        debug_assert!(nanos <= NANOS);
        Meta(((origin as u64) << ORIGIN_SHIFT) | nanos)
    }

    /// The same deadline, held by a timeout it cut short.
    #[inline]
    pub(crate) const fn shrunk(self) -> Meta {
        Meta(self.0 | SHRUNK)
    }

    /// Whether the timeout holding it was cut short by it.
    #[inline]
    pub(crate) const fn is_shrunk(self) -> bool {
        self.0 & SHRUNK != 0
    }

    #[inline]
    pub(crate) const fn from_word(word: u64) -> Meta {
        Meta(word)
    }

    #[inline]
    pub(crate) const fn word(self) -> u64 {
        self.0
    }

    pub(crate) fn origin(self) -> DeadlineOrigin {
        DeadlineOrigin::ALL[(self.0 >> ORIGIN_SHIFT) as usize % DeadlineOrigin::ALL.len()]
    }

    pub(crate) fn after(self) -> Duration {
        Duration::from_nanos(self.0 & NANOS)
    }
}

/// When the call being made must be done: the deadline of the innermost
/// [`TimeoutLayer`](super::TimeoutLayer) around it, passed down to everything it encloses.
///
/// A timeout makes its deadline current while it calls the service inside and while it polls
/// that call, the way a task-local value is scoped (nothing is allocated, nothing locked; a
/// timeout nested in another one gets the earlier of the two deadlines). Layers inside read it:
///
/// - an inner timeout (per attempt, inside a retry layer) never waits past it: its timeout
///   shrinks to the time left, and when that runs out it fails with the deadline's
///   [`Elapsed`](super::Elapsed): the timeout that set the deadline (the total), its
///   [`DeadlineOrigin`] named;
/// - a retry layer gives up with [`GiveUp::Deadline`](crate::retry::GiveUp::Deadline) instead
///   of sleeping into it, when the next delay (plus the attempt timeout it was told of) would
///   pass it;
/// - a handler behind a server's timeout reads it with [`Deadline::current`], e.g. to bound
///   its own calls or a database statement. On a gRPC server in
///   [`respond_grpc`](super::TimeoutLayer::respond_grpc) mode it is the client's `grpc-timeout`
///   when that is shorter.
///
/// A caller with a deadline of its own (the time an incoming request has left) gives it to a
/// call with [`Deadline::scope_call`]. Work moved to another task (`tokio::spawn`, a
/// `tower::buffer` worker) does not see it: the deadline belongs to the call, not to work that
/// may outlive it.
///
/// Reading it costs a thread-local access; layers read it only where it changes what they do:
/// a timeout when its call starts, a retry layer after a failed attempt.
///
/// ```
/// use std::time::Duration;
/// use tower::{Service, ServiceBuilder, ServiceExt};
/// use tower_rampart::timeout::{Deadline, TimeoutLayer};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), tower_rampart::BoxError> {
/// let mut svc = ServiceBuilder::new()
///     .layer(TimeoutLayer::new(Duration::from_secs(2))?)
///     .service_fn(|_: ()| async {
///         let left = Deadline::current().expect("inside a timeout").remaining();
///         Ok::<_, std::convert::Infallible>(left)
///     });
/// assert_eq!(svc.ready().await?.call(()).await?, Duration::from_secs(2));
/// assert_eq!(Deadline::current(), None, "only inside the call");
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline(Instant);

impl Deadline {
    /// A deadline at `instant`.
    pub const fn at(instant: Instant) -> Self {
        Deadline(instant)
    }

    /// The instant.
    pub const fn instant(self) -> Instant {
        self.0
    }

    /// The time left from now; zero once it has passed.
    pub fn remaining(self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    /// The deadline of the call being made or polled on this thread, if a timeout encloses it
    /// (or a [`scope`](Self::scope) or [`scope_call`](Self::scope_call) gives one).
    #[inline]
    pub fn current() -> Option<Deadline> {
        CURRENT.with(Cell::get).map(|c| Deadline(c.at))
    }

    /// The time left as a gRPC `grpc-timeout` header value, to pass the deadline to a gRPC
    /// server (whose [`respond_grpc`](super::TimeoutLayer::respond_grpc) timeout honours it): the
    /// finest unit that holds it in 8 digits, rounded down so that the server never gets more
    /// time than is left ([`encode_grpc_timeout`](super::encode_grpc_timeout)).
    ///
    /// A timeout layer in `respond_grpc` mode sends it on gRPC requests by itself, and
    /// [`SendGrpcTimeoutLayer`](super::SendGrpcTimeoutLayer) does it inside timeouts in error
    /// mode (the standard client pipeline has one): this is for anything else.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_rampart::timeout::Deadline;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let soon = Deadline::at(tokio::time::Instant::now() + Duration::from_millis(1500));
    /// assert_eq!(soon.to_grpc_timeout(), "1500000u");
    /// # }
    /// ```
    pub fn to_grpc_timeout(self) -> http::HeaderValue {
        super::encode_grpc_timeout(self.remaining())
    }

    /// Runs `f` with this deadline current (or the current one, when that is earlier): the
    /// services it calls and the futures it polls see it as a timeout's deadline.
    ///
    /// Only while `f` runs: a future that `f` returns (`scope(|| svc.call(req))`) is polled
    /// after the scope ended, so the layers that read the deadline while polling (a retry
    /// layer deciding whether to retry, and every attempt after the first) would not see it.
    /// For a call, use [`scope_call`](Self::scope_call), which also makes the deadline current
    /// at every poll of the future.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tokio::time::Instant;
    /// use tower_rampart::timeout::Deadline;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let soon = Deadline::at(Instant::now() + Duration::from_secs(1));
    /// let later = Deadline::at(Instant::now() + Duration::from_secs(5));
    /// soon.scope(|| later.scope(|| assert_eq!(Deadline::current(), Some(soon))));
    /// # }
    /// ```
    pub fn scope<R>(self, f: impl FnOnce() -> R) -> R {
        let _scope = enter(self.scoped());
        f()
    }

    /// Makes a call with this deadline (or the current one, when that is earlier) current for
    /// its whole life: `call` (e.g. `|| svc.call(req)`) runs with it current, and so does every
    /// poll of the future it returns, as a [`TimeoutLayer`](super::TimeoutLayer) does for the
    /// call inside it. Every layer of the call sees the same deadline, whenever it reads it:
    /// the timeouts inside shrink to it (one that runs out because of it fails with an
    /// [`Elapsed`](super::Elapsed) naming [`DeadlineOrigin::Scope`]), and a retry layer gives
    /// up rather than retry past it ([`GiveUp::Deadline`](crate::retry::GiveUp::Deadline)).
    /// The deadline is passed down, not enforced here: a timeout layer inside enforces it.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tokio::time::Instant;
    /// use tower::{Service, ServiceBuilder, ServiceExt};
    /// use tower_rampart::timeout::{Deadline, DeadlineOrigin, Elapsed, TimeoutLayer};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), tower_rampart::BoxError> {
    /// let mut svc = ServiceBuilder::new()
    ///     .layer(TimeoutLayer::new(Duration::from_secs(10))?)
    ///     .service_fn(|_: ()| async {
    ///         tokio::time::sleep(Duration::from_secs(60)).await;
    ///         Ok::<_, std::convert::Infallible>(())
    ///     });
    /// // A deadline from the caller, e.g. the time an incoming request has left.
    /// let deadline = Deadline::at(Instant::now() + Duration::from_secs(2));
    /// let ready = svc.ready().await?;
    /// let err = deadline.scope_call(|| ready.call(())).await.unwrap_err();
    /// let elapsed = err.downcast_ref::<Elapsed>().unwrap();
    /// assert_eq!(elapsed.after(), Duration::from_secs(2));
    /// assert_eq!(elapsed.deadline_origin(), Some(DeadlineOrigin::Scope));
    /// # Ok(())
    /// # }
    /// ```
    pub fn scope_call<F: Future>(self, call: impl FnOnce() -> F) -> ScopedFuture<F> {
        let deadline = self.scoped();
        let future = {
            let _scope = enter(deadline);
            call()
        };
        ScopedFuture { future, deadline }
    }

    /// This deadline as a caller's scope gives it: the time it gives is what is left now.
    fn scoped(self) -> Current {
        Current {
            at: self.0,
            meta: Meta::new(DeadlineOrigin::Scope, self.remaining()),
        }
    }
}

pin_project! {
    /// A future polled with a deadline current: made by [`Deadline::scope_call`].
    #[must_use = "futures do nothing unless polled"]
    pub struct ScopedFuture<F> {
        #[pin]
        future: F,
        deadline: Current,
    }
}

impl<F> fmt::Debug for ScopedFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScopedFuture")
            .field("deadline", &Deadline(self.deadline.at))
            .finish_non_exhaustive()
    }
}

impl<F: Future> Future for ScopedFuture<F> {
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _scope = enter(*this.deadline);
        this.future.poll(cx)
    }
}

/// Restores the deadline that was current before [`enter`], also when unwinding.
pub(crate) struct Scope(Option<Current>);

impl Drop for Scope {
    #[inline]
    fn drop(&mut self) {
        let previous = self.0;
        CURRENT.with(|c| c.set(previous));
    }
}

/// Makes `deadline` current (or keeps the current one when it is earlier) until the scope is
/// dropped.
#[inline]
pub(crate) fn enter(deadline: Current) -> Scope {
    CURRENT.with(|c| {
        let previous = c.get();
        let now = match previous {
            Some(p) if p.at <= deadline.at => p,
            _ => deadline,
        };
        c.set(Some(now));
        Scope(previous)
    })
}

/// Makes `now` current until the scope is dropped, where `previous` is what [`current`] read
/// just before and `now` is no later than it (a timeout's deadline, computed from the outer
/// one): a write, no comparison.
#[inline]
pub(crate) fn replace(previous: Option<Current>, now: Current) -> Scope {
    CURRENT.with(|c| c.set(Some(now)));
    Scope(previous)
}

/// The current deadline, with what set it, if any.
#[inline]
pub(crate) fn current() -> Option<Current> {
    CURRENT.with(Cell::get)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_keeps_origin_and_time() {
        for origin in DeadlineOrigin::ALL {
            for after in [
                Duration::ZERO,
                Duration::from_millis(2500),
                crate::MAX_DURATION,
            ] {
                let m = Meta::new(origin, after);
                assert_eq!(
                    (m.origin(), m.after(), m.is_shrunk()),
                    (origin, after, false)
                );
                assert_eq!(Meta::from_word(m.word()), m);
                assert_eq!(Meta::of_timeout(origin, crate::time::nanos_of(after)), m);
                let s = m.shrunk();
                assert_eq!(
                    (s.origin(), s.after(), s.is_shrunk()),
                    (origin, after, true)
                );
            }
            let m = Meta::new(origin, Duration::MAX);
            assert_eq!(
                (m.origin(), m.after()),
                (origin, Duration::from_nanos(NANOS))
            );
            assert!(!m.is_shrunk());
        }
    }

    #[test]
    fn scopes_nest_and_restore() {
        let now = Instant::now();
        let (a, b) = (now + Duration::from_secs(1), now + Duration::from_secs(2));
        assert_eq!(Deadline::current(), None);
        Deadline::at(b).scope(|| {
            assert_eq!(Deadline::current(), Some(Deadline::at(b)));
            Deadline::at(a).scope(|| assert_eq!(Deadline::current(), Some(Deadline::at(a))));
            assert_eq!(Deadline::current(), Some(Deadline::at(b)));
            let caught = std::panic::catch_unwind(|| {
                Deadline::at(a).scope(|| panic!("unwinds"));
            });
            assert!(caught.is_err());
            assert_eq!(
                Deadline::current(),
                Some(Deadline::at(b)),
                "restored on unwind"
            );
        });
        assert_eq!(Deadline::current(), None);
    }
}
