//! `failure_threshold` is an absolute number of failures over a count window, window sizes are
//! blamed on the window, and every breaker duration is bounded.

use std::time::Duration;

use proptest::prelude::*;
use tokio::time::Instant;
use tower_rampart::{
    MAX_DURATION,
    circuit_breaker::{Breaker, Config, State},
    classify::Outcome,
    config::BreakerSettings,
};

fn settings(v: serde_json::Value) -> BreakerSettings {
    serde_json::from_value(v).expect("valid settings")
}

/// The design document's snippet: "5 consecutive failures to open" over a window of 10.
fn five_of_ten() -> Breaker {
    let s = settings(serde_json::json!({
        "failure_threshold": 5,
        "sliding_window_size": 10,
        "minimum_calls": 5,
    }));
    Breaker::new(s.config().expect("valid"))
}

/// Records `outcomes` (true: failure); returns the state after each.
fn run(b: &Breaker, outcomes: &[bool]) -> Vec<State> {
    let t = Instant::now();
    outcomes
        .iter()
        .map(|&failed| {
            if let Ok(p) = b.try_acquire(|| t) {
                let o = if failed {
                    Outcome::FAILURE
                } else {
                    Outcome::Success
                };
                b.record(p, &o, || t);
            }
            b.state()
        })
        .collect()
}

/// Issue #14 item 14: two successes and three failures used to open it (a 50 % rate from the
/// fifth call on).
#[test]
fn failure_threshold_five_is_not_opened_by_three_failures() {
    let b = five_of_ten();
    run(&b, &[false, false, true, true, true]);
    assert_eq!(b.state(), State::Closed, "3 failures of 5 are fewer than 5");
    run(&b, &[true]);
    assert_eq!(b.state(), State::Closed, "4 failures");
    run(&b, &[false, false, true]);
    assert_eq!(b.state(), State::Open, "5 failures in the last 10 calls");
}

#[test]
fn failure_threshold_five_opens_on_five_in_a_row() {
    let b = five_of_ten();
    assert_eq!(
        run(&b, &[true; 5]),
        [
            State::Closed,
            State::Closed,
            State::Closed,
            State::Closed,
            State::Open
        ]
    );
    // After a long run of successes too.
    let b = five_of_ten();
    run(&b, &[false; 37]);
    run(&b, &[true; 4]);
    assert_eq!(b.state(), State::Closed);
    run(&b, &[true]);
    assert_eq!(b.state(), State::Open);
}

#[test]
fn the_builder_counts_failures_over_a_count_window() {
    let config = Config::builder()
        .count_window(10)
        .minimum_calls(5)
        .failure_count(5)
        .build()
        .unwrap();
    let b = Breaker::new(config);
    run(&b, &[false, false, true, true, true, true]);
    assert_eq!(b.state(), State::Closed);
    run(&b, &[true]);
    assert_eq!(b.state(), State::Open);

    let err = Config::builder()
        .count_window(10)
        .minimum_calls(5)
        .failure_count(11)
        .build()
        .unwrap_err();
    assert_eq!(err.setting(), Some("failure_count"));
    assert!(err.to_string().contains("1..=10"), "{err}");
    let err = Config::builder()
        .time_window(Duration::from_secs(10), 10)
        .failure_count(5)
        .build()
        .unwrap_err();
    assert_eq!(err.setting(), Some("failure_count"), "{err}");
}

#[test]
fn a_failure_count_is_retuned_in_place() {
    let cfg = |n| {
        Config::builder()
            .count_window(10)
            .minimum_calls(3)
            .failure_count(n)
            .build()
            .unwrap()
    };
    let b = Breaker::new(cfg(5));
    run(&b, &[true, true, false]);
    b.retune(&cfg(3)).unwrap();
    run(&b, &[false]);
    assert_eq!(b.state(), State::Closed, "2 failures, no new failure yet");
    run(&b, &[true]);
    assert_eq!(
        b.state(),
        State::Open,
        "3 failures in the window, the new count"
    );
    // From a count back to a rate: the same window, a retune.
    let rate = Config::builder()
        .count_window(10)
        .minimum_calls(3)
        .failure_rate(0.5)
        .build()
        .unwrap();
    assert!(b.retune(&rate).is_ok());
}

/// A time window is judged at every call: the success that brings it to the minimum number of
/// calls opens it when the failures already there are over the rate (the success path skips the
/// judgement only when the window holds no failure and no slow call).
#[test]
fn a_time_window_opens_on_the_success_that_reaches_the_minimum() {
    let b = Breaker::new(
        Config::builder()
            .time_window(Duration::from_secs(10), 10)
            .minimum_calls(4)
            .failure_rate(0.5)
            .build()
            .unwrap(),
    );
    use State::{Closed, Open};
    assert_eq!(
        run(&b, &[true, true, true, false]),
        [Closed, Closed, Closed, Open]
    );
}

/// The smallest rates stay rates: a window of successes is under any of them.
#[test]
fn a_tiny_failure_rate_is_not_opened_by_successes() {
    for builder in [
        Config::builder().count_window(10),
        Config::builder().time_window(Duration::from_secs(10), 10),
    ] {
        let b = Breaker::new(
            builder
                .minimum_calls(2)
                .failure_rate(1e-9)
                .slow_calls(Duration::from_secs(60), 1e-9)
                .build()
                .unwrap(),
        );
        assert!(run(&b, &[false; 20]).iter().all(|s| *s == State::Closed));
        assert_eq!(run(&b, &[true]), [State::Open]);
    }
}

#[test]
fn failure_threshold_above_the_window_is_refused() {
    let s = settings(serde_json::json!({"failure_threshold": 11, "sliding_window_size": 10}));
    let err = s.config().unwrap_err();
    assert!(err.to_string().contains("failure_threshold"), "{err}");
    assert!(err.to_string().contains("1..=10"), "{err}");
}

