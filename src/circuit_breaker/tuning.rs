//! The settings a running breaker may change ([`Breaker::retune`](super::Breaker::retune)),
//! behind a seqlock: readers copy a whole, consistent set without a lock and without writing
//! anything, so the hot path pays a few plain loads and no shared cache-line writes.

use std::{sync::atomic::Ordering::*, time::Duration};

use super::{
    Config, WindowKind,
    config::grown_open_duration,
    sync::{AtomicU64, fence, spin_loop},
};
use crate::time::nanos_of;

/// One consistent set of a breaker's retunable settings, copied out of [`Tunables`] once per
/// operation. Durations are whole nanoseconds (saturating at about 584 years, as everywhere in
/// the breaker).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Tuning {
    /// Failure-rate threshold in parts per million.
    pub(crate) failure_ppm: u64,
    /// Slow-call-rate threshold in parts per million (meaningless when `slow_nanos` is 0).
    pub(crate) slow_ppm: u64,
    /// Slow-call duration; 0 when slow-call detection is off (the builder refuses a zero one).
    pub(crate) slow_nanos: u64,
    pub(crate) minimum_calls: u32,
    /// Failures in a count window that open the breaker; 0: the failure rate judges.
    pub(crate) failure_count: u32,
    pub(crate) open_nanos: u64,
    pub(crate) open_multiplier: f64,
    pub(crate) max_open_nanos: u64,
    pub(crate) half_open_permits: u32,
    /// 0 when off (the builder refuses a zero wait).
    pub(crate) half_open_max_wait_nanos: u64,
    pub(crate) respect_retry_after: bool,
}

/// The part of a [`Tuning`] that judges a window (and half-open probe results): what recording
/// an outcome needs. Read alone, from the first words only, so recording loads less.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Judging {
    pub(crate) failure_ppm: u64,
    pub(crate) slow_ppm: u64,
    /// 0: slow-call detection off.
    pub(crate) slow_nanos: u64,
    pub(crate) minimum_calls: u32,
    /// 0: the failure rate judges a closed breaker's window.
    pub(crate) failure_count: u32,
    pub(crate) half_open_permits: u32,
}

impl Tuning {
    pub(crate) fn judging(&self) -> Judging {
        Judging {
            failure_ppm: self.failure_ppm,
            slow_ppm: self.slow_ppm,
            slow_nanos: self.slow_nanos,
            minimum_calls: self.minimum_calls,
            failure_count: self.failure_count,
            half_open_permits: self.half_open_permits,
        }
    }

    pub(crate) fn of(config: &Config) -> Tuning {
        Tuning {
            failure_ppm: config.failure_ppm,
            slow_ppm: config.slow.map_or(0, |(_, ppm)| ppm),
            slow_nanos: config.slow.map_or(0, |(d, _)| nanos_of(d).max(1)),
            // Consecutive mode has no minimum: the slot holds its threshold, so that a new
            // threshold is a retune (keeping an open breaker open), not a new window.
            minimum_calls: match config.window {
                WindowKind::Consecutive { failures } => failures,
                _ => config.minimum_calls,
            },
            failure_count: config.failure_count,
            open_nanos: nanos_of(config.open),
            open_multiplier: config.open_multiplier,
            max_open_nanos: nanos_of(config.max_open),
            half_open_permits: config.half_open_permits,
            half_open_max_wait_nanos: config.half_open_max_wait.map_or(0, |w| nanos_of(w).max(1)),
            respect_retry_after: config.respect_retry_after,
        }
    }

    /// Writes these settings into `config` (whose name, window and listeners stay).
    pub(crate) fn apply(&self, config: &mut Config) {
        config.failure_ppm = self.failure_ppm;
        config.slow = self.slow();
        match config.window {
            WindowKind::Consecutive { .. } => {
                config.window = WindowKind::Consecutive {
                    failures: self.minimum_calls,
                };
            }
            _ => config.minimum_calls = self.minimum_calls,
        }
        config.failure_count = self.failure_count;
        config.open = Duration::from_nanos(self.open_nanos);
        config.open_multiplier = self.open_multiplier;
        config.max_open = Duration::from_nanos(self.max_open_nanos);
        config.half_open_permits = self.half_open_permits;
        config.half_open_max_wait = self.half_open_max_wait();
        config.respect_retry_after = self.respect_retry_after;
    }

