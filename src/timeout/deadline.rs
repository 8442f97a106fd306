//! The deadline a timeout passes down to the layers and handlers it encloses.

use std::{cell::Cell, time::Duration};

use tokio::time::Instant;

thread_local! {
    // The deadline of the innermost timeout whose call is being made or polled on this thread.
    static CURRENT: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// When the call being made must be done: the deadline of the innermost
/// [`TimeoutLayer`](super::TimeoutLayer) around it, passed down to everything it encloses.
///
/// A timeout makes its deadline current while it calls the service inside and while it polls
/// that call, the way a task-local value is scoped (nothing is allocated, nothing locked; a
/// timeout nested in another one gets the earlier of the two deadlines). Layers inside read it:
///
/// - an inner timeout (per attempt, inside a retry layer) never waits past it: its timeout
///   shrinks to the time left, and the [`Elapsed`](super::Elapsed) it fails with says so;
/// - a retry layer gives up with [`GiveUp::Deadline`](crate::retry::GiveUp::Deadline) instead
///   of sleeping into it, when the next delay (plus the attempt timeout it was told of) would
///   pass it;
/// - a handler behind a server's timeout reads it with [`Deadline::current`], e.g. to bound
///   its own calls or a database statement. On a gRPC server in
///   [`respond_grpc`](super::TimeoutLayer::respond_grpc) mode it is the client's `grpc-timeout`
///   when that is shorter.
///
/// Work moved to another task (`tokio::spawn`, a `tower::buffer` worker) does not see it: the
/// deadline belongs to the call, not to work that may outlive it.
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

    /// The deadline of the call being made or polled on this thread, if a timeout encloses it.
    #[inline]
    pub fn current() -> Option<Deadline> {
        CURRENT.with(Cell::get).map(Deadline)
    }

    /// The time left as a gRPC `grpc-timeout` header value, to pass the deadline to a gRPC
    /// server (whose [`respond_grpc`](super::TimeoutLayer::respond_grpc) timeout honours it): the
    /// finest unit that holds it in 8 digits, rounded up.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower::ServiceBuilder;
    /// use tower_rampart::timeout::{Deadline, TimeoutLayer};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), tower_rampart::ConfigError> {
    /// let soon = Deadline::at(tokio::time::Instant::now() + Duration::from_millis(1500));
    /// assert_eq!(soon.to_grpc_timeout(), "1500000u");
    /// // A gRPC client stack: the total timeout's deadline goes out with every attempt.
    /// let stack = ServiceBuilder::new()
    ///     .layer(TimeoutLayer::new(Duration::from_secs(5))?)
    ///     // .layer(retry) ...
    ///     .map_request(|mut req: http::Request<()>| {
    ///         if let Some(deadline) = Deadline::current() {
    ///             req.headers_mut().insert("grpc-timeout", deadline.to_grpc_timeout());
    ///         }
    ///         req
    ///     });
    /// # let _ = stack;
    /// # Ok(())
    /// # }
    /// ```
    pub fn to_grpc_timeout(self) -> http::HeaderValue {
        grpc_timeout_value(self.remaining())
    }

    /// Runs `f` with this deadline current (or the current one, when that is earlier): the
    /// services it calls and the futures it polls see it as a timeout's deadline.
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
        let _scope = enter(self.0);
        f()
    }
}

/// `d` in `grpc-timeout` form: at most 8 digits and a unit, rounded up to the unit.
fn grpc_timeout_value(d: Duration) -> http::HeaderValue {
    const UNITS: [(u128, char); 6] = [
        (1, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ];
    let nanos = d.as_nanos();
    for (unit, suffix) in UNITS {
        let n = nanos.div_ceil(unit);
        if n <= 99_999_999 {
            return http::HeaderValue::from_str(&format!("{n}{suffix}"))
                .expect("digits and a letter");
        }
    }
    http::HeaderValue::from_static("99999999H")
}

/// Restores the deadline that was current before [`enter`], also when unwinding.
pub(crate) struct Scope(Option<Instant>);

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
pub(crate) fn enter(deadline: Instant) -> Scope {
    CURRENT.with(|c| {
        let previous = c.get();
        c.set(Some(previous.map_or(deadline, |p| p.min(deadline))));
        Scope(previous)
    })
}

/// The current deadline's instant, if any.
#[inline]
pub(crate) fn current_instant() -> Option<Instant> {
    CURRENT.with(Cell::get)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeout::parse_grpc_timeout;

    #[test]
    fn grpc_timeout_values_round_up_and_parse_back() {
        let cases = [
            (Duration::ZERO, "0n"),
            (Duration::from_nanos(99_999_999), "99999999n"),
            (Duration::from_nanos(100_000_001), "100001u"),
            (Duration::from_secs(30), "30000000u"),
            (Duration::from_secs(100_000), "100000S"),
            (Duration::from_secs(100_000_000), "1666667M"),
            (Duration::MAX, "99999999H"),
        ];
        for (d, text) in cases {
            let v = grpc_timeout_value(d);
            assert_eq!(v, text, "{d:?}");
            let back = parse_grpc_timeout(&v).unwrap();
            assert!(
                back >= d.min(Duration::from_secs(99_999_999 * 3600)),
                "{d:?}"
            );
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
