//! The identifier every event of one logical call carries.

use std::{
    cell::Cell,
    fmt,
    num::NonZeroU64,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
};

/// No rampart layer is calling or polling on this thread.
const NONE: u64 = u64::MAX;
/// A call is in scope, but nothing has asked for its id yet.
const UNASSIGNED: u64 = 0;

thread_local! {
    // The id of the call being made or polled on this thread: `NONE`, `UNASSIGNED` or an id.
    static CURRENT: Cell<u64> = const { Cell::new(NONE) };
}

// Ids start at 1; `NONE` is never reached (2^64 - 1 calls).
static NEXT: AtomicU64 = AtomicU64::new(1);

/// Which logical call an event belongs to: every event of the breaker, retry, timeout and
/// fallback layers ([`retry::Event::call`](crate::retry::Event), ...) carries it, so the events
/// of one call can be put together, and the attempts of a retried call share it.
///
/// The outermost rampart layer of a call opens its scope; the layers inside see the same call,
/// the way a timeout passes its [`Deadline`](crate::timeout::Deadline) down (a thread-local
/// value while the call is made and polled: nothing allocated, nothing locked). The id itself is
/// drawn from a process-wide counter (one relaxed atomic increment) only when something asks
/// for it: a listener's event, a `tracing` event, or [`CallId::current`]. Calls nobody watches
/// cost no increment.
///
/// `Copy`, compared and hashed as a number, shown as that number: a `tracing` field
/// (`call_id = %call`; the layers' own `tracing` events name it `call_id`) or a log key. A call
/// made while another is in scope (a handler's outbound call behind a server's layers) shares
/// its id; work moved to another task (`tokio::spawn`, a `tower::buffer` worker, the
/// Idempotency-Key layer's handler task) does not see it, and the rampart layers there open
/// calls of their own.
///
/// ```
/// use std::convert::Infallible;
/// use tower::{Service, ServiceBuilder, ServiceExt};
/// use tower_rampart::{call::CallId, retry::RetryLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_rampart::BoxError> {
/// let mut svc = ServiceBuilder::new()
///     .layer(RetryLayer::builder().build()?)
///     .service_fn(|_: ()| async {
///         // Inside the call: the id its events carry, e.g. for a tracing span.
///         let call = CallId::current().expect("inside a rampart layer");
///         Ok::<_, Infallible>(call)
///     });
/// let first = svc.ready().await?.call(()).await?;
/// let second = svc.ready().await?.call(()).await?;
/// assert_ne!(first, second);
/// assert_eq!(CallId::current(), None, "only inside a call");
/// // Your own id (from a request header, say) for everything `f` calls:
/// let mine = CallId::next();
/// let seen = mine.scope(|| CallId::current());
/// assert_eq!(seen, Some(mine));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CallId(NonZeroU64);

impl CallId {
    /// A new id, never handed out before in this process.
    pub fn next() -> CallId {
        let n = NEXT.fetch_add(1, Relaxed);
        CallId(NonZeroU64::new(n).unwrap_or(NonZeroU64::MIN))
    }

    /// The id as a number (above zero).
    pub const fn get(self) -> u64 {
        self.0.get()
    }

    /// The id of the call being made or polled on this thread, drawn now if nothing asked for
    /// it before; `None` outside any rampart layer's call (and outside [`CallId::scope`]).
    #[inline]
    pub fn current() -> Option<CallId> {
        CURRENT.with(|c| match c.get() {
            NONE => None,
            UNASSIGNED => {
                let id = CallId::next();
                c.set(id.get());
                Some(id)
            }
            n => NonZeroU64::new(n).map(CallId),
        })
    }

    /// Runs `f` with this id as the current call's: the rampart layers it calls report their
    /// events with it instead of drawing their own.
    pub fn scope<R>(self, f: impl FnOnce() -> R) -> R {
        let _restore = Restore(CURRENT.with(|c| c.replace(self.get())));
        f()
    }
}

