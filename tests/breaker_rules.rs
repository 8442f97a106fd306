//! Every rule of the breaker state machine, on fake time.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;
use tower_rampart::{
    circuit_breaker::{Breaker, Builder, Config, EventKind, State},
    classify::Outcome,
};

const OK: Outcome = Outcome::Success;
const FAIL: Outcome = Outcome::FAILURE;

/// A breaker and a fake clock that starts after the breaker's own epoch.
struct Rig {
    b: Breaker,
    t0: Instant,
}

impl Rig {
    fn new(builder: Builder) -> Rig {
        let b = Breaker::new(builder.build().expect("valid config"));
        Rig {
            b,
            t0: Instant::now(),
        }
    }

    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    /// One call admitted and finished at `ms`.
    fn call(&self, ms: u64, outcome: Outcome) -> Result<(), State> {
        let t = self.at(ms);
        let permit = self.b.try_acquire(|| t).map_err(|r| r.state())?;
        self.b.record(permit, &outcome, || t);
        Ok(())
    }

    /// One call admitted at `start` that took `took` ms.
    fn timed(&self, start: u64, took: u64, outcome: Outcome) {
        let (s, e) = (self.at(start), self.at(start + took));
        let permit = self.b.try_acquire(|| s).expect("admitted");
        self.b.record(permit, &outcome, || e);
    }

    fn state(&self) -> State {
        self.b.state()
    }
}

fn rate_cfg() -> Builder {
    Config::builder()
        .count_window(10)
        .minimum_calls(10)
        .failure_rate(0.5)
        .open_duration(Duration::from_secs(1))
        .half_open_permits(3)
}

#[test]
fn failure_rate_threshold_is_inclusive_and_waits_for_minimum() {
    let r = Rig::new(rate_cfg());
    for _ in 0..5 {
        r.call(0, FAIL).unwrap();
    }
    for _ in 0..4 {
        r.call(0, OK).unwrap();
    }
    assert_eq!(r.state(), State::Closed, "9 calls are below the minimum");
    // The tenth call is a success, but it makes the rate known: 5/10 = 50 % >= 50 %.
    r.call(0, OK).unwrap();
    assert_eq!(r.state(), State::Open);
}

#[test]
fn just_below_the_threshold_stays_closed() {
    let r = Rig::new(rate_cfg());
    for i in 0..100 {
        // 4 failures in every 10 calls: 40 %.
        r.call(0, if i % 10 < 4 { FAIL } else { OK }).unwrap();
    }
    assert_eq!(r.state(), State::Closed);
    let s = r.b.snapshot(r.at(0));
    assert_eq!((s.calls, s.failures), (10, 4));
    assert_eq!(s.failure_rate, Some(0.4));
}

#[test]
fn count_window_forgets_old_failures() {
    let r = Rig::new(rate_cfg());
    for _ in 0..4 {
        r.call(0, FAIL).unwrap();
    }
    for _ in 0..1000 {
        r.call(0, OK).unwrap();
    }
    // With a true ring, five new failures out of ten are enough; a window that never evicted
    // would need hundreds.
    for _ in 0..5 {
        r.call(0, FAIL).unwrap();
    }
    assert_eq!(r.state(), State::Open);
}

#[test]
fn slow_calls_alone_open_the_breaker() {
    let r = Rig::new(
        Config::builder()
            .count_window(4)
            .minimum_calls(4)
            .failure_rate(1.0)
            .slow_calls(Duration::from_millis(100), 0.5),
    );
    r.timed(0, 150, OK);
    r.timed(0, 10, OK);
    r.timed(0, 99, OK);
    assert_eq!(r.state(), State::Closed);
    r.timed(0, 100, OK); // exactly the slow duration counts as slow
    assert_eq!(r.state(), State::Open);
    let s = r.b.snapshot(r.at(200));
    assert_eq!((s.failures, s.slow_calls), (0, 2));
}

