//! Time as plain nanosecond counts, so state machines keep instants in atomics and futures keep
//! them in whole words.

use std::time::Duration;

use tokio::time::Instant;

/// A duration in nanoseconds, saturating (u64 nanoseconds last 584 years).
#[inline]
pub(crate) fn nanos_of(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Nanoseconds from `epoch` to `t`; zero when `t` is earlier.
#[inline]
pub(crate) fn nanos_since(epoch: Instant, t: Instant) -> u64 {
    nanos_of(t.saturating_duration_since(epoch))
}
