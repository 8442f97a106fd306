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
    breaker: Arc<Breaker>,
}

impl CircuitBreakerHandle {
    pub(crate) fn new(breaker: Arc<Breaker>) -> Self {
        CircuitBreakerHandle { breaker }
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        self.breaker.name()
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.breaker.state()
    }

    /// Rates, counts and time in state, now.
    pub fn snapshot(&self) -> Snapshot {
        self.breaker.snapshot(Instant::now())
    }

    /// Reject every call until [`reset`](Self::reset).
    pub fn force_open(&self) {
        self.breaker.force_open(Instant::now());
    }

    /// Admit every call, record nothing.
    pub fn disable(&self) {
        self.breaker.disable(Instant::now());
    }

    /// Admit and record every call, never change state.
    pub fn metrics_only(&self) {
        self.breaker.metrics_only(Instant::now());
    }

    /// Closed, with fresh metrics.
    pub fn reset(&self) {
        self.breaker.reset(Instant::now());
    }

    /// The underlying state machine.
    pub fn breaker(&self) -> &Arc<Breaker> {
        &self.breaker
    }
}
