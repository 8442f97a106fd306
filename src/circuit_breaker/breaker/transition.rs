//! State changes: the transition lock, the events they queue (reported once it is released),
//! hand-overs to a replacing breaker, and operator controls.

use std::{
    sync::{Arc, PoisonError, Weak, atomic::Ordering::*},
    time::Duration,
};

use tokio::time::Instant;

use super::{Breaker, MutexGuard, P16, State, TAG, Window, Word};
use crate::time::nanos_of;

impl Breaker {
    pub(super) fn serial(&self) -> MutexGuard<'_, ()> {
        self.transitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Moves to `to` if the breaker is still in `from`'s period (`None`: from any state), then
    /// reports the change, with no lock held. Returns the state left, when this call made the
    /// change.
    pub(super) fn transition(
        &self,
        from: Option<Word>,
        to: State,
        now: Instant,
        hint: Option<Duration>,
    ) -> Option<State> {
        let left = {
            let _serial = self.serial();
            self.transition_locked(from, to, now, hint)
        };
        self.after_transition(left, to, now);
        left
    }

    /// What follows a transition once the lock is released: its events reach the listeners,
    /// and an opening reaches the breaker that replaced this one, if any.
    fn after_transition(&self, left: Option<State>, to: State, now: Instant) {
        self.observers.deliver();
        if left.is_some()
            && to == State::Open
            && let Some(next) = self.successor.get().and_then(Weak::upgrade)
        {
            next.follow_opening(now);
        }
    }

    /// [`transition`](Self::transition) with the transition lock held: the event is queued,
    /// not reported.
    fn transition_locked(
        &self,
        from: Option<Word>,
        to: State,
        now: Instant,
        hint: Option<Duration>,
    ) -> Option<State> {
        let mut cur = self.load();
        if let Some(from) = from
            && (cur.state() != from.state() || cur.generation() != from.generation())
        {
            return None;
        }
        let left = cur.state();
        let n = self.nanos(now);
        let next = cur.next(to);
        match to {
            State::Open => {
                // Under the lock no retune is writing: this read never retries.
                let t = self.tunables.load();
                let openings = self.openings.load(Relaxed).saturating_add(1);
                self.openings.store(openings, Relaxed);
                let mut open = t.open_duration_after(openings);
                if let Some(h) = hint.filter(|_| t.respect_retry_after) {
                    open = open.max(h.min(t.max_open()));
                }
                self.open_until
                    .store(n.saturating_add(nanos_of(open)), Release);
            }
            State::HalfOpen => self.probes.store((next.generation() & P16) << TAG, Release),
            State::Closed => {
                self.openings.store(0, Relaxed);
                match &self.window {
                    Window::Count(c) => c.reset(),
                    Window::Time(t) => t.reset(),
                    Window::Consecutive(c) => c.reset(),
                }
            }
            State::ForcedOpen | State::Disabled | State::MetricsOnly => {}
        }
        self.state_since.store(n, Release);
        // Under the lock only the half-open permit count can change beside us.
        while let Err(seen) = self.word.compare_exchange(cur.0, next.0, AcqRel, Acquire) {
            cur = Word(seen);
        }
        if left != to {
            self.observers.transition(left, to);
        }
        Some(left)
    }

    /// The breaker this one handed over to opened: a call admitted here before the reload
    /// failed afterwards and judged the downstream down. The successor opens too, unless it
    /// already judged (open, half-open) or an operator holds it.
    fn follow_opening(&self, now: Instant) {
        let w = self.load();
        if w.state() == State::Closed {
            self.transition(Some(w), State::Open, now, None);
        }
    }

    /// Hands over to `new`, which replaces this breaker ([`LiveBreaker`](crate::circuit_breaker::LiveBreaker)
    /// after a window change, or a keyed family's reconfiguration). Under this breaker's
    /// transition lock, so that no transition of this one falls between reading its state and
    /// handing over: `new` takes on the state (see [`take_state_of`](Self::take_state_of)), and
    /// an opening of this breaker after the hand-over (a call admitted before it that fails
    /// afterwards) opens `new` too.
    ///
    /// `new`'s events are queued, not reported: the caller calls [`Breaker::deliver_events`]
    /// on `new` once it holds no lock. Call [`retire_metrics`](Self::retire_metrics) on this
    /// breaker before building `new`, so that no transition of this one moves the gauges `new`
    /// sets.
    pub(crate) fn hand_over(&self, new: &Arc<Breaker>, now: Instant) {
        let _serial = self.serial();
        new.take_state_of(self.load().state(), now);
        let _ = self.successor.set(Arc::downgrade(new));
    }

    /// Reports events queued by [`hand_over`](Self::hand_over). Call with no lock held.
    pub(crate) fn deliver_events(&self) {
        self.observers.deliver();
    }

    /// Takes on `old`'s state when it replaces it ([`LiveBreaker`](crate::circuit_breaker::LiveBreaker) after a
    /// window change): an operator's forced, disabled or metrics-only state stays, and a
    /// breaker that was open or probing opens (for its own open duration), so that a reload
    /// never lets traffic through to a downstream known to be failing.
    ///
    /// Events are queued, not reported (see [`hand_over`](Self::hand_over)).
    fn take_state_of(&self, old: State, now: Instant) {
        let to = match old {
            State::Closed => return,
            State::Open | State::HalfOpen => State::Open,
            s @ (State::ForcedOpen | State::Disabled | State::MetricsOnly) => s,
        };
        let _serial = self.serial();
        self.transition_locked(None, to, now, None);
    }

    /// Operator control: reject every call until [`Breaker::reset`].
    pub fn force_open(&self, now: Instant) {
        self.transition(None, State::ForcedOpen, now, None);
    }

    /// Operator control: admit every call and record nothing.
    pub fn disable(&self, now: Instant) {
        self.transition(None, State::Disabled, now, None);
    }

    /// Operator control: admit and record every call, never change state.
    pub fn metrics_only(&self, now: Instant) {
        self.transition(None, State::MetricsOnly, now, None);
    }

    /// Operator control: closed, with an empty window and the open duration back at its start.
    ///
    /// Always emits [`EventKind::Reset`](crate::circuit_breaker::EventKind::Reset), from any state (closed
    /// included: the window is emptied all the same), after the
    /// [`Transition`](crate::circuit_breaker::EventKind::Transition) event when the state changed.
    pub fn reset(&self, now: Instant) {
        {
            let _serial = self.serial();
            if let Some(from) = self.transition_locked(None, State::Closed, now, None) {
                self.observers.reset(from);
            }
        }
        self.observers.deliver();
    }
}
