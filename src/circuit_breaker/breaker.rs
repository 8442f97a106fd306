//! The breaker state machine: plain atomics, time passed in by the caller.

use std::{
    sync::{Arc, OnceLock, Weak, atomic::Ordering::*},
    time::Duration,
};

use crossbeam_utils::CachePadded;
use tokio::time::Instant;

use super::{
    Config, ConfigError, State, WindowKind,
    events::{Listener, Observers},
    state::Word,
    sync::{AtomicU32, AtomicU64, Mutex, MutexGuard},
    tuning::{Judging, Tunables, Tuning},
};
use crate::{
    classify::Outcome,
    time::nanos_since,
    window::{Consecutive, CountWindow, Reading, Sample, TimeWindow},
};

/// A circuit breaker, free of tower and HTTP: ask [`Breaker::try_acquire`] before a call and
/// hand the permit back to [`Breaker::record`] (or [`Breaker::release`]) after it.
///
/// Every method that needs the time takes a clock closure, so tests drive it with fake
/// instants and the hot path reads the clock only when the configuration needs it (slow-call
/// detection, time windows, open state).
///
/// Admission and recording in the closed state use a handful of atomic operations: no lock, no
/// allocation. State changes take a short lock so that racing callers produce exactly one
/// transition and one event.
///
/// ```
/// use std::time::Duration;
/// use tokio::time::Instant;
/// use tower_rampart::circuit_breaker::{Breaker, Config, State};
/// use tower_rampart::classify::Outcome;
///
/// let breaker = Breaker::new(
///     Config::builder().consecutive_failures(2).open_duration(Duration::from_secs(5)).build()?,
/// );
/// let t0 = Instant::now();
/// for _ in 0..2 {
///     let permit = breaker.try_acquire(|| t0).expect("closed");
///     breaker.record(permit, &Outcome::FAILURE, || t0);
/// }
/// assert_eq!(breaker.state(), State::Open);
/// let rejected = breaker.try_acquire(|| t0 + Duration::from_secs(1)).unwrap_err();
/// assert_eq!(rejected.retry_after(), Some(Duration::from_secs(4)));
/// // After the open duration the next call is a half-open probe.
/// let probe = breaker.try_acquire(|| t0 + Duration::from_secs(5)).expect("probe");
/// assert_eq!(breaker.state(), State::HalfOpen);
/// # drop(probe);
/// # Ok::<_, tower_rampart::circuit_breaker::ConfigError>(())
/// ```
pub struct Breaker {
    word: CachePadded<AtomicU64>,
    window: Window,
    /// The window's kind and size: fixed for the breaker's life (the window is built from it).
    kind: WindowKind,
    /// Everything [`Breaker::retune`] may change; read on every call, written only by retunes,
    /// so it gets a cache line of its own.
    tunables: CachePadded<Tunables>,
    epoch: Instant,
    open_until: AtomicU64,
    state_since: AtomicU64,
    /// Half-open results: generation tag (16 bits), calls, failures, slow (16 bits each).
    probes: AtomicU64,
    openings: AtomicU32,
    not_permitted: AtomicU64,
    transitions: Mutex<()>,
    observers: Observers,
    /// The breaker that replaced this one, once handed over: an opening of this one (a call
    /// admitted before the hand-over that fails afterwards) opens it too.
    successor: OnceLock<Weak<Breaker>>,
}

enum Window {
    Count(CountWindow),
    Time(TimeWindow),
    Consecutive(Consecutive),
}

/// Leave to make one call. Give it back with [`Breaker::record`] or [`Breaker::release`]; a
/// half-open permit that is simply dropped is lost until the half-open period ends, so the tower
/// layers wrap it in a guard that releases it.
#[must_use = "a permit must be recorded or released"]
#[derive(Debug)]
pub struct Permit {
    /// Generation << 2 | kind. Two plain words, no padding and no niche: the permit is moved
    /// into every response future, and odd-sized enum copies cost store-forwarding stalls.
    tag: u64,
    /// Nanoseconds since the breaker's epoch when the call started; `NOT_TIMED` unless slow
    /// calls are detected.
    started: u64,
}

const NOT_TIMED: u64 = u64::MAX;

