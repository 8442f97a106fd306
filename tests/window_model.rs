//! Property tests: the lock-free windows against naive reference models.

use std::{collections::VecDeque, time::Duration};

use proptest::prelude::*;
use tokio::time::Instant;
use tower_rampart::{
    circuit_breaker::{Breaker, Builder, Config, State},
    classify::Outcome,
};

const SLOW_MS: u64 = 100;

/// One call: idle gap before it, how long it took, whether it failed.
#[derive(Debug, Clone, Copy)]
struct Call {
    gap_ms: u64,
    took_ms: u64,
    failed: bool,
}

fn calls(max_gap: u64) -> impl Strategy<Value = Vec<Call>> {
    prop::collection::vec(
        (
            0..max_gap,
            prop_oneof![Just(0u64), 0..300u64],
            any::<bool>(),
        )
            .prop_map(|(gap_ms, took_ms, failed)| Call {
                gap_ms,
                took_ms,
                failed,
            }),
        1..400,
    )
}

impl Call {
    /// What a window keeps of the call: whether it failed, whether it was slow.
    fn sample(self) -> (bool, bool) {
        (self.failed, self.took_ms >= SLOW_MS)
    }
}

fn outcome(failed: bool) -> Outcome {
    if failed {
        Outcome::FAILURE
    } else {
        Outcome::Success
    }
}

/// One call through `b`, admitted at `start` and recorded at `end`.
fn call(b: &Breaker, start: Instant, end: Instant, failed: bool) {
    let permit = b.try_acquire(|| start).unwrap();
    b.record(permit, &outcome(failed), || end);
}

/// A breaker with `window` that counts every call (slow from `SLOW_MS`) and never changes
/// state, and the instant it was made (after the breaker, so no sample lands before its window).
fn recording(window: Builder) -> (Breaker, Instant) {
    // On a frozen clock the breaker's epoch and `t0` are one instant, so the model's bucket
    // boundaries are the breaker's (on a loaded machine they drifted apart by milliseconds).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let _clock = rt.enter();
    let b = Breaker::new(
        window
            .minimum_calls(1)
            .slow_calls(Duration::from_millis(SLOW_MS), 1.0)
            .build()
            .unwrap(),
    );
    let t0 = Instant::now();
    b.metrics_only(t0); // record everything, never change state
    (b, t0)
}

/// Makes `c` through `b` after its gap from `*now`, which moves to the call's start; returns
/// when the call ended.
fn make(b: &Breaker, now: &mut Instant, c: Call) -> Instant {
    *now += Duration::from_millis(c.gap_ms);
    let end = *now + Duration::from_millis(c.took_ms);
    call(b, *now, end, c.failed);
    end
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Counts {
    calls: u64,
    failures: u64,
    slow: u64,
}

fn counts<'a>(samples: impl Iterator<Item = &'a (bool, bool)>) -> Counts {
    let mut c = Counts::default();
    for (failed, slow) in samples {
        c.calls += 1;
        c.failures += u64::from(*failed);
        c.slow += u64::from(*slow);
    }
    c
}

fn observed(b: &Breaker, at: Instant) -> Counts {
    let s = b.snapshot(at);
    Counts {
        calls: s.calls,
        failures: s.failures,
        slow: s.slow_calls,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn count_window_matches_a_deque(size in 1u32..40, seq in calls(50)) {
        let (b, t0) = recording(Config::builder().count_window(size));
        let mut model: VecDeque<(bool, bool)> = VecDeque::new();
        let mut now = t0;
        for c in seq {
            make(&b, &mut now, c);
            model.push_back(c.sample());
            if model.len() > size as usize {
                model.pop_front();
            }
            prop_assert_eq!(observed(&b, now), counts(model.iter()));
        }
    }

    #[test]
    fn time_window_matches_a_log(buckets in 1u32..12, bucket_ms in 1u64..400, seq in calls(600)) {
        let window = Duration::from_millis(bucket_ms * u64::from(buckets));
        let (b, t0) = recording(Config::builder().time_window(window, buckets));
        let n = u64::from(buckets);
        let seq_of = |t: Instant| (t - t0).as_millis() as u64 / bucket_ms;
        // The model: every accepted sample with its bucket number, and the newest bucket seen.
        let mut log: Vec<(u64, (bool, bool))> = Vec::new();
        let mut head = 0u64;
        let mut now = t0;
        for c in seq {
            let end = make(&b, &mut now, c);
            let s = seq_of(end);
            head = head.max(s);
            if s + n > head {
                log.push((s, c.sample()));
            }
            // Read at the call's start (earlier than its end): reads never move time back.
            head = head.max(seq_of(now));
            let expected = counts(log.iter().filter(|(s, _)| s + n > head).map(|(_, x)| x));
            prop_assert_eq!(observed(&b, now), expected);
        }
    }

    #[test]
    fn count_window_opens_exactly_when_the_model_says(
        size in 1u32..30,
        min_frac in 0.1f64..=1.0,
        rate in 0.05f64..=1.0,
        fails in prop::collection::vec(any::<bool>(), 1..300),
    ) {
        let minimum = ((f64::from(size) * min_frac).ceil() as u32).clamp(1, size);
        let b = Breaker::new(
            Config::builder()
                .count_window(size)
                .minimum_calls(minimum)
                .failure_rate(rate)
                .build()
                .unwrap(),
        );
        let t = Instant::now();
        let ppm = (rate * 1e6).round() as u64;
        let mut model: VecDeque<bool> = VecDeque::new();
        for f in fails {
            call(&b, t, t, f);
            model.push_back(f);
            if model.len() > size as usize {
                model.pop_front();
            }
            let calls = model.len() as u64;
            let failures = model.iter().filter(|f| **f).count() as u64;
            let open = calls >= u64::from(minimum) && failures * 1_000_000 >= ppm * calls;
            prop_assert_eq!(b.state(), if open { State::Open } else { State::Closed });
            if open {
                break;
            }
        }
    }
}