#[test]
fn open_rejects_with_time_left_then_probes_lazily() {
    let r = Rig::new(rate_cfg());
    for _ in 0..10 {
        r.call(0, FAIL).unwrap();
    }
    let rej = r.b.try_acquire(|| r.at(300)).unwrap_err();
    assert_eq!(rej.state(), State::Open);
    assert_eq!(rej.retry_after(), Some(Duration::from_millis(700)));
    assert_eq!(
        r.b.snapshot(r.at(300)).retry_after,
        Some(Duration::from_millis(700))
    );
    // Time passing alone changes nothing...
    assert_eq!(r.state(), State::Open);
    // ...the first call after the open duration turns the breaker half-open.
    let probe = r.b.try_acquire(|| r.at(1000)).expect("probe");
    assert!(probe.is_probe());
    assert_eq!(r.state(), State::HalfOpen);
    r.b.release(probe);
    assert_eq!(r.b.snapshot(r.at(1000)).not_permitted, 1);
}

#[test]
fn exactly_n_probes_then_close_with_fresh_metrics() {
    let r = Rig::new(rate_cfg());
    for _ in 0..10 {
        r.call(0, FAIL).unwrap();
    }
    let t = r.at(1000);
    let permits: Vec<_> = (0..3)
        .map(|_| r.b.try_acquire(|| t).expect("probe"))
        .collect();
    let extra = r.b.try_acquire(|| t).unwrap_err();
    assert_eq!(extra.state(), State::HalfOpen);
    for p in permits {
        r.b.record(p, &OK, || t);
    }
    assert_eq!(r.state(), State::Closed);
    let s = r.b.snapshot(t);
    assert_eq!(
        (s.calls, s.failures),
        (0, 0),
        "closing starts a fresh window"
    );
}

#[test]
fn half_open_failure_rate_reopens() {
    let r = Rig::new(rate_cfg());
    for _ in 0..10 {
        r.call(0, FAIL).unwrap();
    }
    let t = r.at(1000);
    let p: Vec<_> = (0..3).map(|_| r.b.try_acquire(|| t).unwrap()).collect();
    let mut p = p.into_iter();
    r.b.record(p.next().unwrap(), &FAIL, || t);
    r.b.record(p.next().unwrap(), &OK, || t);
    assert_eq!(
        r.state(),
        State::HalfOpen,
        "no decision before all three results"
    );
    r.b.record(p.next().unwrap(), &FAIL, || t);
    assert_eq!(r.state(), State::Open, "2/3 failed");

    // One failure in three is below 50 %: closed.
    let t = r.at(2000);
    let p: Vec<_> = (0..3).map(|_| r.b.try_acquire(|| t).unwrap()).collect();
    for (i, permit) in p.into_iter().enumerate() {
        r.b.record(permit, if i == 0 { &FAIL } else { &OK }, || t);
    }
    assert_eq!(r.state(), State::Closed);
}

#[test]
fn released_and_ignored_probes_return_their_permits() {
    let r = Rig::new(rate_cfg().half_open_permits(1));
    for _ in 0..10 {
        r.call(0, FAIL).unwrap();
    }
    let t = r.at(1000);
    let p = r.b.try_acquire(|| t).unwrap();
    assert!(r.b.try_acquire(|| t).is_err());
    r.b.release(p); // the caller dropped its future
    let p = r.b.try_acquire(|| t).expect("permit came back");
    r.b.record(p, &Outcome::Ignore, || t);
    assert_eq!(r.state(), State::HalfOpen);
    let p =
        r.b.try_acquire(|| t)
            .expect("an ignored outcome returns the permit too");
    r.b.record(p, &OK, || t);
    assert_eq!(r.state(), State::Closed);
}

#[test]
fn half_open_max_wait_reopens() {
    let r = Rig::new(
        rate_cfg()
            .half_open_permits(1)
            .half_open_max_wait(Duration::from_secs(5)),
    );
    for _ in 0..10 {
        r.call(0, FAIL).unwrap();
    }
    let stuck = r.b.try_acquire(|| r.at(1000)).unwrap();
    assert_eq!(
        r.b.try_acquire(|| r.at(5999)).unwrap_err().state(),
        State::HalfOpen
    );
    let rej = r.b.try_acquire(|| r.at(6000)).unwrap_err();
    assert_eq!(rej.state(), State::Open, "no decision within the max wait");
    // The stuck probe's late result changes nothing.
    r.b.record(stuck, &OK, || r.at(6100));
    assert_eq!(r.state(), State::Open);
}

