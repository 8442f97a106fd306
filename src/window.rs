//! Sliding windows of outcomes, updated with atomics only (the breaker's windows, the retry
//! budget's request counts).
//!
//! Each window answers "how many calls, failures and slow calls are in the window now" after
//! every record, without a lock and without allocating.

use std::sync::atomic::Ordering::*;

use crate::circuit_breaker::sync::{AtomicU8, AtomicU32, AtomicU64};

use crossbeam_utils::CachePadded;

/// One recorded call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sample {
    pub(crate) failure: bool,
    pub(crate) slow: bool,
}

/// The window's contents at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Reading {
    pub(crate) calls: u64,
    pub(crate) failures: u64,
    pub(crate) slow: u64,
}

/// Three 21-bit fields (calls, failures, slow) in one u64, so one atomic add updates all three
/// (the count window holds at most a million calls, so they never fill).
const FIELD: u32 = 21;
const MASK: u64 = (1 << FIELD) - 1;

const fn pack(calls: u64, failures: u64, slow: u64) -> u64 {
    calls | failures << FIELD | slow << (2 * FIELD)
}

fn field(word: u64, i: u32) -> u64 {
    (word >> (i * FIELD)) & MASK
}

/// The largest count window: the ring counters carry a bias of 2^20 (see [`CountWindow`]).
pub(crate) const MAX_COUNT_WINDOW: u32 = 1_000_000;

/// The last `size` outcomes, a true ring: every record evicts the oldest one.
///
/// Slots hold one byte each. The packed counters are kept equal to the sum of the slots by
/// applying, after each swap, the difference between the new and the evicted value. Two writers
/// that lap the ring can apply their differences out of order, so a field may dip below zero for
/// an instant; every field carries a bias of 2^20 so such a dip never borrows from its neighbour.
pub(crate) struct CountWindow {
    head: CachePadded<AtomicU64>,
    counts: CachePadded<AtomicU64>,
    slots: Box<[AtomicU8]>,
    modulo: FastMod,
}

/// `n % d` by multiplication (Lemire, Kaser and Kurz, "Faster remainder by direct computation",
/// 2019): a hardware division costs more than the rest of a record put together.
#[derive(Debug, Clone, Copy)]
struct FastMod {
    m: u128,
    d: u64,
}

impl FastMod {
    fn new(d: u64) -> Self {
        FastMod {
            m: (u128::MAX / u128::from(d)).wrapping_add(1),
            d,
        }
    }

    #[inline]
    fn rem(self, n: u64) -> u64 {
        let low = self.m.wrapping_mul(u128::from(n));
        // The top 64 bits of the 192-bit product low * d.
        let d = u128::from(self.d);
        let hi = (low >> 64) * d;
        let lo = (low & u128::from(u64::MAX)) * d;
        ((hi + (lo >> 64)) >> 64) as u64
    }
}

const BIAS: u64 = 1 << (FIELD - 1);
const BIASED_ZERO: u64 = pack(BIAS, BIAS, BIAS);
const PRESENT: u8 = 1;
const FAILED: u8 = 2;
const SLOW: u8 = 4;

fn code(s: Sample) -> u8 {
    PRESENT | if s.failure { FAILED } else { 0 } | if s.slow { SLOW } else { 0 }
}

fn weight(code: u8) -> u64 {
    pack(
        u64::from(code & PRESENT),
        u64::from(code & FAILED != 0),
        u64::from(code & SLOW != 0),
    )
}

impl CountWindow {
    pub(crate) fn new(size: u32) -> Self {
        CountWindow {
            head: CachePadded::new(AtomicU64::new(0)),
            counts: CachePadded::new(AtomicU64::new(BIASED_ZERO)),
            slots: (0..size).map(|_| AtomicU8::new(0)).collect(),
            modulo: FastMod::new(u64::from(size)),
        }
    }