/// A success that was not slow (or not timed).
const SUCCESS: Sample = Sample {
    failure: false,
    slow: false,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PermitKind {
    Record = 0,
    Probe = 1,
    Unrecorded = 2,
    /// Already recorded or released (kept by guards instead of an `Option`).
    Spent = 3,
}

impl Permit {
    fn new(generation: u64, kind: PermitKind, started: u64) -> Permit {
        Permit {
            tag: generation << 2 | kind as u64,
            started,
        }
    }

    fn generation(&self) -> u64 {
        self.tag >> 2
    }

    fn kind(&self) -> PermitKind {
        match self.tag & 3 {
            0 => PermitKind::Record,
            1 => PermitKind::Probe,
            2 => PermitKind::Unrecorded,
            _ => PermitKind::Spent,
        }
    }

    /// Whether this permit is one of the half-open probes.
    #[inline]
    pub fn is_probe(&self) -> bool {
        self.kind() == PermitKind::Probe
    }

    /// Takes the permit out, leaving a spent one.
    #[inline]
    pub(crate) fn take(&mut self) -> Option<Permit> {
        // One compare of the kind bits (the guard takes on every outcome and every drop).
        if self.tag & 3 == PermitKind::Spent as u64 {
            return None;
        }
        Some(std::mem::replace(
            self,
            Permit::new(0, PermitKind::Spent, NOT_TIMED),
        ))
    }
}

/// A refused call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    state: State,
    retry_after: Option<Duration>,
}

impl Rejected {
    /// The state that refused the call.
    pub fn state(&self) -> State {
        self.state
    }

    /// How long until the breaker lets a probe through, when known (not when forced open, nor
    /// when every half-open permit is taken).
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

/// A breaker's readings at one moment: what an operator, a dashboard or a readiness probe needs.
///
/// The state is read *on the clock*, not only from the last call: an open breaker whose open
/// duration has passed reads [`State::HalfOpen`] (its next call is a probe), and a half-open
/// breaker whose [half-open max wait](super::Builder::half_open_max_wait) has run out reads
/// [`State::Open`], although the breaker itself makes these changes (and emits their events)
/// only at its next call. [`awaiting_call`](Self::awaiting_call) tells the two apart.
///
/// ```
/// use std::time::Duration;
/// use tokio::time::Instant;
/// use tower_rampart::circuit_breaker::{Breaker, Config, State};
/// use tower_rampart::classify::Outcome;
///
/// let breaker = Breaker::new(
///     Config::builder()
///         .name("ledger")
///         .consecutive_failures(1)
///         .open_duration(Duration::from_secs(5))
///         .half_open_permits(2)
///         .build()?,
/// );
/// let t0 = Instant::now();
/// let permit = breaker.try_acquire(|| t0).expect("closed");
/// breaker.record(permit, &Outcome::FAILURE, || t0);
///
/// let s = breaker.snapshot(t0 + Duration::from_secs(1));
/// assert_eq!((&*s.name, s.state, s.awaiting_call), ("ledger", State::Open, false));
/// assert_eq!(s.retry_after, Some(Duration::from_secs(4)));
///
/// // No call was made, but the wait is over: the next call will probe.
/// let s = breaker.snapshot(t0 + Duration::from_secs(6));
/// assert_eq!((s.state, s.awaiting_call), (State::HalfOpen, true));
/// assert_eq!(s.half_open_permits_free, Some(2));
/// assert_eq!(s.time_in_state, Duration::from_secs(1));
/// assert_eq!(breaker.state(), State::Open, "the breaker itself moves at the next call");
/// # Ok::<_, tower_rampart::circuit_breaker::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Snapshot {
    /// The breaker's name (`<layer name>/<key>` for a keyed breaker).
    pub name: Arc<str>,
    /// The state at the moment of the snapshot, on the clock (see the type's documentation).
    pub state: State,
    /// Whether [`state`](Self::state) was reached by the clock alone: the breaker still holds
    /// the state before it and takes this one (with its transition event) at its next call.
    pub awaiting_call: bool,
    /// When the state began (for a state reached by the clock alone, when it became due).
    pub since: Instant,
    /// Time since the state began: the snapshot's instant minus [`since`](Self::since).
    pub time_in_state: Duration,
    /// Calls in the window (failures in a row, in consecutive mode).
    pub calls: u64,
    /// Failures in the window.
    pub failures: u64,
    /// Slow calls in the window.
    pub slow_calls: u64,
    /// Failure rate in [0, 1], once the window holds the minimum number of calls.
    pub failure_rate: Option<f64>,
    /// Slow-call rate in [0, 1], once the window holds the minimum number of calls and slow-call
    /// detection is on.
    pub slow_call_rate: Option<f64>,
    /// Calls refused since the breaker was built.
    pub not_permitted: u64,
    /// Time left until the breaker probes, when open. For a half-open breaker that reads open
    /// because its max wait ran out, the full open duration its next call will start.
    pub retry_after: Option<Duration>,
    /// Probe permits not taken, when half-open (all of them when the half-open period is due
    /// but has not started); `None` in every other state.
    pub half_open_permits_free: Option<u32>,
}

