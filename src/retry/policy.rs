//! The retry policy: limits, backoff, hints and budget, and the decision after each attempt.

use std::{fmt, sync::Arc, time::Duration};

use tokio::time::Instant;

use super::{Budget, DelayCause, Event, EventKind};
use crate::{
    ConfigError,
    backoff::{Backoff, Delays},
    call::CallId,
    classify::Outcome,
};

/// Why a call stopped being retried while its last attempt had failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GiveUp {
    /// The attempt limit was reached.
    Attempts,
    /// The next attempt would start after the elapsed-time limit.
    Elapsed,
    /// The retry budget is spent.
    Budget,
    /// The request cannot be sent again (method not safe to repeat, body not replayable).
    NotRetryable,
    /// The downstream asked for a longer wait than the retry-after cap (or not to retry at all).
    RetryAfter,
    /// The failure is a circuit breaker's refusal.
    CircuitOpen,
    /// The next attempt could not finish before the deadline a timeout outside passed down
    /// ([`Deadline`](crate::timeout::Deadline)): its delay, plus the attempt timeout when the
    /// layer knows it ([`Builder::attempt_timeout`]), would pass it.
    Deadline,
}

impl GiveUp {
    /// A stable lower-case name, used as a metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            GiveUp::Attempts => "attempts",
            GiveUp::Elapsed => "elapsed",
            GiveUp::Budget => "budget",
            GiveUp::NotRetryable => "not_retryable",
            GiveUp::RetryAfter => "retry_after",
            GiveUp::CircuitOpen => "circuit_open",
            GiveUp::Deadline => "deadline",
        }
    }
}

impl fmt::Display for GiveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a call holds the policy version it uses from start to end: shared with a reference
/// count, or in static memory after [`RetryLayer::leak`](super::RetryLayer::leak) (no count per
/// call). Layers and services hold a `reload::Source`, which hands one out per call.
#[derive(Clone)]
pub(crate) enum Held {
    Shared(Arc<Policy>),
    Static(&'static Policy),
}

impl std::ops::Deref for Held {
    type Target = Policy;

