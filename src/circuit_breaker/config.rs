//! Breaker configuration and its validating builder.

use std::{fmt, sync::Arc, time::Duration};

use super::{
    events::{Event, Listener},
    state::MAX_PERMITS,
};
use crate::{ConfigError, window::MAX_COUNT_WINDOW};

/// How the breaker judges the recent past.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WindowKind {
    /// The outcomes of the last `size` calls (a true ring: each call evicts the oldest).
    Count {
        /// Number of calls in the window.
        size: u32,
    },
    /// The outcomes of the last `duration`, kept in `buckets` fixed buckets of
    /// `duration / buckets` each (memory does not grow with the call rate).
    Time {
        /// Length of the window.
        duration: Duration,
        /// Number of buckets it is divided into.
        buckets: u32,
    },
    /// Open after this many failures in a row; a success resets the run.
    Consecutive {
        /// Failures in a row that open the breaker.
        failures: u32,
    },
}

/// A validated breaker configuration. Build one with [`Config::builder`].
///
/// ```
/// use std::time::Duration;
/// use tower_rampart::circuit_breaker::Config;
///
/// let config = Config::builder()
///     .name("payments")
///     .time_window(Duration::from_secs(10), 10)
///     .failure_rate(0.25)
///     .minimum_calls(50)
///     .open_duration(Duration::from_secs(5))
///     .build()?;
/// assert_eq!(config.name(), "payments");
/// # Ok::<_, tower_rampart::circuit_breaker::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct Config {
    pub(crate) name: Arc<str>,
    pub(crate) window: WindowKind,
    pub(crate) failure_ppm: u64,
    /// Failures in the count window that open the breaker; 0: the failure rate judges.
    pub(crate) failure_count: u32,
    pub(crate) slow: Option<(Duration, u64)>,
    pub(crate) minimum_calls: u32,
    pub(crate) open: Duration,
    pub(crate) open_multiplier: f64,
    pub(crate) max_open: Duration,
    pub(crate) half_open_permits: u32,
    pub(crate) half_open_max_wait: Option<Duration>,
    pub(crate) respect_retry_after: bool,
    pub(crate) listeners: Vec<Listener>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("name", &self.name)
            .field("window", &self.window)
            .field("failure_rate", &(self.failure_ppm as f64 / 1e6))
            .field("failure_count", &self.failure_count)
            .field("slow", &self.slow)
            .field("minimum_calls", &self.minimum_calls)
            .field("open", &self.open)
            .field("open_multiplier", &self.open_multiplier)
            .field("max_open", &self.max_open)
            .field("half_open_permits", &self.half_open_permits)
            .field("half_open_max_wait", &self.half_open_max_wait)
            .field("respect_retry_after", &self.respect_retry_after)
            .field("listeners", &self.listeners.len())
            .finish()
    }
}

impl Config {
    /// A builder with the defaults listed on [`Builder`].
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// The breaker's name (metrics label, error text).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The window kind.
    pub fn window(&self) -> WindowKind {
        self.window
    }

    /// How long half-open waits for its probes to decide before opening again; `None` when
    /// turned off.
    pub fn half_open_max_wait(&self) -> Option<Duration> {
        self.half_open_max_wait
    }

    /// The open duration after `openings` consecutive openings (1 for the first), before any
    /// retry-after hint.
    pub fn open_duration_after(&self, openings: u32) -> Duration {
        grown_open_duration(self.open, self.open_multiplier, self.max_open, openings)
    }
}

/// `open * multiplier^(openings - 1)`, capped at `max`: shared by [`Config`] and a running
/// breaker's retunable settings.
pub(crate) fn grown_open_duration(
    open: Duration,
    multiplier: f64,
    max: Duration,
    openings: u32,
) -> Duration {
    let exp = openings.saturating_sub(1).min(64) as i32;
    let secs = open.as_secs_f64() * multiplier.powi(exp);
    if !secs.is_finite() || secs >= max.as_secs_f64() {
        max
    } else {
        Duration::from_secs_f64(secs).min(max)
    }
}

