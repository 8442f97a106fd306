//! Events, listeners and `metrics`/`tracing` output.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use super::State;
use crate::call::CallId;
#[cfg(feature = "metrics")]
use crate::telemetry::{self, Lazy};

#[cfg(feature = "metrics")]
mod instruments;
#[cfg(feature = "metrics")]
use instruments::{Gauges, Metrics};

/// Something that happened in a breaker. Listeners get `&Event`.
///
/// ```
/// use std::sync::{Arc, atomic::{AtomicUsize, Ordering}};
/// use tower_rampart::circuit_breaker::{Config, Event, EventKind};
///
/// let opened = Arc::new(AtomicUsize::new(0));
/// let seen = opened.clone();
/// let config = Config::builder()
///     .on_event(move |e: &Event<'_>| {
///         if let EventKind::Transition { to, .. } = e.kind {
///             if to == tower_rampart::circuit_breaker::State::Open {
///                 seen.fetch_add(1, Ordering::Relaxed);
///             }
///         }
///     })
///     .build()?;
/// # Ok::<_, tower_rampart::circuit_breaker::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    /// The breaker's name.
    pub breaker: &'a str,
    /// The logical call the event is about, or that found the change it reports (a
    /// [`Transition`](EventKind::Transition) made by a call): the id the retry, timeout and
    /// fallback layers around and inside report for the same call. `None` for what happens
    /// outside any call, such as an operator's [`Reset`](EventKind::Reset).
    pub call: Option<CallId>,
    /// What happened.
    pub kind: EventKind,
}

/// The kinds of [`Event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventKind {
    /// The breaker changed state.
    Transition {
        /// The state left.
        from: State,
        /// The state entered.
        to: State,
    },
    /// A call was refused.
    Rejected {
        /// The state that refused it.
        state: State,
        /// How long until the breaker probes again, when known.
        retry_after: Option<Duration>,
    },
    /// A call succeeded. `elapsed` is measured only when slow-call detection is on.
    Success {
        /// The call's duration, when measured.
        elapsed: Option<Duration>,
    },
    /// A call failed.
    Failure {
        /// The call's duration, when measured.
        elapsed: Option<Duration>,
    },
    /// A call was slow (sent in addition to its success or failure).
    Slow {
        /// The call's duration.
        elapsed: Duration,
    },
    /// A call was classified as neither success nor failure.
    Ignored,
    /// An operator reset the breaker ([`CircuitBreakerHandle::reset`](super::CircuitBreakerHandle::reset)):
    /// closed, with an empty window. Sent on every reset, from any state, after the
    /// [`Transition`](EventKind::Transition) event when the state changed.
    Reset {
        /// The state the breaker was in.
        from: State,
    },
}

pub(crate) type Listener = Arc<dyn Fn(&Event<'_>) + Send + Sync>;

/// Where events go: listeners, and metric handles registered once so the hot path neither
/// allocates nor looks anything up.
///
/// State changes ([`EventKind::Transition`] and [`EventKind::Reset`]) are made under the
/// breaker's transition lock but never reported under it: a listener may steer the breaker it
/// listens to (force it open, reset, retune or reconfigure it), which takes that lock. They are
/// queued under the lock, in the order they happen, and delivered once it is released (see
/// [`Observers::deliver`]). Outcomes and rejections take no lock and are reported at once on the
/// caller's thread.
pub(crate) struct Observers {
    name: Arc<str>,
    listeners: Box<[Listener]>,
    /// Transitions and resets waiting for delivery; `None` when nobody would hear them (no
    /// listener, no `tracing`).
    pending: Option<Mutex<Pending>>,
    #[cfg(feature = "metrics")]
    metrics: Metrics,
}

/// State changes queued under the transition lock, delivered in that order once it is released.
#[derive(Default)]
struct Pending {
    queue: VecDeque<Queued>,
    /// A thread is delivering: state changes queued meanwhile are delivered by it, after the
    /// ones before them, so every listener sees them in the order they happened.
    delivering: bool,
}

/// A state change to report, with the call that made it (read when it happened: another
/// thread may deliver it).
#[derive(Clone, Copy)]
struct Queued {
    kind: EventKind,
    call: Option<CallId>,
}

/// Ends a delivery when a listener panics, so later state changes are still delivered. A
/// delivery that empties the queue ends itself under the same lock hold that found it empty:
/// ending it later would leave a change queued in between to nobody.
struct Delivering<'a>(&'a Mutex<Pending>);

impl Drop for Delivering<'_> {
    fn drop(&mut self) {
        let mut p = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        p.delivering = false;
    }
}