    /// Slow-call duration and rate threshold (ppm), when detection is on.
    pub(crate) fn slow(&self) -> Option<(Duration, u64)> {
        (self.slow_nanos != 0).then(|| (Duration::from_nanos(self.slow_nanos), self.slow_ppm))
    }

    pub(crate) fn half_open_max_wait(&self) -> Option<Duration> {
        (self.half_open_max_wait_nanos != 0)
            .then(|| Duration::from_nanos(self.half_open_max_wait_nanos))
    }

    pub(crate) fn max_open(&self) -> Duration {
        Duration::from_nanos(self.max_open_nanos)
    }

    /// The open duration after `openings` consecutive openings, as
    /// [`Config::open_duration_after`].
    pub(crate) fn open_duration_after(&self, openings: u32) -> Duration {
        grown_open_duration(
            Duration::from_nanos(self.open_nanos),
            self.open_multiplier,
            self.max_open(),
            openings,
        )
    }
}

const WORDS: usize = 7;
/// Index of the slow-call duration, read alone by admission in the closed state.
const SLOW: usize = 2;
/// The first words hold every field of [`Judging`].
const JUDGING_WORDS: usize = 3;

// Word 0 packs the small fields: the two rates fit 20 bits (at most 1,000,000 ppm), the
// permits 16 bits (see `state::MAX_PERMITS`).
const PPM_BITS: u32 = 20;
const PPM_MASK: u64 = (1 << PPM_BITS) - 1;
const PERMITS_SHIFT: u32 = 2 * PPM_BITS;
const RESPECT_SHIFT: u32 = PERMITS_SHIFT + 16;

fn pack(t: &Tuning) -> [u64; WORDS] {
    [
        t.failure_ppm & PPM_MASK
            | (t.slow_ppm & PPM_MASK) << PPM_BITS
            | u64::from(t.half_open_permits & 0xFFFF) << PERMITS_SHIFT
            | u64::from(t.respect_retry_after) << RESPECT_SHIFT,
        // The failure count shares the minimum's word: judging loads no more words for it.
        u64::from(t.minimum_calls) | u64::from(t.failure_count) << 32,
        t.slow_nanos,
        t.open_nanos,
        t.open_multiplier.to_bits(),
        t.max_open_nanos,
        t.half_open_max_wait_nanos,
    ]
}

fn unpack_judging(w: [u64; JUDGING_WORDS]) -> Judging {
    Judging {
        failure_ppm: w[0] & PPM_MASK,
        slow_ppm: (w[0] >> PPM_BITS) & PPM_MASK,
        half_open_permits: ((w[0] >> PERMITS_SHIFT) & 0xFFFF) as u32,
        minimum_calls: w[1] as u32,
        failure_count: (w[1] >> 32) as u32,
        slow_nanos: w[SLOW],
    }
}

fn unpack(w: [u64; WORDS]) -> Tuning {
    Tuning {
        failure_ppm: w[0] & PPM_MASK,
        slow_ppm: (w[0] >> PPM_BITS) & PPM_MASK,
        half_open_permits: ((w[0] >> PERMITS_SHIFT) & 0xFFFF) as u32,
        respect_retry_after: (w[0] >> RESPECT_SHIFT) & 1 == 1,
        minimum_calls: w[1] as u32,
        failure_count: (w[1] >> 32) as u32,
        slow_nanos: w[SLOW],
        open_nanos: w[3],
        open_multiplier: f64::from_bits(w[4]),
        max_open_nanos: w[5],
        half_open_max_wait_nanos: w[6],
    }
}

