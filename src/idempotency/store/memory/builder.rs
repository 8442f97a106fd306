//! The store's settings (bound and retention floor), checked when built, and the rate of new
//! keys they sustain.

use std::time::Duration;

use super::{BODY_BYTES, DEFAULT_MAX_BYTES, HEADER_BYTES, MemoryStore, RECORD_OVERHEAD};
use crate::ConfigError;

/// How long a [`MemoryStore`] keeps a completed record at least, even when room is needed: one
/// hour. Clients retry within seconds to minutes (SDK backoffs, a user pressing again, a job
/// queue's first redeliveries); a retry an hour later is rare, and a full day is what a shared
/// store such as Redis is for.
pub const DEFAULT_RETENTION_FLOOR: Duration = Duration::from_secs(3600);

/// The size a [`MemoryStore`] charges for a record of typical size, used to tell the rate of new
/// keys it sustains: a 64-byte scoped key and a small JSON answer (a 64-byte body and its
/// `content-type: application/json`), plus the fixed cost of a record: about 1 KiB on 64-bit
/// targets.
pub const TYPICAL_RECORD_BYTES: usize =
    RECORD_OVERHEAD + 64 + (64 + BODY_BYTES) + (12 + 16 + HEADER_BYTES);

const LAYER: &str = "idempotency memory store";

/// Settings of a [`MemoryStore`]: its bound in bytes and its retention floor, checked by
/// [`build`](MemoryStoreBuilder::build).
///
/// ```
/// use std::time::Duration;
/// use tower_rampart::idempotency::MemoryStore;
///
/// let store = MemoryStore::builder()
///     .max_bytes(256 << 20)
///     .retention_floor(Duration::from_secs(2 * 3600))
///     .build()
///     .unwrap();
/// assert_eq!(store.retention_floor(), Duration::from_secs(2 * 3600));
/// // 256 MiB of typical records (about 1 KiB) kept for 2 h: about 36 new keys a second.
/// assert_eq!(store.sustainable_rate().round(), 36.0);
///
/// let err = MemoryStore::builder().retention_floor(Duration::MAX).build().unwrap_err();
/// assert_eq!(err.setting(), Some("retention_floor"));
/// ```
#[derive(Debug, Clone)]
pub struct MemoryStoreBuilder {
    max_bytes: usize,
    retention_floor: Duration,
}

impl Default for MemoryStoreBuilder {
    fn default() -> Self {
        MemoryStoreBuilder {
            max_bytes: DEFAULT_MAX_BYTES,
            retention_floor: DEFAULT_RETENTION_FLOOR,
        }
    }
}

impl MemoryStoreBuilder {
    /// The bound: keys, records and stored responses ([`DEFAULT_MAX_BYTES`] unless set). At
    /// least one typical record ([`TYPICAL_RECORD_BYTES`]).
    pub fn max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// How long a completed record is kept at least, even when room is needed
    /// ([`DEFAULT_RETENTION_FLOOR`] unless set): more than zero, at most one year. Completed
    /// records are kept for their TTL when there is room; the floor only limits which ones may
    /// be dropped to make room. It need not be shorter than the layer's TTL.
    pub fn retention_floor(mut self, floor: Duration) -> Self {
        self.retention_floor = floor;
        self
    }

    /// The store, or the first setting out of bounds.
    pub fn build(self) -> Result<MemoryStore, ConfigError> {
        if self.max_bytes < TYPICAL_RECORD_BYTES {
            return Err(ConfigError::field(
                LAYER,
                "max_bytes",
                format!(
                    "must be at least {TYPICAL_RECORD_BYTES} (room for one record), got {}",
                    self.max_bytes
                ),
            ));
        }
        if self.retention_floor.is_zero() {
            return Err(ConfigError::field(
                LAYER,
                "retention_floor",
                "must be more than zero: a completed key could otherwise be forgotten, and run again, at once",
            ));
        }
        let floor = ConfigError::check_duration(LAYER, "retention_floor", self.retention_floor)?;
        Ok(MemoryStore::build(self.max_bytes, floor))
    }
}

impl MemoryStore {
    /// About how many records of typical size ([`TYPICAL_RECORD_BYTES`]) the bound holds.
    ///
    /// ```
    /// use tower_rampart::idempotency::MemoryStore;
    ///
    /// assert_eq!(MemoryStore::new().typical_capacity(), 65_408);
    /// ```
    pub fn typical_capacity(&self) -> usize {
        self.inner.max_bytes / TYPICAL_RECORD_BYTES
    }

    /// How many new keys per second, of typical size, the bound holds for the whole retention
    /// floor. Above it the floor cannot be kept for every key, and new keys are refused (503)
    /// until the oldest completed record passes it.
    ///
    /// ```
    /// use tower_rampart::idempotency::MemoryStore;
    ///
    /// // 64 MiB and the one-hour floor: about 18 new keys a second.
    /// assert_eq!(MemoryStore::new().sustainable_rate().floor(), 18.0);
    /// ```
    pub fn sustainable_rate(&self) -> f64 {
        self.typical_capacity() as f64 / self.inner.floor.as_secs_f64()
    }

    /// Tells the operator, once, what the settings sustain.
    pub(super) fn log_capacity(&self) {
        #[cfg(feature = "tracing")]
        tracing::info!(
            max_bytes = self.inner.max_bytes,
            retention_floor_secs = self.inner.floor.as_secs(),
            typical_records = self.typical_capacity(),
            keys_per_second = self.sustainable_rate(),
            "idempotency memory store: {} holds about {} records of typical size; new keys up to {:.1} per second keep the {} retention floor (a higher rate gets 503 until records pass it; a full day at scale is what Redis is for)",
            bytes(self.inner.max_bytes),
            self.typical_capacity(),
            self.sustainable_rate(),
            duration(self.inner.floor),
        );
    }
}

/// Bytes as an operator writes them.
#[cfg(feature = "tracing")]
fn bytes(n: usize) -> String {
    match n {
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} bytes"),
    }
}

/// A floor as an operator writes it.
#[cfg(feature = "tracing")]
fn duration(d: Duration) -> String {
    match (d.as_secs(), d.subsec_nanos()) {
        (s, 0) if s >= 3600 && s % 3600 == 0 => format!("{} h", s / 3600),
        (s, 0) if s >= 60 && s % 60 == 0 => format!("{} min", s / 60),
        (s, 0) => format!("{s} s"),
        _ => format!("{d:?}"),
    }
}