impl fmt::Display for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl From<CallId> for u64 {
    fn from(id: CallId) -> u64 {
        id.get()
    }
}

/// Restores the thread-local value a scope replaced, also when unwinding.
struct Restore(u64);

impl Drop for Restore {
    #[inline]
    fn drop(&mut self) {
        let previous = self.0;
        CURRENT.with(|c| c.set(previous));
    }
}

/// Whether a call is in scope on this thread, without drawing its id (as
/// [`CallId::current`] would).
#[inline]
pub(crate) fn in_scope() -> bool {
    CURRENT.with(Cell::get) != NONE
}

/// What a layer's service call or future keeps of the call id between polls: `0` until an id
/// is known. A whole word, like the futures' other counters.
pub(crate) type Slot = u64;

/// A slot for a call not yet seen.
pub(crate) const EMPTY: Slot = UNASSIGNED;

/// Runs `f` (a layer's inner `call`, or a poll of its future) inside the current call: when no
/// layer outside opened one, this layer's call opens it with the id in `slot` (if any). The
/// call's id as `f` leaves it (drawn or found during `f`, or the outer layers') is kept in
/// `slot` for the next poll. Two thread-local reads and, at most, two writes: no allocation, no
/// atomic, no id drawn unless something asks for it.
#[inline]
pub(crate) fn within<R>(slot: &mut Slot, f: impl FnOnce() -> R) -> R {
    let previous = CURRENT.with(|c| {
        let current = c.get();
        // No call in scope (`NONE`), or one whose id nobody asked for yet (`UNASSIGNED`): this
        // layer's id, if it has one, is the call's (writing `EMPTY` over `UNASSIGNED` changes
        // nothing). One comparison: `NONE + 1` and `UNASSIGNED + 1` are 0 and 1.
        if current.wrapping_add(1) <= 1 {
            c.set(*slot);
        }
        current
    });
    // Restores the outer state also when `f` unwinds; the id is kept only when it returns.
    let restore = Close(previous);
    let out = f();
    // Never `NONE` here: this scope or one outside is open. `UNASSIGNED` only when `slot` was
    // `EMPTY` and stays so; otherwise the call's id, which `slot` keeps without a compare.
    *slot = CURRENT.with(Cell::get);
    drop(restore);
    out
}

/// Closes the scope a [`within`] opened, if it opened one, also when unwinding.
struct Close(u64);

impl Drop for Close {
    #[inline]
    fn drop(&mut self) {
        if self.0 == NONE {
            CURRENT.with(|c| c.set(NONE));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outermost_scope_owns_the_id_and_inner_ones_share_it() {
        assert_eq!(CallId::current(), None);
        let mut outer = EMPTY;
        let mut inner = EMPTY;
        let (a, b) = within(&mut outer, || {
            let a = within(&mut inner, CallId::current);
            (a, CallId::current())
        });
        assert!(a.is_some());
        assert_eq!(a, b);
        assert_eq!(outer, a.unwrap().get());
        assert_eq!(inner, outer);
        assert_eq!(CallId::current(), None, "restored");
        // The next poll of the same call sees the same id; no id is drawn when none is asked.
        let again = within(&mut outer, CallId::current);
        assert_eq!(again, a);
        let mut quiet = EMPTY;
        let seen = within(&mut quiet, in_scope);
        assert!(seen, "a scope is open inside `within`");
        assert_eq!(
            quiet, EMPTY,
            "asking whether a call is in scope draws no id"
        );
        assert!(!in_scope());
    }

    #[test]
    fn an_inner_layer_remembers_an_id_given_only_at_call_time() {
        let given = CallId::next();
        let mut slot = EMPTY;
        given.scope(|| within(&mut slot, || ()));
        assert_eq!(within(&mut slot, CallId::current), Some(given));
        let caught = std::panic::catch_unwind(|| {
            let mut s = EMPTY;
            within(&mut s, || panic!("unwinds"))
        });
        assert!(caught.is_err());
        assert_eq!(CallId::current(), None, "restored on unwind");
    }
}
