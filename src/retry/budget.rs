//! Retry budgets: a cap on retries shared by every clone of a retry service, so a struggling
//! downstream is not buried under a retry storm.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::*},
    },
    time::Duration,
};

use crossbeam_utils::CachePadded;
use tokio::time::Instant;

use crate::{
    ConfigError,
    time::nanos_since,
    window::{Sample, TimeWindow},
};

/// A retry budget. Clones share one budget.
///
/// - [`Budget::token_bucket`]: gRPC retry throttling. Each failed attempt costs one token, each
///   success adds `token_ratio`; retries are allowed only while more than half the tokens remain.
/// - [`Budget::percent`]: Finagle/Envoy style. Retries within the last `ttl` may be at most
///   `percent` of the requests in that time, plus a floor of `min_per_sec` retries per second.
///
/// ```
/// use std::time::Duration;
/// use tokio::time::Instant;
/// use tower_rampart::retry::Budget;
///
/// let budget = Budget::token_bucket(10, 0.1)?;
/// let now = Instant::now();
/// for _ in 0..5 {
///     budget.record_outcome(false);
/// }
/// assert!(!budget.try_retry(now), "5 of 10 tokens left: not more than half");
/// for _ in 0..10 {
///     budget.record_outcome(true);
/// }
/// assert!(budget.try_retry(now));
/// # Ok::<_, tower_rampart::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct Budget(Arc<Kind>);

// One allocation per budget, behind an Arc: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Kind {
    Tokens {
        max: u64,
        ratio: u64,
        /// Thousandths of a token.
        tokens: AtomicU64,
    },
    Percent {
        percent_ppm: u64,
        reserve: u64,
        /// The window's length, for [`Budget::same_settings`].
        ttl: Duration,
        epoch: Instant,
        /// Requests are recorded as successes, retries as failures.
        window: TimeWindow,
        /// Retries granted but not yet in `window` (low 32 bits) and a generation bumped by every
        /// grant and every settlement (high 32 bits): see [`Budget::try_retry`].
        grants: CachePadded<AtomicU64>,
    },
}

/// Adds one pending grant and bumps the generation.
const GRANT: u64 = (1 << 32) + 1;
/// Removes one pending grant (there is always one to remove) and bumps the generation.
const SETTLE: u64 = (1 << 32) - 1;
const PENDING: u64 = (1 << 32) - 1;

/// Grants not yet recorded in the window, in millionths of a retry.
fn pending_millionths(grants: u64) -> i128 {
    i128::from(grants & PENDING) * 1_000_000
}

impl fmt::Debug for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.0 {
            Kind::Tokens { max, ratio, tokens } => f
                .debug_struct("Budget::TokenBucket")
                .field("max_tokens", &(max / 1000))
                .field("token_ratio", &(*ratio as f64 / 1000.0))
                .field("tokens", &(tokens.load(Relaxed) as f64 / 1000.0))
                .finish(),
            Kind::Percent {
                percent_ppm,
                reserve,
                ..
            } => f
                .debug_struct("Budget::Percent")
                .field("percent", &(*percent_ppm as f64 / 1e6))
                .field("reserve", reserve)
                .finish_non_exhaustive(),
        }
    }
}

const MILLI: u64 = 1000;

impl Budget {
    /// gRPC retry throttling: `max_tokens` in 1..=1000, `token_ratio` in (0, 1] (gRPC allows
    /// three decimal places; more are rounded).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when a value is out of range, naming it
    /// ([`setting`](ConfigError::setting)): `budget.max_tokens` or `budget.token_ratio`.
    ///
    /// ```
    /// use tower_rampart::retry::Budget;
    ///
    /// let err = Budget::token_bucket(0, 0.1).unwrap_err();
    /// assert_eq!(err.setting(), Some("budget.max_tokens"));
    /// assert_eq!(err.reason(), "must be in 1..=1000, got 0");
    /// ```
    pub fn token_bucket(max_tokens: u32, token_ratio: f64) -> Result<Budget, ConfigError> {
        let err = |field, m: String| Err(ConfigError::field("retry budget", field, m));
        if !(1..=1000).contains(&max_tokens) {
            return err(
                "budget.max_tokens",
                format!("must be in 1..=1000, got {max_tokens}"),
            );
        }
        if !(token_ratio > 0.0 && token_ratio <= 1.0) {
            return err(
                "budget.token_ratio",
                format!("must be in (0, 1], got {token_ratio}"),
            );
        }
        let max = u64::from(max_tokens) * MILLI;
        Ok(Budget(Arc::new(Kind::Tokens {
            max,
            ratio: ((token_ratio * 1000.0).round() as u64).max(1),
            tokens: AtomicU64::new(max),
        })))
    }

