//! A breaker's metric handles, bound at construction or at a later use once a recorder exists
//! (see `crate::telemetry`), and their help text.

use std::sync::{Arc, Mutex, PoisonError};

use super::metric_names;
use crate::{
    circuit_breaker::State,
    telemetry::{self, Help, Lazy},
};

/// A breaker's metrics: handles bound at the first use that finds a recorder (see
/// `crate::telemetry`), and what the state gauges need to be set right when that happens.
pub(super) struct Metrics {
    pub(super) bound: Lazy<Handles>,
    /// The `breaker` label: the name, or a keyed breaker's base name.
    pub(super) breaker: Arc<str>,
    /// A keyed breaker's key label (`authority`, `key`) and value (the key, or `(other)` past
    /// the label cap).
    pub(super) key: Option<(Arc<str>, Arc<str>)>,
    /// Keyed breakers may share labels, so their state gauges count breakers per state
    /// (increment and decrement) instead of being set to 0 or 1.
    pub(super) counting: bool,
    /// The state the gauges show, and whether they still show it; changed with binding under
    /// this lock, so that handles bound while a transition happens start from the right state.
    /// Taken by transitions and binding only, never on a call's path once bound.
    pub(super) gauges: Mutex<Gauges>,
}

pub(super) struct Gauges {
    pub(super) state: State,
    /// Set when the breaker is gone (a keyed breaker evicted): its state no longer counts.
    pub(super) retired: bool,
}

pub(super) struct Handles {
    pub(super) success: metrics::Counter,
    pub(super) failure: metrics::Counter,
    pub(super) ignored: metrics::Counter,
    pub(super) slow: metrics::Counter,
    pub(super) not_permitted: metrics::Counter,
    pub(super) state: [metrics::Gauge; 6],
}

impl Metrics {
    /// Bound handles, binding them now if a look for a recorder is due and finds one (see
    /// `crate::telemetry`): one atomic load once bound.
    #[inline]
    pub(super) fn handles(&self) -> Option<&Handles> {
        match self.bound.get() {
            Some(h) => Some(h),
            None if self.bound.poll_due() && self.bound.look() => self.bind(),
            None => None,
        }
    }

    #[cold]
    #[inline(never)]
    pub(super) fn bind(&self) -> Option<&Handles> {
        if !telemetry::recorder_installed() {
            return None;
        }
        let g = self.gauges.lock().unwrap_or_else(PoisonError::into_inner);
        self.bind_locked(&g)
    }

    /// Binds (if a recorder exists) and sets the state gauges from `g`; called with the lock.
    pub(super) fn bind_locked(&self, g: &Gauges) -> Option<&Handles> {
        if let Some(h) = self.bound.get() {
            return Some(h);
        }
        let h = self.bound.bind_now(HELP, || self.make())?;
        if !g.retired {
            if self.counting {
                h.state[g.state as usize].increment(1.0);
            } else {
                for (s, gauge) in State::ALL.iter().zip(&h.state) {
                    gauge.set(if *s == g.state { 1.0 } else { 0.0 });
                }
            }
        }
        Some(h)
    }

    pub(super) fn labels(&self) -> Vec<metrics::Label> {
        let mut labels = vec![metrics::Label::new("breaker", self.breaker.to_string())];
        if let Some((name, key)) = &self.key {
            labels.push(metrics::Label::new(name.to_string(), key.to_string()));
        }
        labels
    }

    fn make(&self) -> Handles {
        use metric_names::*;
        let with = |extra: Option<(&'static str, &'static str)>| {
            let mut l = self.labels();
            l.extend(extra.map(|(k, v)| metrics::Label::new(k, v)));
            l
        };
        let calls = |o: &'static str| metrics::counter!(CALLS, with(Some(("outcome", o))));
        Handles {
            success: calls("success"),
            failure: calls("failure"),
            ignored: calls("ignored"),
            slow: metrics::counter!(SLOW_CALLS, with(None)),
            not_permitted: metrics::counter!(NOT_PERMITTED, with(None)),
            state: State::ALL.map(|s| metrics::gauge!(STATE, with(Some(("state", s.as_str()))))),
        }
    }
}

/// Help text of the breaker's metrics.
const HELP: &[Help] = {
    use metric_names::*;
    &[
        Help::counter(
            CALLS,
            "Calls a circuit breaker recorded, by outcome (success, failure, ignored).",
        ),
        Help::counter(
            SLOW_CALLS,
            "Calls slower than the circuit breaker's slow-call threshold.",
        ),
        Help::counter(
            NOT_PERMITTED,
            "Calls a circuit breaker refused while open or half-open.",
        ),
        Help::counter(
            TRANSITIONS,
            "Circuit breaker state changes, by from and to state.",
        ),
        Help::gauge(
            STATE,
            "1 for the circuit breaker's current state, 0 for the others; for keyed breakers, live breakers per state.",
        ),
    ]
};
