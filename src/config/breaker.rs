//! Circuit breaker settings as data.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{
    Error, Limit,
    error::join,
    merge::{either, inherit},
    value::duration,
};
use crate::circuit_breaker::{self, Config};

/// A circuit breaker's settings as written in a configuration file. Every field is optional:
/// what is not set keeps the default of the builder it is applied to (the
/// [breaker's](circuit_breaker::Builder) or the [client pipeline's](crate::pipeline::StandardClientLayer)).
///
/// The crate's own names and the names design documents use are both accepted (one of the two
/// per setting):
///
/// | key | also | meaning |
/// |---|---|---|
/// | `name` | `service` | the breaker's name (metrics label, error text) |
/// | `count_window` | `sliding_window_size` | judge the last N calls |
/// | `time_window`, `time_window_buckets` | | judge the calls of the last duration (10 buckets unless set) |
/// | `consecutive_failures` | | open after N failures in a row |
/// | `failure_rate` | | open at this failure rate, in (0, 1] |
/// | `failure_threshold` | | N failures (1 to the window's size): with a count window of W calls, open when at least N of the last W calls failed, once `minimum_calls` are in (N in a row always open it; fewer than N never do); without a window, N failures in a row |
/// | `minimum_calls` | | calls the window must hold before it is judged (unless set: with `failure_threshold` and a count window, N; with a count window smaller than the default, the window's size) |
/// | `slow_call_duration` | `slow_call_duration_threshold` | a call this long or longer is slow |
/// | `slow_call_rate` | `slow_call_rate_threshold` | open at this slow-call rate, in (0, 1] |
/// | `open_duration` | `recovery_timeout` | wait before half-open |
/// | `open_duration_multiplier`, `max_open_duration` | | grow the wait after each opening without a close |
/// | `half_open_permits` | `permitted_calls_in_half_open` | probe calls while half-open |
/// | `half_open_max_wait` | | a duration or `off` |
/// | `respect_retry_after` | | let a 503's `Retry-After` lengthen the wait |
///
/// Rates are fractions: `0.8`, not `80`. Durations are at most one year (365 days).
///
/// ```
/// use std::time::Duration;
/// use tower_rampart::{circuit_breaker::WindowKind, config::BreakerSettings};
///
/// let settings: BreakerSettings = serde_json::from_value(serde_json::json!({
///     "service": "payment-gateway",
///     "failure_threshold": 5,
///     "sliding_window_size": 10,
///     "recovery_timeout": "30s",
/// }))?;
/// let config = settings.config()?;
/// assert_eq!(config.name(), "payment-gateway");
/// assert_eq!(config.window(), WindowKind::Count { size: 10 });
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
#[allow(missing_docs)] // the table above documents the fields
pub struct BreakerSettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count_window: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sliding_window_size: Option<u32>,
    #[serde(with = "duration", skip_serializing_if = "Option::is_none")]
    pub time_window: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_window_buckets: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minimum_calls: Option<u32>,
    #[serde(with = "duration", skip_serializing_if = "Option::is_none")]
    pub slow_call_duration: Option<Duration>,
    #[serde(with = "duration", skip_serializing_if = "Option::is_none")]
    pub slow_call_duration_threshold: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slow_call_rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slow_call_rate_threshold: Option<f64>,
    #[serde(with = "duration", skip_serializing_if = "Option::is_none")]
    pub open_duration: Option<Duration>,
    #[serde(with = "duration", skip_serializing_if = "Option::is_none")]
    pub recovery_timeout: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_duration_multiplier: Option<f64>,
    #[serde(with = "duration", skip_serializing_if = "Option::is_none")]
    pub max_open_duration: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub half_open_permits: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permitted_calls_in_half_open: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub half_open_max_wait: Option<Limit>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub respect_retry_after: Option<bool>,
}

/// Builder settings whose errors name a key the user may have written differently.
const SPELLINGS: &[(&str, &str)] = &[
    ("count_window", "sliding_window_size"),
    ("slow_call_duration", "slow_call_duration_threshold"),
    ("slow_call_rate", "slow_call_rate_threshold"),
    ("open_duration", "recovery_timeout"),
    ("half_open_permits", "permitted_calls_in_half_open"),
];