/// Metric names, all labelled with `breaker` (the breaker's name). Keyed breakers label with
/// their base name and add the key: `authority` for
/// [`keyed_by_authority`](super::CircuitBreakerLayer::keyed_by_authority), `key` otherwise
/// (`(other)` past [`max_keys`](super::KeyedCircuitBreakerLayer::max_keys)).
pub mod metric_names {
    /// Counter of recorded calls, labelled `outcome` = `success` | `failure` | `ignored`.
    pub const CALLS: &str = "rampart_circuit_breaker_calls_total";
    /// Counter of slow calls.
    pub const SLOW_CALLS: &str = "rampart_circuit_breaker_slow_calls_total";
    /// Counter of rejected calls.
    pub const NOT_PERMITTED: &str = "rampart_circuit_breaker_not_permitted_calls_total";
    /// Counter of transitions, labelled `from` and `to`.
    pub const TRANSITIONS: &str = "rampart_circuit_breaker_transitions_total";
    /// Gauge per `state`: 1 for the current state, 0 for the others. For keyed breakers, the
    /// number of live breakers with that label in that state (evicted breakers count nowhere).
    pub const STATE: &str = "rampart_circuit_breaker_state";
}

impl Observers {
    pub(crate) fn new(name: Arc<str>, listeners: &[Listener], initial: State) -> Self {
        Self::labelled(name.clone(), name, false, listeners, initial)
    }

    /// Observers whose metrics carry `label` rather than the name; `counting` gauges count
    /// breakers per state, for labels that several breakers share.
    pub(crate) fn labelled(
        name: Arc<str>,
        label: Arc<str>,
        counting: bool,
        listeners: &[Listener],
        initial: State,
    ) -> Self {
        #[cfg(feature = "metrics")]
        let metrics = {
            let (breaker, key) = telemetry::split_keyed_label(&label);
            let m = Metrics {
                bound: Lazy::new(),
                breaker: Arc::from(breaker),
                key: key.map(|(n, k)| (Arc::from(n), Arc::from(k))),
                counting,
                gauges: Mutex::new(Gauges {
                    state: initial,
                    retired: false,
                }),
            };
            // Bound at once when a recorder exists (the gauges show the state from the start).
            m.bind();
            m
        };
        #[cfg(not(feature = "metrics"))]
        let _ = (initial, label, counting);
        let heard = !listeners.is_empty() || cfg!(feature = "tracing");
        Observers {
            name,
            listeners: listeners.into(),
            pending: heard.then(|| Mutex::new(Pending::default())),
            #[cfg(feature = "metrics")]
            metrics,
        }
    }

    pub(crate) fn name(&self) -> &Arc<str> {
        &self.name
    }

    pub(crate) fn listeners(&self) -> &[Listener] {
        &self.listeners
    }

    #[inline]
    fn emit(&self, kind: EventKind) {
        if !self.listeners.is_empty() {
            // The call in scope (the breaker's service call or a poll of its future), its id
            // drawn only now that a listener wants it.
            self.emit_for(kind, CallId::current());
        }
    }

    fn emit_for(&self, kind: EventKind, call: Option<CallId>) {
        let event = Event {
            breaker: &self.name,
            call,
            kind,
        };
        for l in self.listeners.iter() {
            l(&event);
        }
    }

    /// Queues a state change; called under the transition lock.
    fn queue(&self, kind: EventKind) {
        if let Some(pending) = &self.pending {
            let call = CallId::current();
            let mut p = pending.lock().unwrap_or_else(PoisonError::into_inner);
            p.queue.push_back(Queued { kind, call });
        }
    }

    /// Reports the queued state changes, in the order they happened. Called with no lock of the
    /// crate held, after every operation that may have queued one.
    ///
    /// One thread delivers at a time: a thread that finds another delivering leaves its state
    /// changes to it (they are reported after the ones before them, on that thread). A listener
    /// that changes the state of its own breaker finds its own thread delivering, so its change
    /// is reported after the listeners of the current one have all run, never inside them.
    pub(crate) fn deliver(&self) {
        let Some(pending) = &self.pending else {
            return;
        };
        {
            let mut p = pending.lock().unwrap_or_else(PoisonError::into_inner);
            if p.delivering || p.queue.is_empty() {
                return;
            }
            p.delivering = true;
        }
        let end = Delivering(pending);
        loop {
            let next = {
                let mut p = pending.lock().unwrap_or_else(PoisonError::into_inner);
                match p.queue.pop_front() {
                    Some(q) => q,
                    None => {
                        p.delivering = false;
                        drop(p);
                        std::mem::forget(end);
                        return;
                    }
                }
            };
            self.report(next);
        }
    }

