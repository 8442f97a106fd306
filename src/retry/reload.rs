//! Replacing a retry layer's policy while it serves traffic.
//!
//! Layers and services hold a [`Source`]; each call takes one snapshot of it (a [`Held`]) when
//! it starts and keeps it to the end, so every attempt of a call follows one policy version.

use std::{
    fmt,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use arc_swap::ArcSwap;

use super::{
    Budget, Builder,
    policy::{Held, Policy},
};
use crate::{ConfigError, backoff::Backoff};

/// Where layers and services find the policy: fixed (shared or leaked), or reloadable.
#[derive(Clone)]
pub(crate) enum Source {
    Shared(Arc<Policy>),
    Static(&'static Policy),
    /// Reloadable: each call holds the current version by a reference count.
    Live(Arc<Cell<Policy>>),
    /// Reloadable after [`RetryLayer::leak`](super::RetryLayer::leak): every version is leaked,
    /// so calls hold it by a plain reference, as a leaked layer's do.
    LiveLeaked(&'static Cell<&'static Policy>),
}

/// The current version of a reloadable policy.
pub(crate) struct Cell<T> {
    // Never changes on a reload: kept apart so `name()` can lend it without a snapshot.
    name: Arc<str>,
    current: ArcSwap<T>,
    // Serialises `apply`s (never taken by a call), so that each new version is derived from the
    // one it replaces (the budget kept is the current one).
    applying: Mutex<()>,
}

impl<T> Cell<T> {
    fn new(name: Arc<str>, current: T) -> Self {
        Cell {
            name,
            current: ArcSwap::from_pointee(current),
            applying: Mutex::new(()),
        }
    }
}

impl Source {
    /// The policy one call uses from start to end.
    #[inline]
    pub(crate) fn snapshot(&self) -> Held {
        match self {
            Source::Shared(p) => Held::Shared(p.clone()),
            Source::Static(p) => Held::Static(p),
            Source::Live(cell) => Held::Shared(cell.current.load_full()),
            // A guard on the thread's own debt slot, no shared count: the version is never freed.
            Source::LiveLeaked(cell) => Held::Static(**cell.current.load()),
        }
    }

    /// The layer's name, the same in every version.
    pub(crate) fn name(&self) -> &str {
        match self {
            Source::Shared(p) => &p.name,
            Source::Static(p) => &p.name,
            Source::Live(cell) => &cell.name,
            Source::LiveLeaked(cell) => &cell.name,
        }
    }

    pub(crate) fn leak(self) -> Source {
        match self {
            Source::Shared(arc) => {
                let held: &'static Arc<_> = Box::leak(Box::new(arc));
                Source::Static(held)
            }
            // A reloadable layer already shared with a handle stays as it is (see
            // `RetryLayer::leak`).
            other => other,
        }
    }

    pub(crate) fn reloadable(self) -> (Source, RetryReload) {
        match self {
            Source::Shared(arc) => {
                let cell = Arc::new(Cell {
                    name: arc.name.clone(),
                    current: ArcSwap::new(arc),
                    applying: Mutex::new(()),
                });
                (Source::Live(cell.clone()), RetryReload(Target::Live(cell)))
            }
            Source::Static(policy) => {
                let cell: &'static Cell<&'static Policy> =
                    Box::leak(Box::new(Cell::new(policy.name.clone(), policy)));
                (Source::LiveLeaked(cell), RetryReload(Target::Leaked(cell)))
            }
            Source::Live(cell) => (Source::Live(cell.clone()), RetryReload(Target::Live(cell))),
            Source::LiveLeaked(cell) => {
                (Source::LiveLeaked(cell), RetryReload(Target::Leaked(cell)))
            }
        }
    }
}

#[derive(Clone)]
enum Target {
    Live(Arc<Cell<Policy>>),
    Leaked(&'static Cell<&'static Policy>),
}

/// Replaces the policy of a reloadable [`RetryLayer`](super::RetryLayer) (made by
/// [`RetryLayer::reloadable`](super::RetryLayer::reloadable)), of every service it made or will
/// make, and of their clones, while they serve traffic. Clones of the handle control the same
/// layer.
///
/// A call takes the policy current when it starts and keeps it to its end: all its attempts,
/// delays and limits come from one version, never from two. Calls do not lock nor allocate to
/// read it.
///
/// ```
/// use std::{sync::{Arc, atomic::{AtomicU32, Ordering}}, time::Duration};
/// use tower::{Service, ServiceBuilder, ServiceExt};
/// use tower_rampart::{backoff::Backoff, retry::RetryLayer};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), tower_rampart::BoxError> {
/// let (layer, reload) = RetryLayer::builder().max_attempts(2).build()?.reloadable();
/// let attempts = Arc::new(AtomicU32::new(0));
/// let seen = attempts.clone();
/// let mut svc = ServiceBuilder::new().layer(layer).service_fn(move |_: ()| {
///     seen.fetch_add(1, Ordering::SeqCst);
///     async { Err::<(), _>("down") }
/// });
/// // Later, on a configuration reload: the service made above follows.
/// reload.apply(
///     RetryLayer::builder()
///         .max_attempts(4)
///         .backoff(Backoff::constant(Duration::from_millis(10))),
/// )?;
/// assert!(svc.ready().await?.call(()).await.is_err());
/// assert_eq!(attempts.load(Ordering::SeqCst), 4);
/// assert_eq!(reload.current().max_attempts, 4);
/// // A refused configuration changes nothing.
/// assert!(reload.apply(RetryLayer::builder().max_attempts(0)).is_err());
/// assert_eq!(reload.current().max_attempts, 4);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RetryReload(Target);

impl RetryReload {
    /// Checks `builder`'s values as [`Builder::build`] does and, when they pass, makes them the
    /// policy of every call that starts from now on. Calls already started finish under the
    /// policy they started with.
    ///
    /// The layer keeps its identity: the builder's [`name`](Builder::name) and
    /// [`on_event`](Builder::on_event) listeners are ignored; events keep flowing to the
    /// listeners the layer was built with, and metrics keep its name. The current
    /// [`Budget`], with what it has counted, is kept when the builder's budget has the same
    /// settings (kind, limits, window); otherwise the builder's budget replaces it, or, when the
    /// builder has none, the layer has none from now on.
    ///
    /// Applies from several threads are made one after the other; the last one wins. On a layer
    /// leaked before it was made reloadable ([`RetryLayer::leak`](super::RetryLayer::leak)),
    /// each apply leaks the new version (a few hundred bytes), so calls keep holding it without
    /// a reference count: fine for configuration reloads, not for thousands of applies a second.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_rampart::retry::{Budget, RetryLayer};
    ///
    /// # fn main() -> Result<(), tower_rampart::ConfigError> {
    /// let budget = || Budget::token_bucket(10, 0.1);
    /// let (_layer, reload) = RetryLayer::builder().budget(budget()?).build()?.reloadable();
    /// // Same budget settings: the budget and its tokens are kept.
    /// reload.apply(RetryLayer::builder().max_attempts(5).budget(budget()?))?;
    /// let err = reload.apply(RetryLayer::builder().max_attempts(101)).unwrap_err();
    /// assert_eq!(err.setting(), Some("max_attempts"));
    /// assert_eq!(reload.current().max_attempts, 5, "nothing changed");
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// The [`ConfigError`] [`Builder::build`] would return; the policy is then left as it was.
    pub fn apply(&self, builder: Builder) -> Result<(), ConfigError> {
        builder.check()?;
        match &self.0 {
            Target::Live(cell) => {
                let _one = cell.applying.lock().unwrap_or_else(PoisonError::into_inner);
                let next = builder.reissue(&cell.current.load());
                cell.current.store(Arc::new(next));
            }
            Target::Leaked(cell) => {
                let _one = cell.applying.lock().unwrap_or_else(PoisonError::into_inner);
                let next = builder.reissue(**cell.current.load());
                let next: &'static Policy = Box::leak(Box::new(next));
                cell.current.store(Arc::new(next));
            }
        }
        Ok(())
    }

    /// The settings calls starting now use.
    ///
    /// ```
    /// use tower_rampart::retry::RetryLayer;
    ///
    /// let (_layer, reload) = RetryLayer::builder().name("ledger").build()?.reloadable();
    /// let now = reload.current();
    /// assert_eq!((&*now.name, now.max_attempts), ("ledger", 3));
    /// # Ok::<_, tower_rampart::ConfigError>(())
    /// ```
    pub fn current(&self) -> Settings {
        let held = match &self.0 {
            Target::Live(cell) => Held::Shared(cell.current.load_full()),
            Target::Leaked(cell) => Held::Static(**cell.current.load()),
        };
        Settings::of(&held)
    }
}

impl fmt::Debug for RetryReload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RetryReload").field(&self.current()).finish()
    }
}