/// A [`Tuning`] shared between one writer at a time (serialised by the caller: the breaker's
/// transition lock) and any number of lock-free readers.
///
/// A seqlock: the writer makes the sequence odd, writes the words, makes it even again; a
/// reader copies the words between two reads of the sequence and retries when it was odd or
/// moved. Every word is an atomic, so a torn copy is merely discarded, never undefined.
pub(crate) struct Tunables {
    seq: AtomicU64,
    words: [AtomicU64; WORDS],
}

impl Tunables {
    pub(crate) fn new(t: &Tuning) -> Self {
        let w = pack(t);
        Tunables {
            seq: AtomicU64::new(0),
            words: std::array::from_fn(|i| AtomicU64::new(w[i])),
        }
    }

    /// A consistent copy of the settings. Never blocks: retries only while a retune is writing.
    #[inline]
    pub(crate) fn load(&self) -> Tuning {
        unpack(self.read())
    }

    /// A consistent copy of the settings that judge a window: fewer loads than [`load`](Self::load).
    #[inline]
    pub(crate) fn load_judging(&self) -> Judging {
        unpack_judging(self.read())
    }

    /// The first `N` words, all from one write.
    #[inline]
    fn read<const N: usize>(&self) -> [u64; N] {
        loop {
            let before = self.seq.load(Acquire);
            let w: [u64; N] = std::array::from_fn(|i| self.words[i].load(Relaxed));
            // Orders the word loads before the second sequence load (pairs with the writer's
            // release fence): a word from a write in progress implies a moved sequence.
            fence(Acquire);
            let after = self.seq.load(Relaxed);
            if before == after && before & 1 == 0 {
                return w;
            }
            spin_loop();
        }
    }

    /// Whether calls are timed (slow-call detection on). One word, so no sequence check: on its
    /// own it is always a value some configuration had.
    #[inline]
    pub(crate) fn timed(&self) -> bool {
        self.words[SLOW].load(Relaxed) != 0
    }

    /// Replaces the settings. The caller must serialise writers (the transition lock).
    pub(crate) fn store(&self, t: &Tuning) {
        let seq = self.seq.load(Relaxed);
        self.seq.store(seq.wrapping_add(1), Relaxed);
        // The odd sequence is visible before any new word (pairs with the readers' fence).
        fence(Release);
        for (word, value) in self.words.iter().zip(pack(t)) {
            word.store(value, Relaxed);
        }
        self.seq.store(seq.wrapping_add(2), Release);
    }
}

#[cfg(all(test, not(rampart_loom)))]
mod tests {
    use super::*;

    #[test]
    fn tuning_round_trips_through_the_words() {
        let config = Config::builder()
            .failure_rate(1.0)
            .slow_calls(Duration::from_millis(250), 0.125)
            .minimum_calls(100)
            .open_duration(Duration::from_secs(3))
            .open_duration_growth(1.5, Duration::from_secs(3600))
            .half_open_permits(65_535)
            .half_open_max_wait(None)
            .respect_retry_after(false)
            .build()
            .unwrap();
        let t = Tuning::of(&config);
        assert_eq!(unpack(pack(&t)), t);
        let cell = Tunables::new(&t);
        assert_eq!(cell.load(), t);
        assert_eq!(cell.load_judging(), t.judging());
        assert!(cell.timed());
        let plain = Tuning::of(&Config::builder().build().unwrap());
        cell.store(&plain);
        assert_eq!(cell.load(), plain);
        assert!(!cell.timed());
        let mut back = config.clone();
        t.apply(&mut back);
        assert_eq!(format!("{back:?}"), format!("{config:?}"));
        let counted = Config::builder()
            .count_window(10)
            .minimum_calls(5)
            .failure_count(7)
            .build()
            .unwrap();
        let t = Tuning::of(&counted);
        assert_eq!(t.failure_count, 7);
        assert_eq!(Tunables::new(&t).load_judging(), t.judging());
    }
}