#[test]
fn open_duration_grows_and_resets_on_close() {
    let r = Rig::new(
        Config::builder()
            .consecutive_failures(1)
            .open_duration(Duration::from_secs(1))
            .open_duration_growth(2.0, Duration::from_secs(3))
            .half_open_permits(1),
    );
    let retry_after = |ms| {
        r.b.try_acquire(|| r.at(ms))
            .unwrap_err()
            .retry_after()
            .unwrap()
    };
    r.call(0, FAIL).unwrap();
    assert_eq!(retry_after(0), Duration::from_secs(1));
    r.call(1000, FAIL).unwrap(); // failed probe
    assert_eq!(retry_after(1000), Duration::from_secs(2));
    r.call(3000, FAIL).unwrap();
    assert_eq!(retry_after(3000), Duration::from_secs(3), "capped");
    r.call(6000, OK).unwrap(); // probe succeeds: closed, growth reset
    assert_eq!(r.state(), State::Closed);
    r.call(6000, FAIL).unwrap();
    assert_eq!(retry_after(6000), Duration::from_secs(1));
}

#[test]
fn retry_after_hint_lengthens_open_up_to_the_cap() {
    let base = || {
        Config::builder()
            .consecutive_failures(1)
            .open_duration(Duration::from_secs(1))
    };
    let cap = Duration::from_secs(60);
    // (case, config, the downstream's Retry-After hint, the breaker's wait)
    let cases = [
        (
            "within the cap",
            base().open_duration_growth(1.0, cap),
            30,
            30,
        ),
        ("capped", base().open_duration_growth(1.0, cap), 3600, 60),
        ("ignoring", base().respect_retry_after(false), 30, 1),
    ];
    for (case, config, hint, expected) in cases {
        let r = Rig::new(config);
        r.call(
            0,
            Outcome::failure_with_retry_after(Duration::from_secs(hint)),
        )
        .unwrap();
        let wait = r.b.try_acquire(|| r.at(0)).unwrap_err().retry_after();
        assert_eq!(wait, Some(Duration::from_secs(expected)), "{case}");
    }
}

#[test]
fn late_results_do_not_count_in_a_new_period() {
    let r = Rig::new(rate_cfg().count_window(4).minimum_calls(4));
    let t = r.at(0);
    // Four calls admitted while closed; they finish after an operator reset.
    let late: Vec<_> = (0..4).map(|_| r.b.try_acquire(|| t).unwrap()).collect();
    r.b.reset(t);
    for p in late {
        r.b.record(p, &FAIL, || t);
    }
    assert_eq!(r.state(), State::Closed);
    assert_eq!(r.b.snapshot(t).calls, 0);
}

#[test]
fn ignored_outcomes_count_as_neither() {
    let r = Rig::new(rate_cfg().count_window(4).minimum_calls(4));
    for _ in 0..100 {
        r.call(0, Outcome::Ignore).unwrap();
    }
    let s = r.b.snapshot(r.at(0));
    assert_eq!((s.calls, s.failures), (0, 0));
}

#[test]
fn operator_states() {
    let r = Rig::new(rate_cfg());
    r.b.force_open(r.at(0));
    let rej = r.b.try_acquire(|| r.at(3_600_000)).unwrap_err();
    assert_eq!((rej.state(), rej.retry_after()), (State::ForcedOpen, None));

    r.b.disable(r.at(0));
    for _ in 0..50 {
        r.call(0, FAIL).unwrap();
    }
    assert_eq!(r.state(), State::Disabled);
    assert_eq!(r.b.snapshot(r.at(0)).calls, 0, "disabled records nothing");

    r.b.metrics_only(r.at(0));
    for _ in 0..50 {
        r.call(0, FAIL).unwrap();
    }
    assert_eq!(r.state(), State::MetricsOnly);
    let s = r.b.snapshot(r.at(0));
    assert_eq!((s.calls, s.failures, s.failure_rate), (10, 10, Some(1.0)));

    r.b.reset(r.at(0));
    assert_eq!(r.state(), State::Closed);
    assert_eq!(r.b.snapshot(r.at(0)).calls, 0);
    for _ in 0..10 {
        r.call(0, FAIL).unwrap();
    }
    assert_eq!(r.state(), State::Open, "a reset breaker works as new");
}

