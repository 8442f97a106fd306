//! When open breakers of one source make readiness fail: any of them, or enough of them.

use std::fmt;

use crate::ConfigError;

/// How many open breakers of one [`BreakerSource`](super::BreakerSource) fail the readiness
/// probe, for [`Readiness::critical_when`](super::Readiness::critical_when).
///
/// Why it matters: a keyed family holds one breaker per downstream host. Added with
/// [`Readiness::critical`](super::Readiness::critical), **one** open breaker fails the probe;
/// every instance of the service calls that host, so every instance fails readiness at once,
/// and the orchestrator takes the whole service out of rotation because one host of many is
/// down. With a threshold, fewer open breakers only warn (the probe answers 200 and the other
/// hosts keep serving); the probe fails once at least that many, or that share, are open:
/// the instance then has too few working downstreams to serve.
///
/// A breaker counts as open when it is open or forced open (read on the clock, as in
/// [`Snapshot`](crate::circuit_breaker::Snapshot)). A source that lists no breaker never
/// fails. A keyed family's shared overflow breaker counts as one breaker.
///
/// ```
/// use tower_rampart::health::OpenBreakers;
///
/// let two = OpenBreakers::at_least(2)?;
/// assert!(!two.fails(1, 10));
/// assert!(two.fails(2, 10));
/// let half = OpenBreakers::fraction(0.5)?;
/// assert!(!half.fails(1, 4));
/// assert!(half.fails(2, 4));
/// assert!(!half.fails(0, 0), "an empty source never fails");
/// assert!(OpenBreakers::fraction(1.5).is_err());
/// # Ok::<_, tower_rampart::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenBreakers(Threshold);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Threshold {
    /// At least this many (at least 1).
    Count(usize),
    /// At least this share, in parts per million (1..=1,000,000).
    Ppm(u32),
    /// More than half.
    Majority,
}

const LAYER: &str = "readiness";

impl OpenBreakers {
    /// Any open breaker fails the probe: what [`Readiness::critical`](super::Readiness::critical)
    /// does, right for one breaker guarding a downstream the instance cannot serve without.
    pub const ANY: OpenBreakers = OpenBreakers(Threshold::Count(1));

    /// Fails when more than half of the source's breakers are open (1 of 1, 2 of 2, 2 of 3,
    /// 3 of 4): what [`Registry::readiness`](crate::registry::Registry::readiness) uses for
    /// client stacks' per-host breakers.
    ///
    /// ```
    /// use tower_rampart::health::OpenBreakers;
    ///
    /// let most = OpenBreakers::MAJORITY;
    /// assert!(most.fails(1, 1));
    /// assert!(!most.fails(1, 2));
    /// assert!(most.fails(2, 3));
    /// assert!(!most.fails(2, 4));
    /// ```
    pub const MAJORITY: OpenBreakers = OpenBreakers(Threshold::Majority);

    /// Fails when at least `n` breakers of the source are open.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `open_breakers` when `n` is 0 (the probe would always fail).
    pub fn at_least(n: usize) -> Result<Self, ConfigError> {
        if n == 0 {
            return Err(ConfigError::field(
                LAYER,
                "open_breakers",
                "must be at least 1 (with 0 the probe would always fail)",
            ));
        }
        Ok(OpenBreakers(Threshold::Count(n)))
    }

    /// Fails when at least `share` (in (0, 1]) of the source's breakers are open: 0.5 is half
    /// of the hosts, rounded up (2 of 4, 3 of 5).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `open_fraction` when `share` is not in (0, 1].
    pub fn fraction(share: f64) -> Result<Self, ConfigError> {
        if !(share > 0.0 && share <= 1.0) {
            return Err(ConfigError::field(
                LAYER,
                "open_fraction",
                format!("must be in (0, 1], got {share}"),
            ));
        }
        // At least 1 ppm, so that a tiny share still needs one open breaker.
        let ppm = ((share * 1e6).round() as u32).max(1);
        Ok(OpenBreakers(Threshold::Ppm(ppm)))
    }

    /// Whether `open` open breakers out of `total` fail the probe.
    pub fn fails(&self, open: usize, total: usize) -> bool {
        if open == 0 || total == 0 {
            return false;
        }
        match self.0 {
            Threshold::Count(n) => open >= n,
            Threshold::Ppm(ppm) => (open as u128) * 1_000_000 >= u128::from(ppm) * (total as u128),
            Threshold::Majority => open > total / 2,
        }
    }
}

impl fmt::Display for OpenBreakers {
    /// In the words the probe's output uses: "critical from 2 open", "critical from 50 % open".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Threshold::Count(n) => write!(f, "critical from {n} open"),
            Threshold::Ppm(ppm) => write!(f, "critical from {} % open", f64::from(ppm) / 1e4),
            Threshold::Majority => f.write_str("critical from more than half open"),
        }
    }
}