/// Reads the clock at most once, and only if asked.
struct Clock<F> {
    f: Option<F>,
    t: Option<Instant>,
}

impl<F: FnOnce() -> Instant> Clock<F> {
    fn new(f: F) -> Self {
        Clock {
            f: Some(f),
            t: None,
        }
    }

    fn now(&mut self) -> Instant {
        match self.t {
            Some(t) => t,
            None => {
                let t = (self.f.take().expect("clock read once"))();
                self.t = Some(t);
                t
            }
        }
    }
}

// State changes, hand-overs and operator controls.
mod transition;

const TAG: u32 = 48;
const P16: u64 = 0xFFFF;

impl Breaker {
    /// A closed breaker.
    pub fn new(config: Config) -> Self {
        let name = config.name.clone();
        Self::with_observers(config, |listeners| {
            Observers::new(name, listeners, State::Closed)
        })
    }

    /// A keyed breaker: its metrics carry `label` (possibly shared with other keyed breakers)
    /// and count breakers per state.
    pub(crate) fn keyed(config: Config, label: Arc<str>) -> Self {
        let name = config.name.clone();
        Self::with_observers(config, |listeners| {
            Observers::labelled(name, label, true, listeners, State::Closed)
        })
    }

    /// Takes an evicted keyed breaker out of the state gauges. Under the transition lock, so no
    /// transition can move the gauges after it.
    pub(crate) fn retire_metrics(&self) {
        let _serial = self.serial();
        self.observers.retire(self.load().state());
    }

    fn with_observers(config: Config, observers: impl FnOnce(&[Listener]) -> Observers) -> Self {
        let window = match config.window {
            WindowKind::Count { size } => Window::Count(CountWindow::new(size)),
            WindowKind::Time { duration, buckets } => {
                let bucket = (duration.as_nanos() / u128::from(buckets)).max(1);
                Window::Time(TimeWindow::new(
                    u64::try_from(bucket).unwrap_or(u64::MAX),
                    buckets,
                ))
            }
            WindowKind::Consecutive { .. } => Window::Consecutive(Consecutive::new()),
        };
        let observers = observers(&config.listeners);
        Breaker {
            word: CachePadded::new(AtomicU64::new(Word::new(State::Closed, 0, 0).0)),
            window,
            kind: config.window,
            tunables: CachePadded::new(Tunables::new(&Tuning::of(&config))),
            epoch: Instant::now(),
            open_until: AtomicU64::new(0),
            state_since: AtomicU64::new(0),
            probes: AtomicU64::new(0),
            openings: AtomicU32::new(0),
            not_permitted: AtomicU64::new(0),
            transitions: Mutex::new(()),
            observers,
            successor: OnceLock::new(),
        }
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        self.observers.name()
    }

    pub(crate) fn shared_name(&self) -> &Arc<str> {
        self.observers.name()
    }

    /// The configuration it runs with now: its name, window and listeners as built, the other
    /// settings as last [retuned](Self::retune).
    ///
    /// ```
    /// use tower_rampart::circuit_breaker::{Breaker, Config};
    ///
    /// let breaker = Breaker::new(Config::builder().name("db").build()?);
    /// breaker.retune(&Config::builder().half_open_permits(7).build()?)?;
    /// let config = breaker.config();
    /// assert_eq!(config.name(), "db");
    /// assert!(format!("{config:?}").contains("half_open_permits: 7"));
    /// # Ok::<_, tower_rampart::circuit_breaker::ConfigError>(())
    /// ```
    pub fn config(&self) -> Config {
        let mut config = Config {
            name: self.observers.name().clone(),
            window: self.kind,
            failure_ppm: 0,
            failure_count: 0,
            slow: None,
            minimum_calls: 0,
            open: Duration::ZERO,
            open_multiplier: 1.0,
            max_open: Duration::ZERO,
            half_open_permits: 0,
            half_open_max_wait: None,
            respect_retry_after: false,
            listeners: self.observers.listeners().to_vec(),
        };
        self.tunables.load().apply(&mut config);
        config
    }