    /// Finagle-style: retries in the last `ttl` may be `percent` (in [0, 10]) of the requests in
    /// that time plus `min_per_sec * ttl`. Finagle's defaults are 0.2, 10 and 10 s.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the value ([`setting`](ConfigError::setting)):
    /// `budget.percent` when `percent` is outside [0, 10], `budget.window` when `ttl` is outside
    /// 1 s..=60 s. (`min_per_sec`, `budget.min_per_second` in configuration files, takes any
    /// value.)
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_rampart::retry::Budget;
    ///
    /// let err = Budget::percent(0.2, 10, Duration::from_millis(10)).unwrap_err();
    /// assert_eq!(err.setting(), Some("budget.window"));
    /// assert_eq!(
    ///     err.to_string(),
    ///     "invalid retry budget configuration: budget.window must be within 1 s..=60 s, got 10ms",
    /// );
    /// ```
    pub fn percent(percent: f64, min_per_sec: u32, ttl: Duration) -> Result<Budget, ConfigError> {
        let err = |field, m: String| Err(ConfigError::field("retry budget", field, m));
        if !(0.0..=10.0).contains(&percent) {
            return err(
                "budget.percent",
                format!("must be in [0, 10] (a fraction of requests), got {percent}"),
            );
        }
        if ttl < Duration::from_secs(1) || ttl > Duration::from_secs(60) {
            return err(
                "budget.window",
                format!("must be within 1 s..=60 s, got {ttl:?}"),
            );
        }
        let bucket = ttl.as_nanos() as u64 / 10;
        Ok(Budget(Arc::new(Kind::Percent {
            percent_ppm: (percent * 1e6).round() as u64,
            reserve: u64::from(min_per_sec) * ttl.as_secs(),
            ttl,
            epoch: Instant::now(),
            window: TimeWindow::new(bucket, 10),
            grants: CachePadded::new(AtomicU64::new(0)),
        })))
    }

    /// Whether `other` was made with the same settings (kind, limits and window), whatever
    /// either's state: a reloaded retry policy keeps its budget, and what it has counted, when
    /// the new configuration asks for the same one.
    pub(crate) fn same_settings(&self, other: &Budget) -> bool {
        match (&*self.0, &*other.0) {
            (
                Kind::Tokens { max, ratio, .. },
                Kind::Tokens {
                    max: max2,
                    ratio: ratio2,
                    ..
                },
            ) => (max, ratio) == (max2, ratio2),
            (
                Kind::Percent {
                    percent_ppm,
                    reserve,
                    ttl,
                    ..
                },
                Kind::Percent {
                    percent_ppm: percent_ppm2,
                    reserve: reserve2,
                    ttl: ttl2,
                    ..
                },
            ) => (percent_ppm, reserve, ttl) == (percent_ppm2, reserve2, ttl2),
            _ => false,
        }
    }

    /// Whether `self` and `other` are clones of one budget (share its state).
    #[cfg(test)]
    pub(crate) fn same_budget(&self, other: &Budget) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Counts an original request (not a retry): it earns retries in a percent budget. The
    /// clock is read only by a percent budget.
    #[inline]
    pub fn record_request(&self, now: impl FnOnce() -> Instant) {
        if let Kind::Percent { epoch, window, .. } = &*self.0 {
            window.record(
                nanos_since(*epoch, now()),
                Sample {
                    failure: false,
                    slow: false,
                },
            );
        }
    }

    /// Counts an attempt's outcome: it moves the tokens of a token bucket.
    #[inline]
    pub fn record_outcome(&self, success: bool) {
        if let Kind::Tokens { max, ratio, tokens } = &*self.0 {
            let mut cur = tokens.load(Relaxed);
            loop {
                let next = if success {
                    // A full bucket stays full without a write.
                    if cur >= *max {
                        return;
                    }
                    (cur + ratio).min(*max)
                } else {
                    cur.saturating_sub(MILLI)
                };
                match tokens.compare_exchange_weak(cur, next, AcqRel, Relaxed) {
                    Ok(_) => return,
                    Err(seen) => cur = seen,
                }
            }
        }
    }