#[test]
fn time_window_expires_as_the_clock_moves() {
    let r = Rig::new(
        Config::builder()
            .time_window(Duration::from_secs(10), 10)
            .minimum_calls(5)
            .failure_rate(0.5),
    );
    for _ in 0..4 {
        r.call(500, FAIL).unwrap();
    }
    assert_eq!(r.b.snapshot(r.at(9_999)).calls, 4);
    // No calls for a while: the old bucket leaves the window by itself.
    let s = r.b.snapshot(r.at(10_000));
    assert_eq!((s.calls, s.failure_rate), (0, None));
    r.call(10_500, FAIL).unwrap();
    assert_eq!(r.state(), State::Closed, "the old failures no longer count");
    for _ in 0..4 {
        r.call(12_000, FAIL).unwrap();
    }
    assert_eq!(r.state(), State::Open);
}

#[test]
fn consecutive_mode_counts_runs() {
    let r = Rig::new(
        Config::builder()
            .consecutive_failures(3)
            .half_open_permits(2),
    );
    r.call(0, FAIL).unwrap();
    r.call(0, FAIL).unwrap();
    r.call(0, OK).unwrap();
    r.call(0, FAIL).unwrap();
    r.call(0, FAIL).unwrap();
    assert_eq!(r.state(), State::Closed);
    r.call(0, FAIL).unwrap();
    assert_eq!(r.state(), State::Open);
    // In half-open, one failed probe is enough to reopen.
    let t = r.at(10_000);
    let a = r.b.try_acquire(|| t).unwrap();
    let b = r.b.try_acquire(|| t).unwrap();
    r.b.record(a, &FAIL, || t);
    assert_eq!(r.state(), State::Open);
    r.b.record(b, &OK, || t);
    assert_eq!(r.state(), State::Open, "the other probe's result is late");
}

#[test]
fn events_follow_the_transitions() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let r = Rig::new(
        Config::builder()
            .name("events")
            .consecutive_failures(1)
            .half_open_permits(1)
            .open_duration(Duration::from_secs(1))
            .on_event(move |e| {
                assert_eq!(e.breaker, "events");
                log.lock().unwrap().push(e.kind);
            }),
    );
    r.call(0, OK).unwrap();
    r.call(0, FAIL).unwrap();
    let _ = r.call(10, OK);
    r.call(1000, Outcome::Ignore).unwrap();
    r.call(1000, OK).unwrap();
    let wait = Some(Duration::from_millis(990));
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            EventKind::Success { elapsed: None },
            EventKind::Failure { elapsed: None },
            EventKind::Transition {
                from: State::Closed,
                to: State::Open
            },
            EventKind::Rejected {
                state: State::Open,
                retry_after: wait
            },
            EventKind::Transition {
                from: State::Open,
                to: State::HalfOpen
            },
            EventKind::Ignored,
            EventKind::Success { elapsed: None },
            EventKind::Transition {
                from: State::HalfOpen,
                to: State::Closed
            },
        ]
    );
}

#[test]
fn builder_rejects_nonsense_with_clear_errors() {
    let cases: Vec<(Builder, &str)> = vec![
        (Config::builder().failure_rate(0.0), "failure_rate"),
        (Config::builder().failure_rate(f64::NAN), "failure_rate"),
        (Config::builder().count_window(0), "count_window"),
        (
            Config::builder().count_window(10).minimum_calls(11),
            "minimum_calls",
        ),
        (Config::builder().minimum_calls(0), "minimum_calls"),
        (
            Config::builder().time_window(Duration::from_millis(5), 10),
            "1 ms",
        ),
        (
            Config::builder().time_window(Duration::from_secs(1), 0),
            "buckets",
        ),
        (Config::builder().consecutive_failures(0), "consecutive"),
        (
            Config::builder()
                .consecutive_failures(3)
                .slow_calls(Duration::from_secs(1), 0.5),
            "slow_calls",
        ),
        (
            Config::builder().slow_calls(Duration::ZERO, 0.5),
            "slow_calls",
        ),
        (
            Config::builder().open_duration(Duration::ZERO),
            "open_duration",
        ),
        (
            Config::builder().open_duration_growth(0.5, Duration::from_secs(60)),
            "multiplier",
        ),
        (
            Config::builder().open_duration_growth(2.0, Duration::from_secs(1)),
            "max",
        ),
        (Config::builder().half_open_permits(0), "half_open_permits"),
        (
            Config::builder().half_open_max_wait(Duration::ZERO),
            "half_open_max_wait",
        ),
    ];
    for (builder, needle) in cases {
        let err = builder.build().expect_err(needle).to_string();
        assert!(err.contains(needle), "{err:?} should mention {needle}");
    }
}