    /// The retunable settings now, as one consistent set (a test hook).
    #[cfg(test)]
    pub(crate) fn tuning(&self) -> Tuning {
        self.tunables.load()
    }

    /// Applies `config`'s settings to the running breaker, keeping its state, window contents,
    /// open-until time, count of consecutive openings, name and listeners: the failure rate or
    /// [count](super::Builder::failure_count), slow calls (duration and rate, or off), minimum
    /// calls, open duration with its growth and maximum, half-open permits, half-open max wait
    /// and whether retry-after hints are respected. `config`'s name and listeners are ignored.
    ///
    /// Calls never wait for a retune, nor a retune for calls: each call reads the settings once
    /// (lock-free) and uses that whole set, the old one or the new one, never a mix.
    ///
    /// When the new settings take effect:
    ///
    /// - rates and minimum calls: judged against the window as it is at the next failure or
    ///   slow call (or, in a time window, any call; in a count window, a call that grows it),
    ///   so a window already over a lowered threshold opens then;
    /// - open duration, growth and maximum, retry-after hints: at the next opening (an open
    ///   breaker keeps the wait it started with; the count of openings carries on, so a growing
    ///   duration grows from where it was);
    /// - half-open max wait: at once, measured from when the current half-open period began;
    /// - slow-call duration: for calls admitted from then on (a call admitted untimed is never
    ///   slow, a timed one is judged by the duration in force when it ends);
    /// - half-open permits, in a half-open period under way: raised, more probes are admitted
    ///   and the period waits for that many results; lowered, no more probes are admitted once
    ///   as many as the new count are out, and the period decides as soon as it holds that many
    ///   results (at the next result, or at the next call if enough results are already in).
    ///   Results of probes beyond the new count that end after the decision are ignored, like
    ///   every result from an earlier period.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the window setting when `config`'s window differs from the
    /// breaker's (kind, size, duration or buckets; the threshold of
    /// [`consecutive_failures`](super::Builder::consecutive_failures) is its window's size): a
    /// window cannot be resized in place, so replace the breaker (as
    /// [`LiveBreaker`](super::LiveBreaker) does). Nothing changes then.
    ///
    /// ```
    /// use tokio::time::Instant;
    /// use tower_rampart::circuit_breaker::{Breaker, Config, State};
    /// use tower_rampart::classify::Outcome;
    ///
    /// let config = |rate| Config::builder().count_window(10).minimum_calls(10).failure_rate(rate);
    /// let breaker = Breaker::new(config(0.5).build()?);
    /// let t = Instant::now();
    /// for i in 0..10 {
    ///     let permit = breaker.try_acquire(|| t).unwrap();
    ///     let outcome = if i < 4 { Outcome::FAILURE } else { Outcome::Success };
    ///     breaker.record(permit, &outcome, || t);
    /// }
    /// assert_eq!(breaker.state(), State::Closed, "4 failures in 10 calls: under 0.5");
    ///
    /// // The window is kept: the next failure replaces the oldest call, a failure, so the
    /// // window still holds 4 failures in 10, over the new threshold.
    /// breaker.retune(&config(0.4).build()?)?;
    /// let permit = breaker.try_acquire(|| t).unwrap();
    /// breaker.record(permit, &Outcome::FAILURE, || t);
    /// assert_eq!(breaker.state(), State::Open);
    ///
    /// let err = breaker.retune(&Config::builder().count_window(20).build()?).unwrap_err();
    /// assert_eq!(err.setting(), Some("count_window"));
    /// # Ok::<_, tower_rampart::circuit_breaker::ConfigError>(())
    /// ```
    pub fn retune(&self, config: &Config) -> Result<(), ConfigError> {
        if let Some((field, message)) = window_change(self.kind, config.window) {
            return Err(ConfigError::field("circuit breaker", field, message));
        }
        // The transition lock serialises writers (the seqlock needs one at a time) and keeps
        // a transition's settings whole: it reads them under the same lock.
        let _serial = self.serial();
        self.tunables.store(&Tuning::of(config));
        Ok(())
    }

    /// The current state. Reading it changes nothing: an open breaker whose open duration has
    /// passed reports `Open` until the next call turns it half-open.
    pub fn state(&self) -> State {
        self.load().state()
    }

    #[inline]
    fn load(&self) -> Word {
        Word(self.word.load(Acquire))
    }

