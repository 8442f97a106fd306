//! Operator access to a running breaker.

use std::sync::Arc;

use tokio::time::Instant;

use super::{Breaker, Snapshot, State};

/// Reads and steers the breaker of a configured layer (get it with
/// [`CircuitBreakerLayer::handle`](super::CircuitBreakerLayer::handle)). Cheap to clone; every
/// clone steers the same breaker that every service made by the layer shares.
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

    fn get(&self) -> &Breaker {
        match &self.breaker {
            Held::Shared(b) => b,
            Held::Static(b) => b,
        }
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        self.get().name()
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

    /// The underlying state machine.
    pub fn breaker(&self) -> &Breaker {
        self.get()
    }
}
