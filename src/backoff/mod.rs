//! Backoff delays between attempts: exponential, linear or constant, with jitter.
//!
//! Pure and independent of tower: a [`Backoff`] describes the policy, and each logical request
//! draws its own [`Delays`] with its own random state, so clients that failed together do not
//! retry in lockstep.
//!
//! ```
//! use std::time::Duration;
//! use tower_rampart::backoff::{Backoff, Jitter};
//!
//! let backoff = Backoff::exponential(Duration::from_millis(100))
//!     .multiplier(2.0)
//!     .max_delay(Duration::from_secs(1))
//!     .jitter(Jitter::None);
//! let delays: Vec<_> = backoff.delays().take(5).collect();
//! assert_eq!(delays, [100, 200, 400, 800, 1000].map(Duration::from_millis));
//!
//! // With jitter every delay stays within its bounds.
//! let mut full = Backoff::exponential(Duration::from_millis(100)).jitter(Jitter::Full).delays();
//! assert!(full.next().unwrap() <= Duration::from_millis(100));
//! ```

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use crate::ConfigError;

/// How a computed delay is randomised (applied after the cap, so capped delays still vary).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Jitter {
    /// The delay as computed.
    None,
    /// Uniform in `[0, d]` (AWS "full jitter"): the best spread, the default.
    #[default]
    Full,
    /// `d/2 + uniform[0, d/2]`: never shorter than half the delay.
    Equal,
    /// `min(cap, uniform[base, previous * 3])` (AWS "decorrelated jitter").
    Decorrelated,
    /// `d * uniform[1 - f, 1 + f]` with `f` in thousandths: gRPC uses 200 (±20 %).
    Proportional(u16),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Curve {
    Exponential { multiplier: f64 },
    Linear { step: Duration },
    Constant,
}

/// A backoff policy. Cheap to clone; draw a sequence per request with [`Backoff::delays`].
#[derive(Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    curve: Curve,
    jitter: Jitter,
    seed: Option<Arc<(u64, AtomicU64)>>,
}

impl fmt::Debug for Backoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backoff")
            .field("base", &self.base)
            .field("max", &self.max)
            .field("curve", &self.curve)
            .field("jitter", &self.jitter)
            .field("seeded", &self.seed.is_some())
            .finish()
    }
}

impl PartialEq for Backoff {
    fn eq(&self, other: &Self) -> bool {
        (self.base, self.max, self.curve, self.jitter)
            == (other.base, other.max, other.curve, other.jitter)
    }
}

impl Default for Backoff {
    /// Exponential from 200 ms, doubling, at most 30 s, full jitter.
    fn default() -> Self {
        Backoff::exponential(Duration::from_millis(200))
    }
}

impl Backoff {
    /// `min(max, base * multiplier^n)` for the n-th retry (from 0); multiplier 2, max 30 s and
    /// full jitter unless changed.
    pub fn exponential(base: Duration) -> Self {
        Backoff {
            base,
            max: Duration::from_secs(30),
            curve: Curve::Exponential { multiplier: 2.0 },
            jitter: Jitter::Full,
            seed: None,
        }
    }

    /// `min(max, base + step * n)`; no jitter unless set.
    pub fn linear(base: Duration, step: Duration) -> Self {
        Backoff {
            base,
            max: Duration::from_secs(30),
            curve: Curve::Linear { step },
            jitter: Jitter::None,
            seed: None,
        }
    }

    /// The same delay every time; no jitter unless set.
    pub fn constant(delay: Duration) -> Self {
        Backoff {
            base: delay,
            max: delay,
            curve: Curve::Constant,
            jitter: Jitter::None,
            seed: None,
        }
    }