    fn report(&self, q: Queued) {
        #[cfg(feature = "tracing")]
        match q.kind {
            EventKind::Transition { from, to } => {
                tracing::info!(breaker = %self.name, call_id = q.call.map(CallId::get), from = from.as_str(), to = to.as_str(), "circuit breaker changed state");
            }
            EventKind::Reset { from } => {
                tracing::info!(breaker = %self.name, from = from.as_str(), "circuit breaker reset");
            }
            _ => {}
        }
        if !self.listeners.is_empty() {
            self.emit_for(q.kind, q.call);
        }
    }

    #[inline]
    pub(crate) fn outcome(&self, failure: bool, slow: bool, elapsed: Option<Duration>) {
        #[cfg(feature = "metrics")]
        if let Some(m) = self.metrics.handles() {
            if failure {
                m.failure.increment(1);
            } else {
                m.success.increment(1);
            }
            if slow {
                m.slow.increment(1);
            }
        }
        // Nothing is built for nobody: with no listener the outcome costs one compare.
        if self.listeners.is_empty() {
            return;
        }
        self.emit(if failure {
            EventKind::Failure { elapsed }
        } else {
            EventKind::Success { elapsed }
        });
        if slow {
            self.emit(EventKind::Slow {
                elapsed: elapsed.unwrap_or_default(),
            });
        }
    }

    pub(crate) fn ignored(&self) {
        #[cfg(feature = "metrics")]
        if let Some(m) = self.metrics.handles() {
            m.ignored.increment(1);
        }
        self.emit(EventKind::Ignored);
    }

    pub(crate) fn rejected(&self, state: State, retry_after: Option<Duration>) {
        #[cfg(feature = "metrics")]
        if let Some(m) = self.metrics.handles() {
            m.not_permitted.increment(1);
        }
        // In the caller's span: a trace shows the refusal where it happened.
        #[cfg(feature = "tracing")]
        tracing::debug!(
            breaker = %self.name,
            state = state.as_str(),
            retry_after_ms = retry_after.map(|d| d.as_secs_f64() * 1000.0),
            "circuit breaker refused the call"
        );
        self.emit(EventKind::Rejected { state, retry_after });
    }

    /// Called with the breaker's transition lock held, like [`Observers::retire`], so that the
    /// counting gauges move in step with the state. The event is queued, and reported by
    /// [`deliver`](Self::deliver) once the lock is released.
    pub(crate) fn transition(&self, from: State, to: State) {
        #[cfg(feature = "metrics")]
        {
            let m = &self.metrics;
            let mut g = m.gauges.lock().unwrap_or_else(PoisonError::into_inner);
            g.state = to;
            let bound = m.bound.get().is_some();
            // Bound now if a recorder appeared: the gauges start from `to`, nothing to move.
            if let Some(h) = m.bind_locked(&g) {
                let mut labels = m.labels();
                labels.push(metrics::Label::new("from", from.as_str()));
                labels.push(metrics::Label::new("to", to.as_str()));
                metrics::counter!(metric_names::TRANSITIONS, labels).increment(1);
                // A retired breaker (evicted, or replaced by a `LiveBreaker`) may still change
                // state for calls in flight; its label's gauges belong to the live breakers now.
                if bound && !g.retired && !m.counting {
                    for (s, gauge) in State::ALL.iter().zip(&h.state) {
                        gauge.set(if *s == to { 1.0 } else { 0.0 });
                    }
                } else if bound && !g.retired {
                    h.state[from as usize].decrement(1.0);
                    h.state[to as usize].increment(1.0);
                }
            }
        }
        self.queue(EventKind::Transition { from, to });
    }
}

impl Observers {
    /// An operator reset, from `from` (any state, closed included): queued under the
    /// transition lock, after the transition it made, like [`transition`](Self::transition).
    pub(crate) fn reset(&self, from: State) {
        self.queue(EventKind::Reset { from });
    }

    /// The breaker in `current` state is gone (evicted, replaced or dropped): from now on its
    /// transitions leave the state gauges alone, and a keyed breaker leaves the counting state
    /// gauges, once. Called with the transition lock held, or from `Drop`. A plain breaker's
    /// gauges keep their last values (a replacement with the same name sets them anew).
    pub(crate) fn retire(&self, current: State) {
        #[cfg(feature = "metrics")]
        {
            let m = &self.metrics;
            let mut g = m.gauges.lock().unwrap_or_else(PoisonError::into_inner);
            if !std::mem::replace(&mut g.retired, true)
                && m.counting
                && let Some(h) = m.bound.get()
            {
                h.state[current as usize].decrement(1.0);
            }
        }
        #[cfg(not(feature = "metrics"))]
        let _ = current;
    }
}