    #[inline]
    fn nanos(&self, t: Instant) -> u64 {
        nanos_since(self.epoch, t)
    }

    /// Asks for leave to make one call.
    ///
    /// # Errors
    ///
    /// [`Rejected`] when the breaker refuses the call (open, forced open, or half-open with
    /// every probe permit taken).
    #[inline]
    pub fn try_acquire(&self, now: impl FnOnce() -> Instant) -> Result<Permit, Rejected> {
        // The common case inline: closed (or metrics only), one load of the state word and one
        // of the slow-call setting; the clock only when calls are timed.
        let w = self.load();
        if w.records() {
            let started = if self.tunables.timed() {
                self.nanos(now())
            } else {
                NOT_TIMED
            };
            return Ok(Permit::new(w.generation(), PermitKind::Record, started));
        }
        self.acquire_slow(now)
    }

    /// [`try_acquire`](Self::try_acquire) in every state but the common one (not marked cold:
    /// an open breaker's rejections are a hot path of their own).
    #[inline(never)]
    fn acquire_slow(&self, now: impl FnOnce() -> Instant) -> Result<Permit, Rejected> {
        let mut clock = Clock::new(now);
        // Half-open needs the whole set; loaded at most once, and only there.
        let mut tuning = None;
        loop {
            let w = self.load();
            match w.state() {
                State::Closed | State::MetricsOnly => {
                    // The one setting admission needs here is a single word: no seqlock read.
                    let started = self.start_time(self.tunables.timed(), &mut clock);
                    return Ok(Permit::new(w.generation(), PermitKind::Record, started));
                }
                State::Disabled => {
                    return Ok(Permit::new(
                        w.generation(),
                        PermitKind::Unrecorded,
                        NOT_TIMED,
                    ));
                }
                State::ForcedOpen => return Err(self.reject(State::ForcedOpen, None)),
                State::Open => {
                    let now = clock.now();
                    let (n, until) = (self.nanos(now), self.open_until.load(Acquire));
                    if n < until {
                        return Err(self.reject(State::Open, Some(Duration::from_nanos(until - n))));
                    }
                    self.transition(Some(w), State::HalfOpen, now, None);
                }
                State::HalfOpen => {
                    let t = *tuning.get_or_insert_with(|| self.tunables.load());
                    if t.half_open_max_wait_nanos != 0 {
                        let now = clock.now();
                        let since = self.state_since.load(Acquire);
                        if self.nanos(now).saturating_sub(since) >= t.half_open_max_wait_nanos {
                            self.transition(Some(w), State::Open, now, None);
                            continue;
                        }
                    }
                    if w.issued() >= t.half_open_permits {
                        // Permits lowered by a retune to no more than the results already in:
                        // no probe is left to report, so decide with those results now.
                        if let Some(r) = self.probe_results(w)
                            && r.calls >= u64::from(t.half_open_permits)
                        {
                            self.decide(w, r, &t.judging(), None, clock.now());
                            continue;
                        }
                        return Err(self.reject(State::HalfOpen, None));
                    }
                    let next = w.with_issued(w.issued() + 1);
                    if self
                        .word
                        .compare_exchange(w.0, next.0, AcqRel, Acquire)
                        .is_ok()
                    {
                        let started = self.start_time(t.slow_nanos != 0, &mut clock);
                        return Ok(Permit::new(w.generation(), PermitKind::Probe, started));
                    }
                }
            }
        }
    }

    #[inline]
    fn start_time<F: FnOnce() -> Instant>(&self, timed: bool, clock: &mut Clock<F>) -> u64 {
        if timed {
            self.nanos(clock.now())
        } else {
            NOT_TIMED
        }
    }

    fn reject(&self, state: State, retry_after: Option<Duration>) -> Rejected {
        self.not_permitted.fetch_add(1, Relaxed);
        self.observers.rejected(state, retry_after);
        Rejected { state, retry_after }
    }