    /// The growth factor of an exponential backoff (at least 1).
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        if let Curve::Exponential { .. } = self.curve {
            self.curve = Curve::Exponential { multiplier };
        }
        self
    }

    /// The cap on any delay, before jitter.
    pub fn max_delay(mut self, max: Duration) -> Self {
        self.max = max;
        self
    }

    /// The jitter kind.
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// Deterministic randomness for tests: sequence k drawn from this backoff (or a clone) is
    /// seeded with `seed + k`, so sequences still differ from one another.
    pub fn seeded(mut self, seed: u64) -> Self {
        self.seed = Some(Arc::new((seed, AtomicU64::new(0))));
        self
    }

    /// The base delay.
    pub fn base(&self) -> Duration {
        self.base
    }

    /// The cap.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// The jitter kind.
    pub fn jitter_kind(&self) -> Jitter {
        self.jitter
    }

    /// Checks the values; the retry builder calls it.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] whose [`setting`](ConfigError::setting) names the value out of range:
    /// `initial_delay` when the base delay is zero (except for a constant backoff), `max_delay`
    /// when the cap is below the base delay, `initial_delay`, `max_delay` or `step` when it is
    /// above [`MAX_DURATION`](crate::MAX_DURATION) (one year), `multiplier` when it is below 1 or not finite,
    /// `jitter` when proportional jitter is above 1000 thousandths.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_rampart::backoff::Backoff;
    ///
    /// let err = Backoff::exponential(Duration::from_millis(100)).multiplier(0.5).validate().unwrap_err();
    /// assert_eq!(err.setting(), Some("multiplier"));
    /// assert_eq!(
    ///     err.to_string(),
    ///     "invalid backoff configuration: multiplier must be a finite number >= 1, got 0.5",
    /// );
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        // Fields are named as in configuration files (`ConfigError::setting`).
        let err = |field, m: String| Err(ConfigError::field("backoff", field, m));
        if self.base.is_zero() && !matches!(self.curve, Curve::Constant) {
            return err("initial_delay", "must be above zero".into());
        }
        // At most a year each, so that no delay is "forever" written as `Duration::MAX`.
        ConfigError::check_duration("backoff", "initial_delay", self.base)?;
        ConfigError::check_duration("backoff", "max_delay", self.max)?;
        if let Curve::Linear { step } = self.curve {
            ConfigError::check_duration("backoff", "step", step)?;
        }
        if self.max < self.base {
            return err(
                "max_delay",
                format!(
                    "must not be below initial_delay ({:?}), got {:?}",
                    self.base, self.max
                ),
            );
        }
        if let Curve::Exponential { multiplier } = self.curve
            && !(multiplier.is_finite() && multiplier >= 1.0)
        {
            return err(
                "multiplier",
                format!("must be a finite number >= 1, got {multiplier}"),
            );
        }
        if let Jitter::Proportional(f) = self.jitter
            && f > 1000
        {
            return err(
                "jitter",
                format!("must be proportional in thousandths (0..=1000), got {f}"),
            );
        }
        Ok(())
    }

    /// The delay before retry `n` (0 for the first retry), before jitter.
    pub fn nominal(&self, n: u32) -> Duration {
        let d = match self.curve {
            Curve::Constant => return self.base,
            Curve::Linear { step } => step
                .checked_mul(n)
                .and_then(|s| s.checked_add(self.base))
                .unwrap_or(self.max),
            Curve::Exponential { multiplier } => {
                let secs = self.base.as_secs_f64() * multiplier.powi(n.min(1024) as i32);
                if secs.is_finite() && secs < self.max.as_secs_f64() {
                    Duration::from_secs_f64(secs)
                } else {
                    self.max
                }
            }
        };
        d.min(self.max)
    }

    /// A fresh, independently random sequence of delays.
    pub fn delays(&self) -> Delays {
        let rng = match &self.seed {
            Some(s) => fastrand::Rng::with_seed(s.0.wrapping_add(s.1.fetch_add(1, Relaxed))),
            None => fastrand::Rng::new(),
        };
        Delays {
            backoff: self.clone(),
            n: 0,
            previous: self.base,
            rng,
        }
    }
}

/// One request's delays: an endless iterator (attempt limits live in the retry policy).
#[derive(Debug, Clone)]
pub struct Delays {
    backoff: Backoff,
    n: u32,
    previous: Duration,
    rng: fastrand::Rng,
}

impl Delays {
    fn uniform(&mut self, lo: Duration, hi: Duration) -> Duration {
        if hi <= lo {
            return lo;
        }
        let span = (hi - lo).as_nanos().min(u128::from(u64::MAX)) as u64;
        lo + Duration::from_nanos(self.rng.u64(0..=span))
    }
}

impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let d = self.backoff.nominal(self.n);
        self.n = self.n.saturating_add(1);
        let delay = match self.backoff.jitter {
            Jitter::None => d,
            Jitter::Full => self.uniform(Duration::ZERO, d),
            Jitter::Equal => d / 2 + self.uniform(Duration::ZERO, d - d / 2),
            Jitter::Decorrelated => {
                let hi = self.previous.saturating_mul(3).min(self.backoff.max);
                let next = self.uniform(self.backoff.base, hi.max(self.backoff.base));
                self.previous = next;
                next
            }
            Jitter::Proportional(f) => {
                let f = f64::from(f) / 1000.0;
                let factor = 1.0 - f + 2.0 * f * self.rng.f64();
                // Above a cap near `Duration::MAX` the product does not fit: stay at the cap.
                Duration::try_from_secs_f64(d.as_secs_f64() * factor).unwrap_or(d)
            }
        };
        Some(delay)
    }
}

#[cfg(test)]
mod tests;