    /// Records a sample; returns the new reading when the window changed, with a flag telling
    /// whether the number of calls grew.
    #[inline]
    pub(crate) fn record(&self, sample: Sample) -> Option<(Reading, bool)> {
        let new = code(sample);
        // A success into a full window of successes changes nothing: it does not even move
        // the head (see `full_of_successes`), so nothing shared is written.
        if new == PRESENT && self.full_of_successes() {
            return None;
        }
        let i = self.modulo.rem(self.head.fetch_add(1, Relaxed)) as usize;
        let slot = &self.slots[i];
        // The common case (a success evicting a success) changes nothing: skip the writes so
        // tasks on other cores keep the slots in their caches.
        if slot.load(Relaxed) == new {
            return None;
        }
        let old = slot.swap(new, AcqRel);
        if old == new {
            return None;
        }
        let delta = weight(new).wrapping_sub(weight(old));
        let now = self.counts.fetch_add(delta, AcqRel).wrapping_add(delta);
        Some((self.decode(now), old == 0))
    }

    /// Whether a success would change nothing: the window is full and holds successes only.
    /// Every slot then holds the same value, so where the head stands does not matter and
    /// [`record`](Self::record) does not move it: the common case writes nothing shared (no
    /// head increment for every core to fight over) and the window stays exactly the last
    /// `size` calls. The breaker asks first, to skip its out-of-line record.
    #[inline]
    pub(crate) fn full_of_successes(&self) -> bool {
        // Counts read `size` calls and no failure or slow call: `BIASED_ZERO + size`.
        self.counts.load(Relaxed) == BIASED_ZERO + self.slots.len() as u64
    }

    pub(crate) fn reading(&self) -> Reading {
        self.decode(self.counts.load(Acquire))
    }

    fn decode(&self, word: u64) -> Reading {
        let size = self.slots.len() as u64;
        let f = |i| field(word, i).saturating_sub(BIAS).min(size);
        Reading {
            calls: f(0),
            failures: f(1),
            slow: f(2),
        }
    }

    /// Empties the ring, keeping the counters equal to the sum of the slots.
    pub(crate) fn reset(&self) {
        for slot in self.slots.iter() {
            let old = slot.swap(0, AcqRel);
            if old != 0 {
                self.counts.fetch_sub(weight(old), AcqRel);
            }
        }
    }
}

/// Outcomes of the last `buckets` fixed-length time buckets; memory is O(buckets).
///
/// The ring has `buckets` rounded up to a power of two slots, so that bucket `seq` (time /
/// bucket length) lives at index `seq & mask` (one instruction on every record, where a
/// remainder by the bucket count cost about ten). Only the window's `buckets` newest buckets
/// are ever non-zero: moving the clock forward clears the buckets that fell out of the window
/// and the slots the new buckets take, whoever moves it: a record or a read. Each count is a
/// full 64-bit atomic, so no call rate can overflow a bucket into its neighbour.
///
/// `marked` counts the failures and slow calls in the window (added after the bucket's count,
/// taken off when a bucket is cleared), so that a success can tell in one load that the window
/// holds neither and no rate can be exceeded, without summing the buckets. Racing records and
/// clears may leave it off by the calls in flight for an instant, never at zero while a failure
/// or slow call whose record has finished is in the window: a failure in flight judges the
/// window itself once it is counted.
pub(crate) struct TimeWindow {
    bucket_nanos: u64,
    current: CachePadded<AtomicU64>,
    marked: CachePadded<AtomicU64>,
    /// The window's length in buckets.
    span: u64,
    /// The ring's length (a power of two, at least `span`) less one.
    mask: u64,
    buckets: Box<[Bucket]>,
}

/// One bucket's counts, side by side so a sum walks one array.
#[derive(Default)]
struct Bucket {
    calls: AtomicU64,
    failures: AtomicU64,
    slow: AtomicU64,
}

impl TimeWindow {
    pub(crate) fn new(bucket_nanos: u64, buckets: u32) -> Self {
        TimeWindow {
            bucket_nanos,
            current: CachePadded::new(AtomicU64::new(0)),
            marked: CachePadded::new(AtomicU64::new(0)),
            span: u64::from(buckets),
            mask: u64::from(buckets.next_power_of_two()) - 1,
            buckets: (0..buckets.next_power_of_two())
                .map(|_| Bucket::default())
                .collect(),
        }
    }