    /// Asks to make one retry now.
    ///
    /// A percent budget charges a yes to the budget: the check and the withdrawal are one atomic
    /// step, so callers asking at the same moment are never granted more than the budget holds.
    /// A token bucket only looks (as gRPC specifies): the failed attempt's
    /// [`record_outcome`](Self::record_outcome) is the charge, and it is made before asking.
    pub fn try_retry(&self, now: Instant) -> bool {
        match &*self.0 {
            Kind::Tokens { max, tokens, .. } => tokens.load(Acquire) > max / 2,
            Kind::Percent {
                percent_ppm,
                reserve,
                epoch,
                window,
                grants,
                ..
            } => {
                // A grant is reserved in `grants` before it is written to the window, and settled
                // after. The compare-exchange succeeds only if no grant was reserved or settled
                // since `seen` was read (the generation rules out ABA), so every grant is either
                // in the window as read, or pending in `seen`: none is missed. (One settling
                // during the read may be counted twice, which can only refuse, for an instant.)
                let n = nanos_since(*epoch, now);
                let mut seen = grants.load(Acquire);
                loop {
                    let left = millionths_left(window.reading(n), seen, *percent_ppm, *reserve);
                    if left <= 0 {
                        return false;
                    }
                    match grants.compare_exchange_weak(
                        seen,
                        seen.wrapping_add(GRANT),
                        AcqRel,
                        Acquire,
                    ) {
                        Ok(_) => break,
                        Err(now_seen) => seen = now_seen,
                    }
                }
                window.record(
                    n,
                    Sample {
                        failure: true,
                        slow: false,
                    },
                );
                grants.fetch_add(SETTLE, AcqRel);
                true
            }
        }
    }

    /// Tokens left (token bucket) or retries left now (percent budget).
    pub fn remaining(&self, now: Instant) -> f64 {
        match &*self.0 {
            Kind::Tokens { tokens, .. } => tokens.load(Acquire) as f64 / 1000.0,
            Kind::Percent {
                percent_ppm,
                reserve,
                epoch,
                window,
                grants,
                ..
            } => {
                let seen = grants.load(Acquire);
                let r = window.reading(nanos_since(*epoch, now));
                let left = millionths_left(r, seen, *percent_ppm, *reserve);
                left.max(0) as f64 / 1e6
            }
        }
    }
}

