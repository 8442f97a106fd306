//! Event collectors: a listener to hand to a layer, and the log it fills.

use std::sync::{Arc, Mutex};

use tower_rampart::{
    circuit_breaker::{Event, EventKind, State},
    retry,
};

/// The retry events a listener saw, in order.
pub type RetryEvents = Arc<Mutex<Vec<retry::EventKind>>>;

/// A retry listener and the log it fills.
pub fn retry_events() -> (
    RetryEvents,
    impl Fn(&retry::Event<'_>) + Send + Sync + 'static,
) {
    let log = RetryEvents::default();
    let seen = log.clone();
    (log, move |e: &retry::Event<'_>| {
        seen.lock().unwrap().push(e.kind)
    })
}

/// The state transitions a breaker made, in order.
pub type Transitions = Arc<Mutex<Vec<(State, State)>>>;

/// A breaker listener that records every transition, and the log it fills.
pub fn transitions() -> (Transitions, impl Fn(&Event<'_>) + Send + Sync + 'static) {
    let log = Transitions::default();
    let seen = log.clone();
    (log, move |event: &Event<'_>| {
        if let EventKind::Transition { from, to } = event.kind {
            seen.lock().unwrap().push((from, to));
        }
    })
}

/// The events of a call retried once, then given up at its second attempt for `reason`.
pub fn retried_once_then_gave_up(events: &[retry::EventKind], reason: retry::GiveUp) -> bool {
    matches!(
        events,
        [
            retry::EventKind::Retry { attempt: 2, .. },
            retry::EventKind::GaveUp { attempts: 2, reason: gave_up },
        ] if *gave_up == reason
    )
}