impl BreakerSettings {
    /// These settings over `base`: every group of fields not set here comes from `base` (a
    /// window named here replaces the whole window of `base`; `failure_rate` and
    /// `failure_threshold` replace each other).
    #[must_use]
    pub fn inherit(&self, base: &BreakerSettings) -> BreakerSettings {
        let mut out = inherit!(self, base;
            [name, service]
            [count_window, sliding_window_size, time_window, time_window_buckets, consecutive_failures]
            [failure_rate, failure_threshold]
            [minimum_calls]
            [slow_call_duration, slow_call_duration_threshold]
            [slow_call_rate, slow_call_rate_threshold]
            [open_duration, recovery_timeout]
            [open_duration_multiplier]
            [max_open_duration]
            [half_open_permits, permitted_calls_in_half_open]
            [half_open_max_wait]
            [respect_retry_after]
        );
        // Failures in a row judge no rates: a policy that picks them drops the defaults'
        // slow-call settings (which need a window) rather than fail on them.
        let own_slow = self.slow_call_duration.is_some()
            || self.slow_call_duration_threshold.is_some()
            || self.slow_call_rate.is_some()
            || self.slow_call_rate_threshold.is_some();
        if out.consecutive_failures.is_some() && !own_slow {
            out.slow_call_duration = None;
            out.slow_call_duration_threshold = None;
            out.slow_call_rate = None;
            out.slow_call_rate_threshold = None;
        }
        out
    }

    /// The breaker's name, if set (`name` or `service`).
    pub fn breaker_name(&self) -> Option<&str> {
        self.name.as_deref().or(self.service.as_deref())
    }

    /// A validated breaker configuration: these settings over the breaker's defaults.
    ///
    /// # Errors
    ///
    /// An [`Error`] whose path is the key at fault (`minimum_calls`), for a value the breaker's
    /// builder refuses or settings that contradict each other.
    pub fn config(&self) -> Result<Config, Error> {
        self.config_over(Config::builder(), "")
    }

    /// These settings applied to `base`, built and checked; errors carry `section` (the path
    /// of this block in the file) before the key.
    pub(crate) fn config_over(
        &self,
        base: circuit_breaker::Builder,
        section: &str,
    ) -> Result<Config, Error> {
        let b = self.apply(base, section)?;
        b.build()
            .map_err(|e| Error::refused(section, &e, |setting| self.key_for(setting).to_owned()))
    }

