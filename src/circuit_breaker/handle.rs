//! Operator access to a running breaker.

use std::{ops::Deref, sync::Arc};

use tokio::time::Instant;

use super::{Breaker, LiveBreaker, Snapshot, State};

/// Reads and steers the breaker of a configured layer (get it with
/// [`CircuitBreakerLayer::handle`](super::CircuitBreakerLayer::handle), which every kind of
/// single-breaker layer offers: plain, [leaked](super::CircuitBreakerLayer::leak),
/// [live](super::CircuitBreakerLayer::live) and so the registry's). Cheap to clone; every
/// clone steers the same breaker that every service made by the layer shares. A handle of a
/// [`LiveBreaker`] follows it: after a reload replaces the breaker, it steers the new one.
///
/// ```
/// use tower_rampart::circuit_breaker::{CircuitBreakerLayer, Config, State};
///
/// let layer = CircuitBreakerLayer::new(Config::builder().name("search").build()?);
/// let handle = layer.handle();
/// handle.force_open();
/// assert_eq!(handle.state(), State::ForcedOpen);
/// handle.reset();
/// assert_eq!(handle.snapshot().state, State::Closed);
/// # Ok::<_, tower_rampart::circuit_breaker::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct CircuitBreakerHandle {
    breaker: Held,
}

#[derive(Debug, Clone)]
enum Held {
    Shared(Arc<Breaker>),
    Static(&'static Breaker),
    /// With the name of the breaker serving when the handle was taken, for
    /// [`name`](CircuitBreakerHandle::name).
    Live(LiveBreaker, Arc<str>),
}

/// The breaker a handle steers now: borrowed, or the one a live breaker serves with.
enum Current<'a> {
    Borrowed(&'a Breaker),
    Live(Arc<Breaker>),
}

impl Deref for Current<'_> {
    type Target = Breaker;

    fn deref(&self) -> &Breaker {
        match self {
            Current::Borrowed(b) => b,
            Current::Live(b) => b,
        }
    }
}

impl CircuitBreakerHandle {
    pub(crate) fn new(breaker: Arc<Breaker>) -> Self {
        CircuitBreakerHandle {
            breaker: Held::Shared(breaker),
        }
    }

    pub(crate) fn new_static(breaker: &'static Breaker) -> Self {
        CircuitBreakerHandle {
            breaker: Held::Static(breaker),
        }
    }

    pub(crate) fn live(breaker: LiveBreaker) -> Self {
        let name = breaker.current().shared_name().clone();
        CircuitBreakerHandle {
            breaker: Held::Live(breaker, name),
        }
    }

    fn get(&self) -> Current<'_> {
        match &self.breaker {
            Held::Shared(b) => Current::Borrowed(b),
            Held::Static(b) => Current::Borrowed(b),
            Held::Live(l, _) => Current::Live(l.current()),
        }
    }

    /// The breaker's name. For a [`LiveBreaker`]'s handle, the name of the breaker that served
    /// when the handle was taken (a reload that replaces the breaker may rename it: the
    /// [`snapshot`](Self::snapshot) has the name of the one serving now).
    pub fn name(&self) -> &str {
        match &self.breaker {
            Held::Shared(b) => b.name(),
            Held::Static(b) => b.name(),
            Held::Live(_, name) => name,
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.get().state()
    }

    /// Name, state (read on the clock: an open breaker whose wait is over reads half-open),
    /// since when, rates, counts and free probe permits, now. See [`Snapshot`].
    pub fn snapshot(&self) -> Snapshot {
        self.get().snapshot(Instant::now())
    }

    /// Reject every call until [`reset`](Self::reset).
    pub fn force_open(&self) {
        self.get().force_open(Instant::now());
    }

    /// Admit every call, record nothing.
    pub fn disable(&self) {
        self.get().disable(Instant::now());
    }

    /// Admit and record every call, never change state.
    pub fn metrics_only(&self) {
        self.get().metrics_only(Instant::now());
    }

    /// Closed, with fresh metrics. Emits [`EventKind::Reset`](super::EventKind::Reset) from
    /// any state, closed included.
    pub fn reset(&self) {
        self.get().reset(Instant::now());
    }

    /// The underlying state machine: for a [`LiveBreaker`]'s handle, the breaker serving
    /// calls now (hold the handle, not this, to follow reloads).
    pub fn breaker(&self) -> impl Deref<Target = Breaker> + '_ {
        self.get()
    }
}