    /// Records the outcome of a permitted call.
    #[inline]
    pub fn record(&self, permit: Permit, outcome: &Outcome, now: impl FnOnce() -> Instant) {
        // The common case first: an untimed success on a permit of the closed state (or
        // metrics only). It reads no settings, and writes nothing shared unless the window
        // changes (the count window's head aside: a true ring of the last N calls gives every
        // call its slot; the time window's bucket counts every call).
        if permit.tag & 3 == PermitKind::Record as u64
            && permit.started == NOT_TIMED
            && matches!(outcome, Outcome::Success)
        {
            match &self.window {
                // A success changes a run of failures only when there is one to end (ending
                // one takes the general path).
                Window::Consecutive(c) if c.is_clear() => {
                    return self.observers.outcome(false, false, None);
                }
                Window::Consecutive(_) => {}
                // A full window of successes: the record would change nothing (see
                // `full_of_successes`), so it is not even called.
                Window::Count(c) if c.full_of_successes() => {
                    return self.observers.outcome(false, false, None);
                }
                Window::Count(c) => {
                    return self.record_count_success(c, permit.generation(), now);
                }
                Window::Time(t) => return self.record_time_success(t, permit.generation(), now),
            }
        }
        self.record_slow(permit, outcome, now);
    }

    /// An untimed success in a count window: out of line, so that the fast path in the
    /// caller stays a few instructions (no prologue for this one's registers).
    #[inline(never)]
    fn record_count_success(
        &self,
        c: &CountWindow,
        generation: u64,
        now: impl FnOnce() -> Instant,
    ) {
        self.observers.outcome(false, false, None);
        let w = self.load();
        // A result from an earlier period says nothing about this one.
        if w.generation() != generation {
            return;
        }
        // A success that evicted another call can only lower the rates; one that grew the
        // window may bring it to the minimum number of calls.
        if let Some((r, true)) = c.record(SUCCESS) {
            self.judge_closed(w, r, now);
        }
    }

    /// An untimed success in a time window: out of line, so that the other windows' fast path
    /// stays small (this one reads the clock, which costs more than the call).
    #[inline(never)]
    fn record_time_success(&self, t: &TimeWindow, generation: u64, now: impl FnOnce() -> Instant) {
        self.observers.outcome(false, false, None);
        let w = self.load();
        // A result from an earlier period says nothing about this one.
        if w.generation() != generation {
            return;
        }
        let at = now();
        // `None`: the window holds no failure and no slow call, so it cannot be over any rate
        // (rates are at least one per million).
        if let Some(r) = t.record_judged(self.nanos(at), SUCCESS) {
            self.judge_closed(w, r, || at);
        }
    }

    /// Opens a closed breaker whose window `r` (read in `w`'s period) is over a threshold.
    #[cold]
    #[inline(never)]
    fn judge_closed(&self, w: Word, r: Reading, now: impl FnOnce() -> Instant) {
        if w.state() == State::Closed && self.exceeded(r, true, &self.tunables.load_judging()) {
            self.transition(Some(w), State::Open, now(), None);
        }
    }

    /// [`record`](Self::record) for every case but the common one.
    #[inline(never)]
    fn record_slow(&self, permit: Permit, outcome: &Outcome, now: impl FnOnce() -> Instant) {
        if matches!(permit.kind(), PermitKind::Unrecorded | PermitKind::Spent) {
            return;
        }
        let (failure, hint) = match outcome {
            Outcome::Success => (false, None),
            Outcome::Failure { retry_after } => (true, *retry_after),
            Outcome::Ignore => {
                self.observers.ignored();
                return self.release(permit);
            }
        };
        let mut clock = Clock::new(now);
        // The settings that judge (one consistent set, the first three words of the seqlock),
        // loaded at most once, and only when needed: a success on an untimed permit that
        // changes nothing in the window (the common case) never reads the settings.
        let mut loaded = None;
        let mut tuning = || *loaded.get_or_insert_with(|| self.tunables.load_judging());
        let elapsed = (permit.started != NOT_TIMED)
            .then(|| self.nanos(clock.now()).saturating_sub(permit.started));
        // A permit timed under settings since retuned without slow calls is not slow.
        let slow = elapsed.is_some_and(|e| {
            let t = tuning();
            t.slow_nanos != 0 && e >= t.slow_nanos
        });
        self.observers
            .outcome(failure, slow, elapsed.map(Duration::from_nanos));

        let w = self.load();
        // A result from an earlier period says nothing about this one.
        if w.generation() != permit.generation() {
            return;
        }
        if permit.kind() == PermitKind::Probe {
            return self.record_probe(w, failure, slow, hint, &tuning(), &mut clock);
        }
        let sample = Sample { failure, slow };
        let reading = match &self.window {
            // One call site, so that the ring's record stays inlined on the hot path.
            Window::Count(c) => match c.record(sample) {
                // A success that evicted another call can only lower the rates.
                Some((r, grew)) if failure || slow || grew => r,
                // A failure or slow call that evicted its like leaves the rates as they were,
                // but a retune may have lowered the thresholds since: judge them again.
                None if failure || slow => c.reading(),
                _ => return,
            },
            Window::Time(t) => match t.record_judged(self.nanos(clock.now()), sample) {
                Some(r) => r,
                None => return,
            },
            Window::Consecutive(c) => match c.record(failure) {
                Some(run) => Reading {
                    calls: run,
                    failures: run,
                    slow: 0,
                },
                None => return,
            },
        };
        if w.state() == State::Closed && self.exceeded(reading, true, &tuning()) {
            self.transition(Some(w), State::Open, clock.now(), hint);
        }
    }