    /// The key the user wrote for the builder's `setting`.
    fn key_for(&self, setting: &str) -> &'static str {
        let set = |key: &str| match key {
            "sliding_window_size" => self.sliding_window_size.is_some(),
            "slow_call_duration_threshold" => self.slow_call_duration_threshold.is_some(),
            "slow_call_rate_threshold" => self.slow_call_rate_threshold.is_some(),
            "recovery_timeout" => self.recovery_timeout.is_some(),
            "permitted_calls_in_half_open" => self.permitted_calls_in_half_open.is_some(),
            _ => false,
        };
        if self.failure_threshold.is_some()
            && matches!(
                setting,
                "failure_rate" | "failure_count" | "consecutive_failures"
            )
        {
            return "failure_threshold";
        }
        for (own, other) in SPELLINGS {
            if *own == setting {
                return if set(other) { other } else { own };
            }
        }
        // Settings that are not spelled two ways: the builder's names are the file's.
        KEYS.iter()
            .find(|k| **k == setting)
            .copied()
            .unwrap_or("(breaker)")
    }

    fn apply(
        &self,
        mut b: circuit_breaker::Builder,
        section: &str,
    ) -> Result<circuit_breaker::Builder, Error> {
        let at = |key: &str, m: String| Error::at(join(section, key), m);
        if let Some((name, _)) = either(section, (&self.name, "name"), (&self.service, "service"))?
        {
            b = b.name(name.as_str());
        }
        let count = either(
            section,
            (&self.count_window, "count_window"),
            (&self.sliding_window_size, "sliding_window_size"),
        )?;
        let windows = [
            count.map(|(_, k)| k),
            self.time_window.map(|_| "time_window"),
            self.consecutive_failures.map(|_| "consecutive_failures"),
        ];
        let mut named = windows.iter().flatten();
        if let (Some(first), Some(second)) = (named.next(), named.next()) {
            return Err(at(
                second,
                format!(
                    "`{first}` already chooses the window: give one of count_window (sliding_window_size), time_window or consecutive_failures"
                ),
            ));
        }
        if let Some((&size, key)) = count {
            // Blamed on the window, not on what is judged over it (`failure_threshold`).
            if size == 0 {
                return Err(at(key, "must be at least 1 (calls in the window)".into()));
            }
            // A window smaller than the minimum calls left unset (20 by default) could never
            // open: judge it from its size instead. A minimum given here is checked as written.
            if self.minimum_calls.is_none() && b.minimum_calls_so_far() > size {
                b = b.minimum_calls(size);
            }
            b = b.count_window(size);
        }
        match (self.time_window, self.time_window_buckets) {
            (Some(d), buckets) => b = b.time_window(d, buckets.unwrap_or(10)),
            (None, Some(_)) => {
                return Err(at(
                    "time_window_buckets",
                    "needs `time_window`, the window's length".into(),
                ));
            }
            (None, None) => {}
        }
        if let Some(n) = self.consecutive_failures {
            b = b.consecutive_failures(n);
        }
        if let Some(calls) = self.minimum_calls {
            b = b.minimum_calls(calls);
        }
        match (self.failure_threshold, self.failure_rate) {
            (Some(_), Some(_)) => {
                return Err(at(
                    "failure_threshold",
                    "`failure_rate` is also given: give one".into(),
                ));
            }
            (Some(n), None) => b = self.threshold(b, n, count.map(|(s, _)| *s), &at)?,
            (None, Some(rate)) => b = b.failure_rate(rate),
            (None, None) => {}
        }
        let slow_duration = either(
            section,
            (&self.slow_call_duration, "slow_call_duration"),
            (
                &self.slow_call_duration_threshold,
                "slow_call_duration_threshold",
            ),
        )?;
        let slow_rate = either(
            section,
            (&self.slow_call_rate, "slow_call_rate"),
            (&self.slow_call_rate_threshold, "slow_call_rate_threshold"),
        )?;
        match (slow_duration, slow_rate) {
            (Some((&d, _)), Some((&r, _))) => b = b.slow_calls(d, r),
            (Some(_), None) | (None, Some(_)) => {
                let (missing, given) = if slow_duration.is_some() {
                    ("slow_call_rate", slow_duration.map(|(_, k)| k))
                } else {
                    ("slow_call_duration", slow_rate.map(|(_, k)| k))
                };
                return Err(at(
                    given.unwrap_or(missing),
                    format!(
                        "needs `{missing}` too: slow calls are judged by a duration and a rate"
                    ),
                ));
            }
            (None, None) => {}
        }
        if let Some((&d, _)) = either(
            section,
            (&self.open_duration, "open_duration"),
            (&self.recovery_timeout, "recovery_timeout"),
        )? {
            b = b.open_duration(d);
        }
        match (self.open_duration_multiplier, self.max_open_duration) {
            (None, None) => {}
            (m, max) => {
                let open = either(
                    section,
                    (&self.open_duration, "open_duration"),
                    (&self.recovery_timeout, "recovery_timeout"),
                )?
                .map(|(d, _)| *d);
                // Without a max, the default cap (5 min) unless the open duration is above it.
                let max = max.unwrap_or(Duration::from_secs(300).max(open.unwrap_or_default()));
                b = b.open_duration_growth(m.unwrap_or(1.0), max);
            }
        }
        if let Some((&p, _)) = either(
            section,
            (&self.half_open_permits, "half_open_permits"),
            (
                &self.permitted_calls_in_half_open,
                "permitted_calls_in_half_open",
            ),
        )? {
            b = b.half_open_permits(p);
        }
        if let Some(wait) = self.half_open_max_wait {
            b = b.half_open_max_wait(wait.duration());
        }
        if let Some(r) = self.respect_retry_after {
            b = b.respect_retry_after(r);
        }
        Ok(b)
    }

    /// `failure_threshold: n`: at least `n` failures of a count window's calls, or `n`
    /// failures in a row without a window.
    fn threshold(
        &self,
        b: circuit_breaker::Builder,
        n: u32,
        count: Option<u32>,
        at: &impl Fn(&str, String) -> Error,
    ) -> Result<circuit_breaker::Builder, Error> {
        if self.time_window.is_some() {
            return Err(at(
                "failure_threshold",
                "counts failures, which a time window cannot bound: use `failure_rate` with `time_window`".into(),
            ));
        }
        if self.consecutive_failures.is_some() {
            return Err(at(
                "failure_threshold",
                "`consecutive_failures` is also given: give one".into(),
            ));
        }
        match count {
            None => Ok(b.consecutive_failures(n)),
            Some(size) if n == 0 || n > size => Err(at(
                "failure_threshold",
                format!("must be in 1..={size} (the count window), got {n}"),
            )),
            Some(_) => {
                // An absolute number: at least `n` of the last `size` calls failed.
                let b = b.failure_count(n);
                // The earliest the window could hold `n` failures.
                Ok(if self.minimum_calls.is_none() {
                    b.minimum_calls(n)
                } else {
                    b
                })
            }
        }
    }
}

/// Every key of the block, for settings spelled the builder's way.
const KEYS: &[&str] = &[
    "name",
    "count_window",
    "time_window",
    "time_window_buckets",
    "consecutive_failures",
    "failure_rate",
    "failure_threshold",
    "minimum_calls",
    "slow_call_duration",
    "slow_call_rate",
    "open_duration",
    "open_duration_multiplier",
    "max_open_duration",
    "half_open_permits",
    "half_open_max_wait",
    "respect_retry_after",
];