/// Issue #14 item 16 (one case): a window of 0 is blamed on the window.
#[test]
fn a_window_of_zero_is_blamed_on_the_window() {
    let s = settings(serde_json::json!({"failure_threshold": 5, "sliding_window_size": 0}));
    let err = s.config().unwrap_err().to_string();
    assert!(err.contains("sliding_window_size"), "{err}");
    assert!(err.contains("must be at least 1"), "{err}");
    assert!(!err.contains("1..=0"), "{err}");
    let s = settings(serde_json::json!({"count_window": 0}));
    let err = s.config().unwrap_err().to_string();
    assert!(
        err.contains("count_window") && err.contains("must be at least 1"),
        "{err}"
    );
}

/// Issue #14 item 1, for the breaker: every duration is bounded at build time, under its
/// configuration-file name, and the open state never overflows the clock.
#[test]
fn breaker_durations_are_bounded_at_build_time() {
    let year = MAX_DURATION;
    let over = year + Duration::from_secs(1);
    let cases: [(&str, tower_rampart::circuit_breaker::Builder); 6] = [
        ("open_duration", Config::builder().open_duration(over)),
        (
            "max_open_duration",
            Config::builder().open_duration_growth(2.0, Duration::MAX),
        ),
        (
            "time_window",
            Config::builder().time_window(Duration::MAX, 10),
        ),
        (
            "slow_call_duration",
            Config::builder().slow_calls(Duration::MAX, 0.5),
        ),
        (
            "half_open_max_wait",
            Config::builder().half_open_max_wait(Duration::MAX),
        ),
        (
            "open_duration",
            Config::builder()
                .open_duration(Duration::MAX)
                .open_duration_growth(1.0, Duration::MAX),
        ),
    ];
    for (field, builder) in cases {
        let err = builder.build().unwrap_err();
        assert_eq!(err.setting(), Some(field), "{err}");
        assert!(err.to_string().contains("at most one year"), "{err}");
    }
    // In a file: refused when read, or when built under the key the operator wrote.
    let read = serde_json::from_value::<BreakerSettings>(
        serde_json::json!({"recovery_timeout": "400days"}),
    );
    let err = match read {
        Err(e) => e.to_string(),
        Ok(s) => {
            let err = s.config().unwrap_err().to_string();
            assert!(err.contains("recovery_timeout"), "{err}");
            err
        }
    };
    assert!(err.contains("one year"), "{err}");

    // The longest accepted durations run without overflow.
    let b = Breaker::new(
        Config::builder()
            .consecutive_failures(1)
            .open_duration(year)
            .open_duration_growth(2.0, year)
            .half_open_max_wait(year)
            .build()
            .unwrap(),
    );
    let t = Instant::now();
    let p = b.try_acquire(|| t).unwrap();
    b.record(
        p,
        &Outcome::Failure {
            retry_after: Some(Duration::MAX),
        },
        || t,
    );
    let s = b.snapshot(t + Duration::from_secs(1));
    assert_eq!(s.state, State::Open);
    assert!(s.retry_after.unwrap() <= year);
}

/// A model of the rule: open once `minimum` calls are in and at least `n` of the last `w`
/// calls failed.
fn model(w: usize, n: usize, minimum: usize, outcomes: &[bool]) -> Option<usize> {
    for i in 0..outcomes.len() {
        let start = (i + 1).saturating_sub(w);
        let window = &outcomes[start..=i];
        let failures = window.iter().filter(|f| **f).count();
        if window.len() >= minimum && failures >= n {
            return Some(i);
        }
    }
    None
}

proptest! {
    #[test]
    fn failure_threshold_opens_exactly_when_the_model_says(
        w in 1u32..12,
        n_seed in 0u32..100,
        outcomes in proptest::collection::vec(any::<bool>(), 0..40),
    ) {
        let n = 1 + n_seed % w;
        let s = settings(serde_json::json!({"failure_threshold": n, "sliding_window_size": w}));
        let b = Breaker::new(s.config().unwrap());
        let states = run(&b, &outcomes);
        let opened = states.iter().position(|s| *s == State::Open);
        prop_assert_eq!(opened, model(w as usize, n as usize, n as usize, &outcomes));
    }
}

/// With slow calls timed, a fast success into a full window of successes changes nothing and
/// is skipped; the window still holds exactly the last calls afterwards: one failure among the
/// last four stays under 50 %, a second reaches it, and fast successes then push both out.
#[test]
fn timed_successes_into_a_full_clean_window_keep_it_the_last_calls() {
    let b = Breaker::new(
        Config::builder()
            .count_window(4)
            .minimum_calls(4)
            .failure_rate(0.5)
            .slow_calls(Duration::from_secs(1), 1.0)
            .build()
            .unwrap(),
    );
    let t = Instant::now();
    let call = |failed: bool| {
        let p = b.try_acquire(|| t).expect("closed");
        let o = if failed {
            Outcome::FAILURE
        } else {
            Outcome::Success
        };
        // Fast: 1 ms, far under the 1 s slow-call duration.
        b.record(p, &o, || t + Duration::from_millis(1));
    };
    for _ in 0..1_000 {
        call(false);
    }
    let s = b.snapshot(t);
    assert_eq!((s.calls, s.failures, s.slow_calls), (4, 0, 0));
    call(true);
    assert_eq!(b.state(), State::Closed, "1 failure of the last 4");
    for _ in 0..3 {
        call(false);
    }
    call(true);
    assert_eq!(
        b.state(),
        State::Closed,
        "the first failure left: 1 of the last 4"
    );
    call(true);
    assert_eq!(b.state(), State::Open, "2 failures of the last 4");
}