    fn record_probe<F: FnOnce() -> Instant>(
        &self,
        w: Word,
        failure: bool,
        slow: bool,
        hint: Option<Duration>,
        t: &Judging,
        clock: &mut Clock<F>,
    ) {
        let tag = w.generation() & P16;
        let add = 1 << 32 | u64::from(failure) << 16 | u64::from(slow);
        let mut cur = self.probes.load(Acquire);
        let now = loop {
            if cur >> TAG != tag {
                return;
            }
            match self
                .probes
                .compare_exchange_weak(cur, cur + add, AcqRel, Acquire)
            {
                Ok(_) => break cur + add,
                Err(seen) => cur = seen,
            }
        };
        let r = Reading {
            calls: (now >> 32) & P16,
            failures: (now >> 16) & P16,
            slow: now & P16,
        };
        let consecutive = matches!(self.window, Window::Consecutive(_));
        if r.calls >= u64::from(t.half_open_permits) || (consecutive && r.failures > 0) {
            self.decide(w, r, t, hint, clock.now());
        }
    }

    /// The probe results of `w`'s half-open period, if the period's counter is set up.
    fn probe_results(&self, w: Word) -> Option<Reading> {
        let p = self.probes.load(Acquire);
        (p >> TAG == w.generation() & P16).then_some(Reading {
            calls: (p >> 32) & P16,
            failures: (p >> 16) & P16,
            slow: p & P16,
        })
    }

    /// Ends `w`'s half-open period on its probe results `r`.
    fn decide(&self, w: Word, r: Reading, t: &Judging, hint: Option<Duration>, now: Instant) {
        let to = if self.exceeded(r, false, t) {
            State::Open
        } else {
            State::Closed
        };
        self.transition(Some(w), to, now, hint);
    }

    /// Gives back a permit whose call ended without an outcome (cancelled, or classified as
    /// ignored). A half-open probe permit becomes available again.
    pub fn release(&self, permit: Permit) {
        if permit.kind() != PermitKind::Probe {
            return;
        }
        let mut w = self.load();
        while w.state() == State::HalfOpen
            && w.generation() == permit.generation()
            && w.issued() > 0
        {
            let next = w.with_issued(w.issued() - 1);
            match self.word.compare_exchange(w.0, next.0, AcqRel, Acquire) {
                Ok(_) => return,
                Err(seen) => w = Word(seen),
            }
        }
    }

    fn exceeded(&self, r: Reading, closed: bool, t: &Judging) -> bool {
        if let WindowKind::Consecutive { .. } = self.kind {
            // The retunable threshold (see `Tuning::of`), not the one built with.
            return if closed {
                r.failures >= u64::from(t.minimum_calls)
            } else {
                r.failures > 0
            };
        }
        // In half-open the probes are the minimum.
        if r.calls == 0 || (closed && r.calls < u64::from(t.minimum_calls)) {
            return false;
        }
        let over = |count: u64, ppm: u64| {
            u128::from(count) * 1_000_000 >= u128::from(ppm) * u128::from(r.calls)
        };
        // A failure count (count windows only) judges the closed window as a number; the
        // probes of half-open are judged by the rate it stands for.
        let failed = if closed && t.failure_count != 0 {
            r.failures >= u64::from(t.failure_count)
        } else {
            over(r.failures, t.failure_ppm)
        };
        failed || (t.slow_nanos != 0 && over(r.slow, t.slow_ppm))
    }