    /// The bucket number of `now_nanos`, dividing only when the clock left the current bucket.
    #[inline]
    fn seq(&self, now_nanos: u64) -> u64 {
        let current = self.current.load(Acquire);
        let start = current.wrapping_mul(self.bucket_nanos);
        if now_nanos >= start && now_nanos - start < self.bucket_nanos {
            current
        } else {
            now_nanos / self.bucket_nanos
        }
    }

    #[inline]
    pub(crate) fn record(&self, now_nanos: u64, sample: Sample) -> Reading {
        self.add(now_nanos, sample);
        self.sum()
    }

    /// Records a sample; returns the new reading, or `None` when the window holds no failure
    /// and no slow call (nothing to judge: no rate can be exceeded).
    #[inline(always)]
    pub(crate) fn record_judged(&self, now_nanos: u64, sample: Sample) -> Option<Reading> {
        self.add(now_nanos, sample);
        if !sample.failure && !sample.slow && self.marked.load(Acquire) == 0 {
            return None;
        }
        Some(self.sum())
    }

    #[inline(always)]
    fn add(&self, now_nanos: u64, sample: Sample) {
        let seq = self.seq(now_nanos);
        let current = self.advance(seq);
        // A clock read on another core can lag this one; a sample older than the whole window
        // has nowhere to go.
        if seq + self.span > current {
            let b = &self.buckets[(seq & self.mask) as usize];
            b.calls.fetch_add(1, AcqRel);
            if sample.failure {
                b.failures.fetch_add(1, AcqRel);
            }
            if sample.slow {
                b.slow.fetch_add(1, AcqRel);
            }
            let marks = u64::from(sample.failure) + u64::from(sample.slow);
            if marks != 0 {
                self.marked.fetch_add(marks, AcqRel);
            }
        }
    }

    pub(crate) fn reading(&self, now_nanos: u64) -> Reading {
        self.advance(self.seq(now_nanos));
        self.sum()
    }

    pub(crate) fn reset(&self) {
        for i in 0..self.buckets.len() {
            self.clear(i);
        }
    }

    fn clear(&self, i: usize) {
        let b = &self.buckets[i];
        b.calls.store(0, Release);
        let marks = b
            .failures
            .swap(0, AcqRel)
            .wrapping_add(b.slow.swap(0, AcqRel));
        if marks != 0 {
            self.marked.fetch_sub(marks, AcqRel);
        }
    }

    /// Moves the window's head to `seq` if it is behind, clearing expired buckets; returns the
    /// head.
    #[inline]
    fn advance(&self, seq: u64) -> u64 {
        let mut current = self.current.load(Acquire);
        while seq > current {
            match self
                .current
                .compare_exchange_weak(current, seq, AcqRel, Acquire)
            {
                Ok(_) => {
                    // The buckets that fell out, (current - span, seq - span], and the slots
                    // of the new ones, (current, seq]: no slot of either is one of the
                    // buckets still in the window, (seq - span, current] (they are less than
                    // `span` apart, and the ring is at least that long). Each range is cut to
                    // its last ring's length: the slots repeat beyond.
                    let ring = self.mask + 1;
                    let out_end = (seq + 1).saturating_sub(self.span);
                    let out = (current + 1)
                        .saturating_sub(self.span)
                        .max(out_end.saturating_sub(ring))..out_end;
                    let new = (current + 1).max((seq + 1).saturating_sub(ring))..seq + 1;
                    for s in out.chain(new) {
                        self.clear((s & self.mask) as usize);
                    }
                    return seq;
                }
                Err(seen) => current = seen,
            }
        }
        current
    }

    /// The failures and slow calls counted for the fast path (a test hook).
    #[cfg(test)]
    pub(crate) fn marks(&self) -> u64 {
        self.marked.load(Acquire)
    }

    // Out of line: a success in a window without failures never sums.
    #[inline(never)]
    fn sum(&self) -> Reading {
        let mut r = Reading::default();
        for b in self.buckets.iter() {
            r.calls += b.calls.load(Acquire);
            r.failures += b.failures.load(Acquire);
            r.slow += b.slow.load(Acquire);
        }
        r
    }
}