/// Retries still allowed by a percent budget, in millionths of a retry: the floor plus the share
/// of requests, less the retries made (requests and retries are the window's successes and
/// failures) and the grants pending in `grants` (the word read from `Kind::Percent::grants`).
fn millionths_left(r: crate::window::Reading, grants: u64, percent_ppm: u64, reserve: u64) -> i128 {
    let retries = i128::from(r.failures);
    let requests = i128::from(r.calls) - retries;
    i128::from(reserve) * 1_000_000 + i128::from(percent_ppm) * requests
        - retries * 1_000_000
        - pending_millionths(grants)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_follows_grpc() {
        let b = Budget::token_bucket(10, 0.5).unwrap();
        let t = Instant::now();
        assert!(b.try_retry(t));
        for _ in 0..4 {
            b.record_outcome(false);
        }
        assert!(b.try_retry(t), "6 > 5");
        b.record_outcome(false);
        assert!(!b.try_retry(t), "5 is not more than half of 10");
        b.record_outcome(true);
        assert!(b.try_retry(t), "5.5 > 5");
        for _ in 0..100 {
            b.record_outcome(false);
        }
        assert_eq!(b.remaining(t), 0.0, "never below zero");
        for _ in 0..100 {
            b.record_outcome(true);
        }
        assert_eq!(b.remaining(t), 10.0, "never above the max");
    }

    #[test]
    fn percent_budget_has_a_floor_and_a_share() {
        // 20 % of requests, plus 1 retry per second over 10 s.
        let b = Budget::percent(0.2, 1, Duration::from_secs(10)).unwrap();
        let t = Instant::now() + Duration::from_millis(1);
        let granted = (0..100).filter(|_| b.try_retry(t)).count();
        assert_eq!(granted, 10, "the floor alone");
        for _ in 0..100 {
            b.record_request(|| t);
        }
        let granted = (0..100).filter(|_| b.try_retry(t)).count();
        assert_eq!(granted, 20, "20 % of 100 requests");
        // Everything leaves the window with time.
        let later = t + Duration::from_secs(11);
        assert_eq!(b.remaining(later), 10.0);
    }

    /// Runs `rounds` rounds of `threads` threads released together by a barrier, each running
    /// `ask` once on a fresh budget made by `make` and counting the retries it was granted;
    /// returns, per round, the grants and what the budget had left afterwards.
    fn concurrent_grants(
        rounds: usize,
        threads: usize,
        make: impl Fn() -> Budget,
        ask: fn(&Budget, Instant) -> usize,
    ) -> Vec<(usize, f64)> {
        use std::sync::{Barrier, atomic::AtomicUsize};
        let barrier = Arc::new(Barrier::new(threads));
        (0..rounds)
            .map(|_| {
                let b = make();
                let t = Instant::now();
                let granted = Arc::new(AtomicUsize::new(0));
                let handles: Vec<_> = (0..threads)
                    .map(|_| {
                        let (b, barrier, granted) = (b.clone(), barrier.clone(), granted.clone());
                        std::thread::spawn(move || {
                            barrier.wait();
                            granted.fetch_add(ask(&b, t), Relaxed);
                        })
                    })
                    .collect();
                for h in handles {
                    h.join().unwrap();
                }
                (granted.load(Relaxed), b.remaining(t))
            })
            .collect()
    }

    #[test]
    fn percent_budget_never_overshoots_under_concurrency() {
        // A floor of one retry per second over one second, no share of requests: exactly one
        // retry may be granted, however many threads ask at once.
        let one = || Budget::percent(0.0, 1, Duration::from_secs(1)).unwrap();
        let grants: Vec<usize> = concurrent_grants(500, 8, one, |b, t| usize::from(b.try_retry(t)))
            .into_iter()
            .map(|(g, _)| g)
            .collect();
        let over = grants.iter().filter(|&&g| g > 1).count();
        assert_eq!(over, 0, "more than 1 retry granted in {over} of 500 rounds");
        assert!(grants.iter().all(|&g| g == 1), "{grants:?}");
        // A larger allowance, asked for many times: never more than the 5 allowed.
        let five = || Budget::percent(0.0, 5, Duration::from_secs(1)).unwrap();
        let grants: Vec<usize> = concurrent_grants(300, 8, five, |b, t| {
            (0..4).filter(|_| b.try_retry(t)).count()
        })
        .into_iter()
        .map(|(g, _)| g)
        .collect();
        assert!(grants.iter().all(|&g| g <= 5), "{grants:?}");
        assert!(grants.contains(&5), "{grants:?}");
    }

    #[test]
    fn token_bucket_never_overshoots_under_concurrency() {
        // gRPC: each failed attempt costs a token, then the retry is allowed while more than
        // half remain. From 7 of 10 tokens, 8 failing threads leave 6, 5, 4, ...: one retry.
        let seven_of_ten = || {
            let b = Budget::token_bucket(10, 0.1).unwrap();
            for _ in 0..3 {
                b.record_outcome(false);
            }
            b
        };
        let rounds = concurrent_grants(300, 8, seven_of_ten, |b, t| {
            b.record_outcome(false);
            usize::from(b.try_retry(t))
        });
        for (round, (granted, left)) in rounds.into_iter().enumerate() {
            assert!(granted <= 1, "round {round}");
            assert_eq!(left, 0.0, "7 - 8 tokens saturate at zero");
        }
    }

    #[test]
    fn settings_compare_without_state() {
        let ten = Duration::from_secs(10);
        let a = Budget::token_bucket(10, 0.1).unwrap();
        a.record_outcome(false);
        assert!(a.same_settings(&Budget::token_bucket(10, 0.1).unwrap()));
        assert!(!a.same_settings(&Budget::token_bucket(10, 0.2).unwrap()));
        assert!(!a.same_settings(&Budget::token_bucket(11, 0.1).unwrap()));
        let p = Budget::percent(0.2, 10, ten).unwrap();
        assert!(p.same_settings(&Budget::percent(0.2, 10, ten).unwrap()));
        assert!(!p.same_settings(&Budget::percent(0.3, 10, ten).unwrap()));
        assert!(!p.same_settings(&Budget::percent(0.2, 11, ten).unwrap()));
        assert!(!p.same_settings(&Budget::percent(0.2, 10, Duration::from_secs(20)).unwrap()));
        assert!(!p.same_settings(&a) && !a.same_settings(&p));
    }

    #[test]
    fn refusals_name_the_setting() {
        let ten = Duration::from_secs(10);
        let cases = [
            (
                Budget::token_bucket(0, 0.1),
                "budget.max_tokens",
                "must be in 1..=1000, got 0",
            ),
            (
                Budget::token_bucket(10, 0.0),
                "budget.token_ratio",
                "must be in (0, 1], got 0",
            ),
            (
                Budget::percent(11.0, 10, ten),
                "budget.percent",
                "must be in [0, 10] (a fraction of requests), got 11",
            ),
            (
                Budget::percent(0.2, 10, Duration::from_secs(61)),
                "budget.window",
                "must be within 1 s..=60 s, got 61s",
            ),
        ];
        for (result, field, reason) in cases {
            let e = result.unwrap_err();
            assert_eq!(e.setting(), Some(field));
            assert_eq!(e.reason(), reason);
        }
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(Budget::token_bucket(0, 0.1).is_err());
        assert!(Budget::token_bucket(10, 0.0).is_err());
        assert!(Budget::token_bucket(10, f64::NAN).is_err());
        assert!(Budget::percent(-0.1, 10, Duration::from_secs(10)).is_err());
        assert!(Budget::percent(0.2, 10, Duration::from_millis(10)).is_err());
    }
}
