//! Time as plain nanosecond counts, so state machines keep instants in atomics and futures keep
//! them in whole words.

use std::time::Duration;

use tokio::time::Instant;

/// A duration in nanoseconds, saturating (u64 nanoseconds last 584 years).
#[inline]
pub(crate) fn nanos_of(d: Duration) -> u64 {
    // Saturating in 64 bits: the same as `as_nanos` capped at `u64::MAX`, without u128 sums.
    d.as_secs()
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(d.subsec_nanos()))
}

/// Nanoseconds from `epoch` to `t`; zero when `t` is earlier.
#[inline]
pub(crate) fn nanos_since(epoch: Instant, t: Instant) -> u64 {
    nanos_of(t.saturating_duration_since(epoch))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nanos_saturate_like_u128_nanos() {
        for d in [
            Duration::ZERO,
            Duration::from_nanos(1),
            Duration::new(1, 999_999_999),
            Duration::from_nanos(u64::MAX),
            Duration::from_nanos(u64::MAX) + Duration::from_nanos(1),
            Duration::new(u64::MAX / 1_000_000_000, 999_999_999),
            Duration::MAX,
        ] {
            let want = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
            assert_eq!(nanos_of(d), want, "{d:?}");
        }
    }
}