/// Failures in a row.
pub(crate) struct Consecutive {
    failures: CachePadded<AtomicU32>,
}

impl Consecutive {
    pub(crate) fn new() -> Self {
        Consecutive {
            failures: CachePadded::new(AtomicU32::new(0)),
        }
    }

    #[inline]
    pub(crate) fn record(&self, failure: bool) -> Option<u64> {
        if failure {
            Some(u64::from(
                self.failures.fetch_add(1, AcqRel).saturating_add(1),
            ))
        } else {
            // Only write when there is something to clear.
            if self.failures.load(Relaxed) != 0 {
                self.failures.store(0, Release);
            }
            None
        }
    }

    pub(crate) fn get(&self) -> u64 {
        u64::from(self.failures.load(Acquire))
    }

    /// Whether no failure run is under way (a success has nothing to clear).
    #[inline]
    pub(crate) fn is_clear(&self) -> bool {
        self.failures.load(Relaxed) == 0
    }

    pub(crate) fn reset(&self) {
        self.failures.store(0, Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: Sample = Sample {
        failure: false,
        slow: false,
    };
    const FAIL: Sample = Sample {
        failure: true,
        slow: false,
    };
    const SLOW_OK: Sample = Sample {
        failure: false,
        slow: true,
    };

    #[test]
    fn count_window_is_a_true_ring() {
        let w = CountWindow::new(4);
        for _ in 0..4 {
            w.record(FAIL);
        }
        assert_eq!(w.reading().failures, 4);
        // After a long run of successes the old failures are gone: no reset-on-transition bug.
        for _ in 0..1000 {
            w.record(OK);
        }
        assert_eq!(
            w.reading(),
            Reading {
                calls: 4,
                failures: 0,
                slow: 0
            }
        );
        assert_eq!(w.record(FAIL).unwrap().0.failures, 1);
        assert_eq!(w.record(SLOW_OK).unwrap().0.slow, 1);
        w.reset();
        assert_eq!(w.reading(), Reading::default());
        assert!(w.record(OK).unwrap().1, "calls grew after reset");
    }

    /// A success into a window full of successes is skipped; the window must still read
    /// exactly the last `size` samples afterwards, whatever comes next.
    #[test]
    fn skipped_successes_keep_the_window_the_last_calls() {
        let mut rng = fastrand::Rng::with_seed(11);
        for size in 1..=13u32 {
            let w = CountWindow::new(size);
            let mut model = std::collections::VecDeque::new();
            let mut skipped = 0;
            for _ in 0..4000 {
                // Mostly successes, so that full windows of them come up often.
                let sample = match rng.u8(0..10) {
                    0 => FAIL,
                    1 => SLOW_OK,
                    _ => OK,
                };
                let full_before = w.full_of_successes();
                let changed = w.record(sample);
                if sample == OK && full_before {
                    assert_eq!(
                        changed, None,
                        "size {size}: a skipped success changes nothing"
                    );
                    skipped += 1;
                }
                model.push_back(sample);
                if model.len() > size as usize {
                    model.pop_front();
                }
                let count = |f: fn(&Sample) -> bool| model.iter().filter(|s| f(s)).count() as u64;
                let expected = Reading {
                    calls: model.len() as u64,
                    failures: count(|s| s.failure),
                    slow: count(|s| s.slow),
                };
                assert_eq!(w.reading(), expected, "size {size}");
                let full = model.len() == size as usize && expected.failures + expected.slow == 0;
                assert_eq!(w.full_of_successes(), full, "size {size}");
            }
            assert!(
                skipped > 100,
                "size {size}: the skip was taken {skipped} times"
            );
        }
    }

    #[test]
    fn fast_modulo_matches_the_remainder() {
        let mut rng = fastrand::Rng::with_seed(7);
        for d in [1u64, 2, 3, 7, 10, 100, 999, 65_536, 1_000_000] {
            let f = FastMod::new(d);
            for n in [
                0,
                1,
                d - 1,
                d,
                d + 1,
                u64::from(u32::MAX),
                u64::MAX - 1,
                u64::MAX,
            ] {
                assert_eq!(f.rem(n), n % d, "{n} % {d}");
            }
            for _ in 0..10_000 {
                let n = rng.u64(..);
                assert_eq!(f.rem(n), n % d, "{n} % {d}");
            }
        }
    }

    #[test]
    fn time_window_matches_a_model_for_any_bucket_count() {
        // The ring is rounded up to a power of two; the window must still hold exactly the
        // last `buckets` buckets, across steps, jumps within the ring and beyond it.
        for buckets in [1u32, 2, 3, 5, 7, 8, 10, 13] {
            let w = TimeWindow::new(100, buckets);
            let span = u64::from(buckets);
            let mut kept: Vec<(u64, bool)> = Vec::new();
            let mut now = 0u64;
            let mut x = 0x9e37_79b9_u64 ^ u64::from(buckets);
            for _ in 0..2_000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                now += match x % 10 {
                    0..=5 => x % 60,
                    6..=8 => x % 700,
                    _ => x % 4_000,
                };
                let failure = x.is_multiple_of(3);
                w.record(
                    now,
                    Sample {
                        failure,
                        slow: false,
                    },
                );
                kept.push((now / 100, failure));
                let head = now / 100;
                kept.retain(|&(seq, _)| seq + span > head);
                let r = w.reading(now);
                assert_eq!(r.calls, kept.len() as u64, "{buckets} buckets at {now}");
                let failures = kept.iter().filter(|k| k.1).count() as u64;
                assert_eq!(r.failures, failures, "{buckets} buckets at {now}");
                assert_eq!(w.marks(), failures, "{buckets} buckets at {now}");
            }
        }
    }

    #[test]
    fn time_window_expires_without_calls() {
        let w = TimeWindow::new(1_000, 10);
        w.record(500, FAIL);
        w.record(9_500, OK);
        assert_eq!(w.reading(9_999).calls, 2);
        assert_eq!(w.reading(10_000).calls, 1, "bucket 0 left the window");
        assert_eq!(w.reading(19_999).calls, 0);
        // A jump of many windows clears everything once.
        w.record(1_000_000, FAIL);
        assert_eq!(w.reading(1_000_000).failures, 1);
        // A sample older than the window is dropped.
        w.record(10, FAIL);
        assert_eq!(w.reading(1_000_000).failures, 1);
    }

    #[test]
    fn time_window_successes_skip_the_sum_only_without_failures() {
        let w = TimeWindow::new(1_000, 10);
        assert_eq!(w.record_judged(100, OK), None, "nothing to judge");
        let r = w
            .record_judged(200, SLOW_OK)
            .expect("a slow call is judged");
        assert_eq!((r.calls, r.slow), (2, 1));
        let r = w.record_judged(300, OK).expect("a slow call in the window");
        assert_eq!(r.calls, 3);
        w.record_judged(400, FAIL).expect("a failure is judged");
        assert_eq!(w.marks(), 2);
        // Both left the window with bucket 0: the count follows.
        assert_eq!(w.record_judged(10_500, OK), None);
        assert_eq!(w.marks(), 0);
        w.record_judged(10_600, FAIL);
        w.reset();
        assert_eq!((w.marks(), w.record_judged(10_700, OK)), (0, None));
    }

    #[test]
    fn time_buckets_do_not_overflow() {
        let w = TimeWindow::new(1_000_000_000, 2);
        for _ in 0..3_000_000 {
            w.record(10, OK);
        }
        let r = w.record(10, FAIL);
        assert_eq!((r.calls, r.failures, r.slow), (3_000_001, 1, 0));
    }

    #[test]
    fn consecutive_counts_runs() {
        let c = Consecutive::new();
        assert_eq!(c.record(true), Some(1));
        assert_eq!(c.record(true), Some(2));
        assert_eq!(c.record(false), None);
        assert_eq!(c.get(), 0);
        assert_eq!(c.record(true), Some(1));
    }
}