/// Builds a [`Config`] (and from it a breaker or a layer), checking every value.
///
/// Defaults, chosen for an HTTP client talking to one downstream:
///
/// | setting | default | why |
/// |---|---|---|
/// | window | last 100 calls | enough calls for a stable rate at modest traffic |
/// | minimum calls | 20 | a handful of early errors should not open the breaker |
/// | failure rate | 50 % | Resilience4j's default; opens on a clearly broken downstream |
/// | failure count | off (the rate judges) | [`Builder::failure_count`]: at least N failures of the last W calls |
/// | slow calls | off | latency targets are per service; turn on with [`Builder::slow_calls`] |
/// | open duration | 10 s, fixed, at most 5 min | short enough to notice recovery quickly |
/// | half-open probes | 3 | one probe is a coin toss; three give a signal |
/// | half-open max wait | the open duration, at least 60 s | a probe that hangs without being dropped cannot keep the breaker half-open forever; a minute lets slow but healthy probes decide |
/// | retry-after hints | respected, capped at the max open duration | the downstream knows best |
///
/// ```
/// use std::time::Duration;
/// use tower_rampart::circuit_breaker::Config;
///
/// let err = Config::builder().failure_rate(1.5).build().unwrap_err();
/// assert_eq!(err.setting(), Some("failure_rate"));
/// assert_eq!(
///     err.to_string(),
///     "invalid circuit breaker configuration: failure_rate must be in (0, 1], got 1.5",
/// );
/// let err = Config::builder().minimum_calls(0).build().unwrap_err();
/// assert_eq!(err.setting(), Some("minimum_calls"));
///
/// let growing = Config::builder()
///     .open_duration(Duration::from_secs(1))
///     .open_duration_growth(2.0, Duration::from_secs(8))
///     .build()?;
/// assert_eq!(growing.open_duration_after(3), Duration::from_secs(4));
/// assert_eq!(growing.open_duration_after(10), Duration::from_secs(8));
/// # Ok::<_, tower_rampart::circuit_breaker::ConfigError>(())
/// ```
#[must_use]
pub struct Builder {
    name: Arc<str>,
    window: WindowKind,
    failure_rate: f64,
    failure_count: Option<u32>,
    slow: Option<(Duration, f64)>,
    minimum_calls: u32,
    open: Duration,
    open_multiplier: f64,
    max_open: Duration,
    half_open_permits: u32,
    /// `None`: the default, worked out from the open duration at build time.
    half_open_max_wait: Option<Option<Duration>>,
    respect_retry_after: bool,
    listeners: Vec<Listener>,
}

/// The least default half-open max wait: long enough for slow but healthy probes, since a probe
/// that outlives the max wait never counts and a breaker whose every probe does would never close.
const MIN_DEFAULT_MAX_WAIT: Duration = Duration::from_secs(60);