    /// The breaker's readings at `now`, with the state read on the clock (see [`Snapshot`]).
    /// Time-window buckets that expired are dropped first. Reading changes nothing: no
    /// transition, no event.
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let w = self.load();
        let n = self.nanos(now);
        let r = match &self.window {
            Window::Count(c) => c.reading(),
            Window::Time(t) => t.reading(n),
            Window::Consecutive(c) => {
                let run = c.get();
                Reading {
                    calls: run,
                    failures: run,
                    slow: 0,
                }
            }
        };
        let t = self.tunables.load();
        let known = !matches!(self.window, Window::Consecutive(_))
            && r.calls >= u64::from(t.minimum_calls)
            && r.calls > 0;
        let rate = |x: u64| x as f64 / r.calls as f64;
        let until = self.open_until.load(Acquire);
        let entered = self.state_since.load(Acquire);
        let permits = t.half_open_permits;
        // (state, since, retry_after, free permits, reached by the clock alone)
        let (state, since, retry_after, free, awaiting_call) = match w.state() {
            State::Open if n >= until => (State::HalfOpen, until, None, Some(permits), true),
            State::Open => {
                let left = Duration::from_nanos(until - n);
                (State::Open, entered, Some(left), None, false)
            }
            State::HalfOpen => match t.half_open_max_wait_nanos {
                wait if wait != 0 && n.saturating_sub(entered) >= wait => {
                    let next = self.openings.load(Relaxed).saturating_add(1);
                    let open = t.open_duration_after(next);
                    (
                        State::Open,
                        entered.saturating_add(wait),
                        Some(open),
                        None,
                        true,
                    )
                }
                _ => {
                    let free = permits.saturating_sub(w.issued());
                    (State::HalfOpen, entered, None, Some(free), false)
                }
            },
            s => (s, entered, None, None, false),
        };
        Snapshot {
            name: self.shared_name().clone(),
            state,
            awaiting_call,
            since: self.epoch + Duration::from_nanos(since),
            time_in_state: Duration::from_nanos(n.saturating_sub(since)),
            calls: r.calls,
            failures: r.failures,
            slow_calls: r.slow,
            failure_rate: known.then(|| rate(r.failures)),
            slow_call_rate: (known && t.slow_nanos != 0).then(|| rate(r.slow)),
            not_permitted: self.not_permitted.load(Relaxed),
            retry_after,
            half_open_permits_free: free,
        }
    }
}

impl Drop for Breaker {
    fn drop(&mut self) {
        // A keyed breaker dropped with its family no longer counts in the state gauges.
        self.observers.retire(self.load().state());
    }
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("name", &self.name())
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

/// Whether a breaker with window `from` takes `to` in place ([`Breaker::retune`]): the same
/// window, or failures in a row with another threshold (a retunable setting).
pub(crate) fn retunable(from: WindowKind, to: WindowKind) -> bool {
    window_change(from, to).is_none()
}

/// What stops `from` becoming `to` in place, when they differ: the setting's name and why.
fn window_change(from: WindowKind, to: WindowKind) -> Option<(&'static str, String)> {
    let refuse = |was: String, now: String| {
        format!("cannot change on a running breaker ({was} -> {now}); replace the breaker")
    };
    let field = |kind: WindowKind| match kind {
        WindowKind::Count { .. } => "count_window",
        WindowKind::Time { .. } => "time_window",
        WindowKind::Consecutive { .. } => "consecutive_failures",
    };
    match (from, to) {
        _ if from == to => None,
        (WindowKind::Count { size: a }, WindowKind::Count { size: b }) => {
            Some(("count_window", refuse(a.to_string(), b.to_string())))
        }
        (
            WindowKind::Time {
                duration: a,
                buckets: x,
            },
            WindowKind::Time {
                duration: b,
                buckets: y,
            },
        ) if a == b => Some(("time_window_buckets", refuse(x.to_string(), y.to_string()))),
        (WindowKind::Time { duration: a, .. }, WindowKind::Time { duration: b, .. }) => {
            Some(("time_window", refuse(format!("{a:?}"), format!("{b:?}"))))
        }
        // The threshold is retunable: the run of failures so far counts towards the new one.
        (WindowKind::Consecutive { .. }, WindowKind::Consecutive { .. }) => None,
        _ => Some((field(to), refuse(describe(from), describe(to)))),
    }
}

fn describe(kind: WindowKind) -> String {
    match kind {
        WindowKind::Count { size } => format!("count window of {size} calls"),
        WindowKind::Time { duration, buckets } => {
            format!("time window of {duration:?} in {buckets} buckets")
        }
        WindowKind::Consecutive { failures } => format!("{failures} consecutive failures"),
    }
}