/// A retry policy's settings at one moment, read with [`RetryReload::current`] or
/// [`RetryLayer::settings`](super::RetryLayer::settings).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Settings {
    /// The layer's name.
    pub name: Arc<str>,
    /// Attempts in all, the first included ([`Builder::max_attempts`]).
    pub max_attempts: u32,
    /// The elapsed-time limit ([`Builder::max_elapsed`]).
    pub max_elapsed: Option<Duration>,
    /// The delays between attempts ([`Builder::backoff`]).
    pub backoff: Backoff,
    /// The cap on retry-after hints; `None` ignores them ([`Builder::retry_after`]).
    pub retry_after_cap: Option<Duration>,
    /// The budget, shared with the calls using it ([`Builder::budget`]).
    pub budget: Option<Budget>,
    /// Whether a circuit breaker's refusal is retried ([`Builder::retry_circuit_open`]).
    pub retry_circuit_open: bool,
    /// The attempt timeout the layer fits retries to ([`Builder::attempt_timeout`]).
    pub attempt_timeout: Option<Duration>,
}

impl Settings {
    pub(crate) fn of(p: &Policy) -> Self {
        Settings {
            name: p.name.clone(),
            max_attempts: p.max_attempts,
            max_elapsed: p.max_elapsed,
            backoff: p.backoff.clone(),
            retry_after_cap: p.retry_after_cap,
            budget: p.budget.clone(),
            retry_circuit_open: p.retry_circuit_open,
            attempt_timeout: p.attempt_timeout,
        }
    }
}