impl Default for Builder {
    fn default() -> Self {
        Builder {
            name: Arc::from("default"),
            window: WindowKind::Count { size: 100 },
            failure_rate: 0.5,
            failure_count: None,
            slow: None,
            minimum_calls: 20,
            open: Duration::from_secs(10),
            open_multiplier: 1.0,
            max_open: Duration::from_secs(300),
            half_open_permits: 3,
            half_open_max_wait: None,
            respect_retry_after: true,
            listeners: Vec::new(),
        }
    }
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Builder {
    /// The breaker's name: a metrics label and part of the rejection message.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Judge the last `size` calls (1..=1,000,000).
    pub fn count_window(mut self, size: u32) -> Self {
        self.window = WindowKind::Count { size };
        self
    }

    /// Judge the calls of the last `duration`, kept in `buckets` buckets (1..=1000, each at
    /// least 1 ms).
    pub fn time_window(mut self, duration: Duration, buckets: u32) -> Self {
        self.window = WindowKind::Time { duration, buckets };
        self
    }

    /// Open after `failures` failures in a row (no rates, no minimum).
    pub fn consecutive_failures(mut self, failures: u32) -> Self {
        self.window = WindowKind::Consecutive { failures };
        self
    }

    /// Open when the failure rate is at least `rate` (in (0, 1]). Replaces a
    /// [`failure_count`](Self::failure_count).
    pub fn failure_rate(mut self, rate: f64) -> Self {
        self.failure_rate = rate;
        self.failure_count = None;
        self
    }

    /// With a [count window](Self::count_window) of W calls: open when at least `failures`
    /// (1..=W) of the last W calls failed, once the window holds the
    /// [minimum calls](Self::minimum_calls). So `failures` in a row always open it, and fewer
    /// failures than that never do, however few calls the window holds. Replaces a
    /// [`failure_rate`](Self::failure_rate); the slow-call rate still applies.
    ///
    /// In half-open the probes are judged by the rate `failures / W` (with 3 probes and 5 of
    /// 10, two failed probes open it again). Retunable like the rate
    /// ([`Breaker::retune`](super::Breaker::retune)): the window's contents count towards the
    /// new number. This is what a configuration file's `failure_threshold` sets over a count
    /// window.
    ///
    /// ```
    /// use tokio::time::Instant;
    /// use tower_rampart::circuit_breaker::{Breaker, Config, State};
    /// use tower_rampart::classify::Outcome;
    ///
    /// let breaker = Breaker::new(
    ///     Config::builder().count_window(10).minimum_calls(5).failure_count(5).build()?,
    /// );
    /// let t = Instant::now();
    /// let mut call = |outcome: Outcome| {
    ///     let permit = breaker.try_acquire(|| t).unwrap();
    ///     breaker.record(permit, &outcome, || t);
    /// };
    /// for outcome in [Outcome::Success, Outcome::Success] {
    ///     call(outcome);
    /// }
    /// for _ in 0..4 {
    ///     call(Outcome::FAILURE);
    /// }
    /// assert_eq!(breaker.state(), State::Closed, "4 failures: fewer than 5");
    /// call(Outcome::FAILURE);
    /// assert_eq!(breaker.state(), State::Open, "5 of the last 10 calls failed");
    ///
    /// let err = Config::builder().count_window(10).minimum_calls(5).failure_count(11).build();
    /// assert_eq!(err.unwrap_err().setting(), Some("failure_count"));
    /// # Ok::<_, tower_rampart::circuit_breaker::ConfigError>(())
    /// ```
    pub fn failure_count(mut self, failures: u32) -> Self {
        self.failure_count = Some(failures);
        self
    }

    /// Count calls that take `duration` or longer as slow (whether they succeed or fail), and open
    /// when the slow rate is at least `rate` (in (0, 1]). Not available in consecutive mode.
    pub fn slow_calls(mut self, duration: Duration, rate: f64) -> Self {
        self.slow = Some((duration, rate));
        self
    }

    /// Calls the window must hold before its rates are judged (at least 1).
    pub fn minimum_calls(mut self, calls: u32) -> Self {
        self.minimum_calls = calls;
        self
    }

    /// The minimum calls set so far (or the default), for settings applied over this builder.
    #[cfg(feature = "serde")]
    pub(crate) fn minimum_calls_so_far(&self) -> u32 {
        self.minimum_calls
    }

    /// How long the breaker stays open before probing (at least 1 ms, at most one year, like
    /// every duration of the breaker: see [`MAX_DURATION`](crate::MAX_DURATION)).
    pub fn open_duration(mut self, duration: Duration) -> Self {
        self.open = duration;
        self
    }

    /// Multiply the open duration by `multiplier` for each consecutive opening without a close in
    /// between, up to `max` (also the cap for retry-after hints). A multiplier of 1 keeps it fixed.
    pub fn open_duration_growth(mut self, multiplier: f64, max: Duration) -> Self {
        self.open_multiplier = multiplier;
        self.max_open = max;
        self
    }

    /// Probe calls let through while half-open (1..=65535); their results decide.
    pub fn half_open_permits(mut self, permits: u32) -> Self {
        self.half_open_permits = permits;
        self
    }

    /// With no decision this long after entering half-open, open again (and probe again after
    /// the open duration). A probe still running then no longer counts, so keep it above the
    /// slowest healthy call.
    ///
    /// By default it is the [open duration](Self::open_duration) (before any growth), but at
    /// least 60 s. `None` turns it off: the breaker
    /// then waits for its probes forever, and a probe that hangs without ever being dropped keeps
    /// it half-open (refusing every other call) until an operator resets it.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_rampart::circuit_breaker::Config;
    ///
    /// let default = Config::builder().open_duration(Duration::from_secs(90)).build()?;
    /// assert_eq!(default.half_open_max_wait(), Some(Duration::from_secs(90)));
    /// let short = Config::builder().open_duration(Duration::from_secs(5)).build()?;
    /// assert_eq!(short.half_open_max_wait(), Some(Duration::from_secs(60)));
    /// let off = Config::builder().half_open_max_wait(None).build()?;
    /// assert_eq!(off.half_open_max_wait(), None);
    /// # Ok::<_, tower_rampart::circuit_breaker::ConfigError>(())
    /// ```
    pub fn half_open_max_wait(mut self, wait: impl Into<Option<Duration>>) -> Self {
        self.half_open_max_wait = Some(wait.into());
        self
    }

    /// Whether a failure's retry-after hint (a 503's `Retry-After`) may lengthen the open
    /// duration, up to the max open duration. On by default.
    pub fn respect_retry_after(mut self, respect: bool) -> Self {
        self.respect_retry_after = respect;
        self
    }

    /// Calls `listener` for every event (transitions, rejections, outcomes). Listeners run on the
    /// caller's task, so keep them short.
    ///
    /// No listener runs while the breaker (or a keyed family, or a
    /// [`LiveBreaker`](super::LiveBreaker)) holds a lock, so a listener may steer the breaker it listens to: read it, force it open,
    /// reset, retune or reconfigure it. Outcomes and rejections are reported at once, on the
    /// thread of the call. State changes ([`Transition`](super::EventKind::Transition) and
    /// [`Reset`](super::EventKind::Reset)) are reported in the order they happened, each
    /// `from` the previous `to`: one thread reports at a time, and a state change made while
    /// another thread is reporting is reported by that thread, after the ones before it. So a
    /// change a listener makes (a `force_open` on `Open`) is reported once every listener has
    /// seen the current one, and the call that made a change may return before its listeners
    /// have run.
    pub fn on_event(mut self, listener: impl Fn(&Event<'_>) + Send + Sync + 'static) -> Self {
        self.listeners.push(Arc::new(listener));
        self
    }

    /// Checks every value and returns the configuration.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first value out of range (each setter gives its range) or
    /// settings that contradict each other.
    pub fn build(self) -> Result<Config, ConfigError> {
        // Each refusal names the setting a user would change, under its configuration-file name.
        let err = |field: &'static str, msg: String| {
            Err(ConfigError::field("circuit breaker", field, msg))
        };
        let rate_ok = |r: f64| r > 0.0 && r <= 1.0;
        // No duration above a year: the breaker adds them to instants.
        let bound = |field, d| ConfigError::check_duration("circuit breaker", field, d);
        if let WindowKind::Time { duration, .. } = self.window {
            bound("time_window", duration)?;
        }
        if let Some((d, _)) = self.slow {
            bound("slow_call_duration", d)?;
        }
        bound("open_duration", self.open)?;
        bound("max_open_duration", self.max_open)?;
        if let Some(Some(w)) = self.half_open_max_wait {
            bound("half_open_max_wait", w)?;
        }
        match self.window {
            WindowKind::Count { size } if size == 0 || size > MAX_COUNT_WINDOW => {
                return err(
                    "count_window",
                    format!("must be in 1..={MAX_COUNT_WINDOW}, got {size}"),
                );
            }
            WindowKind::Count { size } if self.minimum_calls > size => {
                return err(
                    "minimum_calls",
                    format!(
                        "({}) exceeds the count window ({size}): the breaker could never open",
                        self.minimum_calls
                    ),
                );
            }
            WindowKind::Time { buckets, .. } if buckets == 0 || buckets > 1000 => {
                return err(
                    "time_window_buckets",
                    format!("must be in 1..=1000, got {buckets}"),
                );
            }
            WindowKind::Time { duration, buckets }
                if duration < Duration::from_millis(1) * buckets =>
            {
                return err(
                    "time_window_buckets",
                    format!("must be at least 1 ms each, got {duration:?} / {buckets}"),
                );
            }
            WindowKind::Consecutive { failures: 0 } => {
                return err("consecutive_failures", "must be at least 1".into());
            }
            WindowKind::Consecutive { .. } if self.slow.is_some() => {
                return err(
                    "slow_call_duration",
                    "cannot be used with consecutive_failures (slow_calls needs a count or time window)"
                        .into(),
                );
            }
            _ => {}
        }
        if !rate_ok(self.failure_rate) {
            return err(
                "failure_rate",
                format!("must be in (0, 1], got {}", self.failure_rate),
            );
        }
        // A count of failures: judged as is when closed, as the rate it is of the window when
        // half-open.
        let failure_rate = match (self.failure_count, self.window) {
            (None, _) => self.failure_rate,
            (Some(n), WindowKind::Count { size }) if (1..=size).contains(&n) => {
                f64::from(n) / f64::from(size)
            }
            (Some(n), WindowKind::Count { size }) => {
                return err(
                    "failure_count",
                    format!("must be in 1..={size} (the count window), got {n}"),
                );
            }
            (Some(_), _) => {
                return err(
                    "failure_count",
                    "counts failures in a count window (count_window): with a time window give \
                     failure_rate, for failures in a row consecutive_failures"
                        .into(),
                );
            }
        };
        if let Some((d, r)) = self.slow {
            if !rate_ok(r) {
                return err("slow_call_rate", format!("must be in (0, 1], got {r}"));
            }
            if d.is_zero() {
                return err(
                    "slow_call_duration",
                    "must be above zero (the duration given to slow_calls)".into(),
                );
            }
        }
        if self.minimum_calls == 0 {
            return err("minimum_calls", "must be at least 1".into());
        }
        if self.open < Duration::from_millis(1) {
            return err(
                "open_duration",
                format!("must be at least 1 ms, got {:?}", self.open),
            );
        }
        if !(self.open_multiplier.is_finite() && self.open_multiplier >= 1.0) {
            return err(
                "open_duration_multiplier",
                format!("must be a finite number >= 1, got {}", self.open_multiplier),
            );
        }
        if self.max_open < self.open {
            return err(
                "max_open_duration",
                format!(
                    "({:?}) is below open_duration ({:?})",
                    self.max_open, self.open
                ),
            );
        }
        if self.half_open_permits == 0 || self.half_open_permits > MAX_PERMITS {
            return err(
                "half_open_permits",
                format!(
                    "must be in 1..={MAX_PERMITS}, got {}",
                    self.half_open_permits
                ),
            );
        }
        if self
            .half_open_max_wait
            .flatten()
            .is_some_and(|w| w.is_zero())
        {
            return err("half_open_max_wait", "must be above zero".into());
        }
        // At least one per million: a rate in (0, 1] never becomes "any rate at all", and a
        // window with no failure (no slow call) is never over it.
        let ppm = |r: f64| ((r * 1e6).round() as u64).max(1);
        Ok(Config {
            name: self.name,
            window: self.window,
            failure_ppm: ppm(failure_rate),
            failure_count: self.failure_count.unwrap_or(0),
            slow: self.slow.map(|(d, r)| (d, ppm(r))),
            minimum_calls: self.minimum_calls,
            open: self.open,
            open_multiplier: self.open_multiplier,
            max_open: self.max_open,
            half_open_permits: self.half_open_permits,
            half_open_max_wait: self
                .half_open_max_wait
                .unwrap_or(Some(self.open.max(MIN_DEFAULT_MAX_WAIT))),
            respect_retry_after: self.respect_retry_after,
            listeners: self.listeners,
        })
    }
}