    #[inline]
    fn deref(&self) -> &Policy {
        match self {
            Held::Shared(p) => p,
            Held::Static(p) => p,
        }
    }
}

pub(crate) const NOT_TIMED: u64 = u64::MAX;

/// What a call keeps once it is retried, out of line (most calls are never retried).
pub(crate) struct Retries {
    pub(crate) delays: Delays,
    /// When the attempt in flight started, for its duration metric (`NOT_TIMED` when not
    /// timed; the first attempt starts with the call).
    pub(crate) attempt_started: u64,
}

pub(crate) enum Next {
    Stop(Option<GiveUp>),
    Wait(Duration, DelayCause),
}

type Listener = Arc<dyn Fn(&Event<'_>) + Send + Sync>;

/// Shared by every service the layer makes. A reloaded policy is a new `Policy` (cloned from
/// the current one's name, listeners and metric handles): calls never see one half changed.
#[derive(Clone)]
pub(crate) struct Policy {
    pub(crate) name: Arc<str>,
    epoch: Instant,
    pub(crate) max_attempts: u32,
    pub(crate) max_elapsed: Option<Duration>,
    pub(crate) backoff: Backoff,
    pub(crate) retry_after_cap: Option<Duration>,
    pub(crate) budget: Option<Budget>,
    pub(crate) retry_circuit_open: bool,
    pub(crate) attempt_timeout: Option<Duration>,
    listeners: Box<[Listener]>,
    #[cfg(feature = "metrics")]
    pub(crate) metrics: super::measures::Metrics,
}

impl Policy {
    /// What to do after attempt number `attempts` (1 for the first) ended with `outcome`.
    pub(crate) fn next(
        &self,
        attempts: u32,
        outcome: &Outcome,
        circuit_open: bool,
        replayable: bool,
        started: u64,
        retries: &mut Option<Box<Retries>>,
    ) -> Next {
        if !outcome.is_failure() {
            return Next::Stop(None);
        }
        if circuit_open && !self.retry_circuit_open {
            return Next::Stop(Some(GiveUp::CircuitOpen));
        }
        if attempts >= self.max_attempts {
            return Next::Stop(Some(GiveUp::Attempts));
        }
        if !replayable {
            return Next::Stop(Some(GiveUp::NotRetryable));
        }
        let backoff = retries
            .get_or_insert_with(|| {
                Box::new(Retries {
                    delays: self.backoff.delays(),
                    attempt_started: NOT_TIMED,
                })
            })
            .delays
            .next()
            .unwrap_or_default();
        let (delay, cause) = match (outcome.retry_after(), self.retry_after_cap) {
            // `Duration::MAX` is gRPC's "do not retry" (see `GrpcResponse`), whatever the cap.
            (Some(hint), Some(cap)) if hint > cap || hint == Duration::MAX => {
                return Next::Stop(Some(GiveUp::RetryAfter));
            }
            // The downstream knows when it will be ready: its word replaces our guess.
            (Some(hint), Some(_)) => (hint, DelayCause::RetryAfter),
            _ => (backoff, DelayCause::Backoff),
        };
        // Read once per failed attempt: a `Copy` value in a thread-local cell.
        let deadline = crate::timeout::Deadline::current();
        let needs_clock = self.max_elapsed.is_some() || self.budget.is_some() || deadline.is_some();
        let now = needs_clock.then(Instant::now);
        if let (Some(deadline), Some(now)) = (deadline, now) {
            let left = deadline.instant().saturating_duration_since(now);
            // The attempt must start before the deadline, and, when the layer knows the attempt
            // timeout, have all of it (an attempt cut short by the deadline is wasted work).
            let needed = delay.saturating_add(self.attempt_timeout.unwrap_or_default());
            if delay >= left || needed > left {
                return Next::Stop(Some(GiveUp::Deadline));
            }
        }
        if let (Some(max), Some(now)) = (self.max_elapsed, now)
            && started != NOT_TIMED
            // Saturating: a hint or backoff near `Duration::MAX` must stop the call, not panic.
            && Duration::from_nanos(self.nanos(now).saturating_sub(started)).saturating_add(delay)
                > max
        {
            return Next::Stop(Some(GiveUp::Elapsed));
        }
        if let (Some(budget), Some(now)) = (&self.budget, now)
            && !budget.try_retry(now)
        {
            return Next::Stop(Some(GiveUp::Budget));
        }
        Next::Wait(delay, cause)
    }

    fn nanos(&self, t: Instant) -> u64 {
        // Below `NOT_TIMED`, which marks calls without a start time.
        crate::time::nanos_since(self.epoch, t).min(NOT_TIMED - 1)
    }

    /// When a call starts, for the elapsed limit and the duration metrics; `NOT_TIMED` (no
    /// clock read) without a limit or a recorder. Counts the first attempt.
    #[inline]
    pub(crate) fn start(&self) -> u64 {
        #[cfg(feature = "metrics")]
        let timed = match self.metrics.handles() {
            Some(h) => {
                h.attempts.increment(1);
                true
            }
            None => false,
        };
        #[cfg(not(feature = "metrics"))]
        let timed = false;
        if timed || self.max_elapsed.is_some() {
            self.nanos(Instant::now())
        } else {
            NOT_TIMED
        }
    }

    /// Counts an attempt after the first; its start time for the duration metrics (or
    /// `NOT_TIMED`).
    pub(crate) fn attempted(&self) -> u64 {
        #[cfg(feature = "metrics")]
        if let Some(h) = self.metrics.handles() {
            h.attempts.increment(1);
            return self.nanos(Instant::now());
        }
        NOT_TIMED
    }

    /// Records the durations of a call that ended (and of its last attempt), when timed.
    #[inline(never)]
    pub(crate) fn ended(&self, started: u64, attempt_started: u64) {
        #[cfg(feature = "metrics")]
        if started != NOT_TIMED
            && let Some(h) = self.metrics.handles()
        {
            let now = self.nanos(Instant::now());
            let secs = |from: u64| Duration::from_nanos(now.saturating_sub(from)).as_secs_f64();
            h.call.record(secs(started));
            // The first attempt started with the call.
            let attempt = if attempt_started == NOT_TIMED {
                started
            } else {
                attempt_started
            };
            h.attempt.record(secs(attempt));
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (started, attempt_started);
    }

    /// Records the duration of an attempt that failed and will be retried, when timed.
    pub(crate) fn attempt_ended(&self, started: u64, attempt_started: u64) {
        #[cfg(feature = "metrics")]
        if started != NOT_TIMED
            && let Some(h) = self.metrics.handles()
        {
            let now = self.nanos(Instant::now());
            let from = if attempt_started == NOT_TIMED {
                started
            } else {
                attempt_started
            };
            h.attempt
                .record(Duration::from_nanos(now.saturating_sub(from)).as_secs_f64());
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (started, attempt_started);
    }

    fn emit(&self, kind: EventKind) {
        // Inside the retry future's poll: the call is in scope, and its id is drawn only here,
        // for a listener.
        if !self.listeners.is_empty()
            && let Some(call) = CallId::current()
        {
            let e = Event {
                retry: &self.name,
                call,
                kind,
            };
            for l in self.listeners.iter() {
                l(&e);
            }
        }
    }

    pub(crate) fn retrying(&self, attempts: u32, delay: Duration, cause: DelayCause, error: bool) {
        #[cfg(feature = "metrics")]
        if let Some(m) = self.metrics.handles() {
            if error {
                m.retry_error.increment(1);
            } else {
                m.retry_response.increment(1);
            }
            m.delay.record(delay.as_secs_f64());
        }
        #[cfg(feature = "tracing")]
        tracing::debug!(
            retry = %self.name,
            call_id = CallId::current().map(CallId::get),
            attempt = attempts + 1,
            delay_ms = delay.as_secs_f64() * 1000.0,
            cause = cause.as_str(),
            "retrying"
        );
        self.emit(EventKind::Retry {
            attempt: attempts + 1,
            delay,
            after_error: error,
            cause,
        });
    }

    pub(crate) fn gave_up(&self, attempts: u32, reason: GiveUp) {
        #[cfg(feature = "metrics")]
        if let Some(m) = self.metrics.handles() {
            m.gave_up[reason as usize].increment(1);
        }
        #[cfg(feature = "tracing")]
        tracing::debug!(retry = %self.name, call_id = CallId::current().map(CallId::get), attempts, reason = reason.as_str(), "gave up retrying");
        self.emit(EventKind::GaveUp { attempts, reason });
    }
}

/// Builds a [`RetryLayer`](super::RetryLayer), checking every value.
///
/// Defaults: 3 attempts in all, no elapsed limit (put a total timeout outside), exponential
/// backoff from 200 ms doubling to at most 30 s with full jitter, downstream `Retry-After` /
/// gRPC push-back honoured up to 30 s (a longer hint stops retrying), no budget, circuit-open
/// refusals not retried (in either breaker mode), no retry that cannot start before the
/// [`Deadline`](crate::timeout::Deadline) of a timeout outside.
///
/// ```
/// use std::time::Duration;
/// use tower_rampart::{backoff::Backoff, retry::{Budget, RetryLayer}};
///
/// let layer = RetryLayer::builder()
///     .name("catalog")
///     .max_attempts(4)
///     .max_elapsed(Duration::from_secs(10))
///     .backoff(Backoff::exponential(Duration::from_millis(50)))
///     .budget(Budget::token_bucket(10, 0.1)?)
///     .build()?;
/// # let _ = layer;
/// assert!(RetryLayer::builder().max_attempts(0).build().is_err());
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
#[must_use]
pub struct Builder {
    name: Arc<str>,
    max_attempts: u32,
    max_elapsed: Option<Duration>,
    backoff: Backoff,
    retry_after_cap: Option<Duration>,
    budget: Option<Budget>,
    retry_circuit_open: bool,
    attempt_timeout: Option<Duration>,
    listeners: Vec<Listener>,
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("name", &self.name)
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            name: Arc::from("default"),
            max_attempts: 3,
            max_elapsed: None,
            backoff: Backoff::default(),
            retry_after_cap: Some(Duration::from_secs(30)),
            budget: None,
            retry_circuit_open: false,
            attempt_timeout: None,
            listeners: Vec::new(),
        }
    }
}

impl Builder {
    /// The layer's name (metrics label, events).
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Attempts in all, the first included (1..=100; gRPC caps it at 5).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// No retry starts later than `elapsed` after the first attempt began (above zero, at most
    /// [`MAX_DURATION`](crate::MAX_DURATION)).
    pub fn max_elapsed(mut self, elapsed: Duration) -> Self {
        self.max_elapsed = Some(elapsed);
        self
    }

    /// The delays between attempts.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Honour a failure's retry-after hint (HTTP `Retry-After`, gRPC push-back) up to `cap`; a
    /// longer hint ends retrying, and so does a hint of `Duration::MAX` (how the gRPC classifiers
    /// pass on "do not retry"). `None` ignores hints and always uses the backoff. The cap is at
    /// most [`MAX_DURATION`](crate::MAX_DURATION) (one year): [`build`](Self::build) refuses a
    /// longer one (`retry_after_cap`).
    pub fn retry_after(mut self, cap: Option<Duration>) -> Self {
        self.retry_after_cap = cap;
        self
    }

    /// Share `budget` among every clone of the service.
    pub fn budget(mut self, budget: Budget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// No budget (the default): undoes [`budget`](Self::budget), e.g. when a configuration
    /// layered over another one turns the budget off. Given to
    /// [`RetryReload::apply`](super::RetryReload::apply), removes the layer's budget.
    ///
    /// ```
    /// use tower_rampart::retry::{Budget, RetryLayer};
    ///
    /// let (_layer, reload) = RetryLayer::builder()
    ///     .budget(Budget::token_bucket(10, 0.1)?)
    ///     .build()?
    ///     .reloadable();
    /// reload.apply(RetryLayer::builder().budget(Budget::token_bucket(10, 0.1)?).no_budget())?;
    /// assert!(reload.current().budget.is_none());
    /// # Ok::<_, tower_rampart::ConfigError>(())
    /// ```
    pub fn no_budget(mut self) -> Self {
        self.budget = None;
        self
    }

    /// Retry a circuit breaker's refusal too (off by default: an open breaker means "not now").
    pub fn retry_circuit_open(mut self, retry: bool) -> Self {
        self.retry_circuit_open = retry;
        self
    }

    /// The timeout of each attempt (a [`TimeoutLayer`](crate::timeout::TimeoutLayer) inside this
    /// layer), so that retries fit the [`Deadline`](crate::timeout::Deadline) a timeout outside
    /// passes down: a retry whose delay plus `timeout` would pass the deadline is not made
    /// ([`GiveUp::Deadline`]). Without it, a retry is not made when its delay alone would reach
    /// the deadline; either way the attempt timeout inside shrinks to the time left. Without a
    /// timeout outside, this changes nothing.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower::ServiceBuilder;
    /// use tower_rampart::{retry::RetryLayer, timeout::TimeoutLayer};
    ///
    /// # fn main() -> Result<(), tower_rampart::ConfigError> {
    /// let attempt = Duration::from_secs(2);
    /// let stack = ServiceBuilder::new()
    ///     .layer(TimeoutLayer::new(Duration::from_secs(5))?)   // the whole call
    ///     .layer(RetryLayer::builder().max_attempts(5).attempt_timeout(attempt).build()?)
    ///     .layer(TimeoutLayer::new(attempt)?);                  // each attempt
    /// # let _ = stack;
    /// # Ok(())
    /// # }
    /// ```
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = Some(timeout);
        self
    }

    /// Calls `listener` for every retry and every give-up.
    pub fn on_event(mut self, listener: impl Fn(&Event<'_>) + Send + Sync + 'static) -> Self {
        self.listeners.push(Arc::new(listener));
        self
    }

    /// Checks every value, as [`build`](Self::build) does.
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        if !(1..=100).contains(&self.max_attempts) {
            return Err(ConfigError::field(
                "retry",
                "max_attempts",
                format!("must be in 1..=100, got {}", self.max_attempts),
            ));
        }
        if self.max_elapsed.is_some_and(|e| e.is_zero()) {
            return Err(ConfigError::field(
                "retry",
                "max_elapsed",
                "must be above zero",
            ));
        }
        // At most a year each: "forever" written as `Duration::MAX` is refused here, never met
        // as an overflow while a call is being retried.
        let bounded = [
            ("max_elapsed", self.max_elapsed),
            ("attempt_timeout", self.attempt_timeout),
            ("retry_after_cap", self.retry_after_cap),
        ];
        for (field, value) in bounded {
            if let Some(d) = value {
                ConfigError::check_duration("retry", field, d)?;
            }
        }
        // The backoff's own error, as it is: it names the backoff setting at fault
        // (`multiplier`, `max_delay`...).
        self.backoff.validate()
    }

    pub(crate) fn build_policy(self) -> Result<Policy, ConfigError> {
        self.check()?;
        Ok(self.assemble())
    }

    /// The policy of values that passed [`check`](Self::check) (the tests also feed it values
    /// `check` refuses, to show the decisions never overflow).
    fn assemble(self) -> Policy {
        #[cfg(feature = "metrics")]
        let metrics = super::measures::Metrics::new(self.name.clone());
        Policy {
            name: self.name,
            epoch: Instant::now(),
            max_attempts: self.max_attempts,
            max_elapsed: self.max_elapsed,
            backoff: self.backoff,
            retry_after_cap: self.retry_after_cap,
            budget: self.budget,
            retry_circuit_open: self.retry_circuit_open,
            attempt_timeout: self.attempt_timeout,
            listeners: self.listeners.into(),
            #[cfg(feature = "metrics")]
            metrics,
        }
    }

    /// The policy that replaces `current` on a reload: this builder's limits, delays and hints;
    /// `current`'s name, listeners and metric handles (the builder's are ignored), and
    /// `current`'s budget, state included, when this builder asks for one with the same
    /// settings. The values must have passed [`check`](Self::check).
    pub(crate) fn reissue(self, current: &Policy) -> Policy {
        let budget = match (self.budget, &current.budget) {
            (Some(new), Some(kept)) if new.same_settings(kept) => Some(kept.clone()),
            (new, _) => new,
        };
        Policy {
            name: current.name.clone(),
            epoch: current.epoch,
            max_attempts: self.max_attempts,
            max_elapsed: self.max_elapsed,
            backoff: self.backoff,
            retry_after_cap: self.retry_after_cap,
            budget,
            retry_circuit_open: self.retry_circuit_open,
            attempt_timeout: self.attempt_timeout,
            listeners: current.listeners.clone(),
            #[cfg(feature = "metrics")]
            metrics: current.metrics.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy(cap: Option<Duration>, max_elapsed: Option<Duration>) -> Policy {
        let mut b = Builder::default().retry_after(cap);
        if let Some(e) = max_elapsed {
            b = b.max_elapsed(e);
        }
        // Unchecked: caps and limits beyond what `check` lets through must not overflow either.
        b.assemble()
    }

    fn decide(p: &Policy, hint: Duration, started: u64) -> Next {
        p.next(
            1,
            &Outcome::failure_with_retry_after(hint),
            false,
            true,
            started,
            &mut None,
        )
    }

    fn stop_reason(next: Next) -> Option<GiveUp> {
        match next {
            Next::Stop(reason) => reason,
            Next::Wait(d, _) => panic!("waits {d:?}"),
        }
    }

    #[test]
    fn huge_retry_after_caps_and_hints_do_not_overflow() {
        let huge = [
            Duration::MAX,
            Duration::from_secs(u64::MAX),
            Duration::MAX - Duration::from_nanos(1),
        ];
        for cap in huge {
            // Hints beyond any elapsed limit stop the call, whatever the start time.
            let p = policy(Some(cap), Some(Duration::from_secs(1)));
            for hint in huge {
                for started in [p.start(), 0, NOT_TIMED - 1] {
                    let reason = stop_reason(decide(&p, hint, started));
                    let expected = if hint == Duration::MAX || hint > cap {
                        GiveUp::RetryAfter
                    } else {
                        GiveUp::Elapsed
                    };
                    assert_eq!(reason, Some(expected), "cap {cap:?}, hint {hint:?}");
                }
            }
            // With no practical elapsed limit, a finite hint within the cap is honoured as it is.
            let p = policy(Some(cap), Some(Duration::MAX));
            let hint = Duration::from_secs(u64::MAX);
            match decide(&p, hint, p.start()) {
                Next::Wait(d, cause) => {
                    assert_eq!(d, hint);
                    assert_eq!(cause, DelayCause::RetryAfter);
                }
                Next::Stop(reason) => panic!("stopped: {reason:?}"),
            }
            // `Duration::MAX` is gRPC's "do not retry", even under the largest cap.
            let p = policy(Some(cap), None);
            assert_eq!(
                stop_reason(decide(&p, Duration::MAX, NOT_TIMED)),
                Some(GiveUp::RetryAfter)
            );
        }
    }

    fn duration() -> impl Strategy<Value = Duration> {
        prop_oneof![
            (any::<u64>(), 0..1_000_000_000u32).prop_map(|(s, n)| Duration::new(s, n)),
            (0..u64::MAX).prop_map(Duration::from_nanos),
            Just(Duration::MAX),
            Just(Duration::ZERO),
            (0..1_000u64).prop_map(|n| Duration::MAX - Duration::from_nanos(n)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// Any hint, cap, elapsed limit and start time: no panic, and a wait never breaks the
        /// cap or the elapsed limit.
        #[test]
        fn decisions_respect_caps_and_limits(
            hint in proptest::option::of(duration()),
            cap in proptest::option::of(duration()),
            max_elapsed in proptest::option::of(duration().prop_filter("nonzero", |d| !d.is_zero())),
            started in prop_oneof![Just(None), Just(Some(0)), (0..NOT_TIMED).prop_map(Some)],
        ) {
            let p = policy(cap, max_elapsed);
            let started = match (max_elapsed, started) {
                (None, _) => NOT_TIMED,
                (Some(_), None) => p.start(),
                (Some(_), Some(s)) => s,
            };
            let outcome = Outcome::Failure { retry_after: hint };
            match p.next(1, &outcome, false, true, started, &mut None) {
                Next::Wait(d, cause) => {
                    if let (Some(hint), Some(cap)) = (hint, cap) {
                        prop_assert_eq!(d, hint);
                        prop_assert_eq!(cause, DelayCause::RetryAfter);
                        prop_assert!(hint <= cap && hint != Duration::MAX);
                    }
                    if let Some(max) = max_elapsed {
                        prop_assert!(d <= max, "waits {:?} beyond the limit {:?}", d, max);
                    }
                }
                Next::Stop(Some(GiveUp::Elapsed)) => prop_assert!(max_elapsed.is_some()),
                Next::Stop(Some(GiveUp::RetryAfter)) => {
                    prop_assert!(cap.is_some() && hint.is_some());
                }
                Next::Stop(other) => prop_assert!(false, "unexpected stop {:?}", other),
            }
        }
    }
}
