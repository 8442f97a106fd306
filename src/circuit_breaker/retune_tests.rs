//! Live reconfiguration: [`Breaker::retune`], [`LiveBreaker`] and
//! [`KeyedBreakers::reconfigure`], on fake time (instants passed in).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::Duration,
};

use tokio::time::Instant;

use super::{
    Breaker, Builder, CircuitBreakerLayer, Config, LiveBreaker, Reconfigured, State, WindowKind,
    tuning::Tuning,
};
use crate::classify::Outcome;

fn settle(b: &Breaker, outcome: &Outcome, t: Instant) {
    let permit = b.try_acquire(|| t).expect("admitted");
    b.record(permit, outcome, || t);
}

fn rate(rate: f64) -> Builder {
    Config::builder()
        .count_window(10)
        .minimum_calls(10)
        .failure_rate(rate)
}

#[test]
fn config_errors_name_the_setting() {
    let cases: Vec<(Builder, &str, &str)> = vec![
        (
            Config::builder().count_window(0),
            "count_window",
            "must be in 1..=1000000, got 0",
        ),
        (
            Config::builder().count_window(100).minimum_calls(120),
            "minimum_calls",
            "(120) exceeds the count window (100): the breaker could never open",
        ),
        (
            Config::builder().time_window(Duration::from_secs(1), 0),
            "time_window_buckets",
            "must be in 1..=1000, got 0",
        ),
        (
            Config::builder().time_window(Duration::from_millis(5), 10),
            "time_window_buckets",
            "must be at least 1 ms each, got 5ms / 10",
        ),
        (
            Config::builder().consecutive_failures(0),
            "consecutive_failures",
            "must be at least 1",
        ),
        (
            Config::builder()
                .consecutive_failures(2)
                .slow_calls(Duration::from_secs(1), 0.5),
            "slow_call_duration",
            "cannot be used with consecutive_failures (slow_calls needs a count or time window)",
        ),
        (
            Config::builder().failure_rate(1.5),
            "failure_rate",
            "must be in (0, 1], got 1.5",
        ),
        (
            Config::builder().slow_calls(Duration::from_secs(1), 0.0),
            "slow_call_rate",
            "must be in (0, 1], got 0",
        ),
        (
            Config::builder().slow_calls(Duration::ZERO, 0.5),
            "slow_call_duration",
            "must be above zero (the duration given to slow_calls)",
        ),
        (
            Config::builder().minimum_calls(0),
            "minimum_calls",
            "must be at least 1",
        ),
        (
            Config::builder().open_duration(Duration::ZERO),
            "open_duration",
            "must be at least 1 ms, got 0ns",
        ),
        (
            Config::builder().open_duration_growth(0.5, Duration::from_secs(60)),
            "open_duration_multiplier",
            "must be a finite number >= 1, got 0.5",
        ),
        (
            Config::builder().open_duration_growth(2.0, Duration::from_secs(1)),
            "max_open_duration",
            "(1s) is below open_duration (10s)",
        ),
        (
            Config::builder().half_open_permits(0),
            "half_open_permits",
            "must be in 1..=65535, got 0",
        ),
        (
            Config::builder().half_open_max_wait(Duration::ZERO),
            "half_open_max_wait",
            "must be above zero",
        ),
    ];
    for (builder, field, reason) in cases {
        let err = builder.build().unwrap_err();
        assert_eq!((err.setting(), err.reason()), (Some(field), reason));
        assert_eq!(
            err.to_string(),
            format!("invalid circuit breaker configuration: {field} {reason}")
        );
    }
    let err = Config::builder().minimum_calls(0).build().unwrap_err();
    assert_eq!(err.setting(), Some("minimum_calls"));
}

#[test]
fn retune_keeps_the_window_and_lowers_the_threshold() {
    let b = Breaker::new(rate(0.5).name("kept").build().unwrap());
    let t = Instant::now();
    for i in 0..10 {
        let outcome = if i < 4 {
            Outcome::FAILURE
        } else {
            Outcome::Success
        };
        settle(&b, &outcome, t);
    }
    assert_eq!(b.state(), State::Closed, "4 of 10 is under 0.5");

    b.retune(&rate(0.4).name("ignored").build().unwrap())
        .unwrap();
    let s = b.snapshot(t);
    assert_eq!((s.calls, s.failures, s.state), (10, 4, State::Closed));
    assert_eq!(b.name(), "kept", "the new config's name is ignored");
    assert_eq!(b.tuning().failure_ppm, 400_000);

    // Evicts a failure (4 of 10) or a success (5 of 10): at least 0.4 either way.
    settle(&b, &Outcome::FAILURE, t);
    assert_eq!(b.state(), State::Open);
}

#[test]
fn retuned_open_duration_applies_at_the_next_opening() {
    let open = |secs| {
        Config::builder()
            .consecutive_failures(1)
            .open_duration(Duration::from_secs(secs))
            .half_open_permits(1)
            .build()
            .unwrap()
    };
    let b = Breaker::new(open(5));
    let t0 = Instant::now();
    settle(&b, &Outcome::FAILURE, t0);
    b.retune(&open(20)).unwrap();
    let at = |s| t0 + Duration::from_secs(s);
    assert_eq!(
        b.try_acquire(|| at(1)).unwrap_err().retry_after(),
        Some(Duration::from_secs(4)),
        "the opening under way keeps its wait"
    );
    settle(&b, &Outcome::Success, at(5));
    assert_eq!(b.state(), State::Closed);
    settle(&b, &Outcome::FAILURE, at(6));
    assert_eq!(
        b.try_acquire(|| at(6)).unwrap_err().retry_after(),
        Some(Duration::from_secs(20))
    );
    assert_eq!(b.config().open_duration_after(1), Duration::from_secs(20));
}

#[test]
fn retuned_growth_continues_from_the_openings_so_far() {
    let growing = |multiplier| {
        Config::builder()
            .consecutive_failures(1)
            .open_duration(Duration::from_secs(1))
            .open_duration_growth(multiplier, Duration::from_secs(100))
            .half_open_max_wait(None)
            .build()
            .unwrap()
    };
    let b = Breaker::new(growing(2.0));
    let t0 = Instant::now();
    settle(&b, &Outcome::FAILURE, t0); // first opening: 1 s
    let probe = b.try_acquire(|| t0 + Duration::from_secs(1)).unwrap();
    b.retune(&growing(3.0)).unwrap();
    let t = t0 + Duration::from_secs(2);
    b.record(probe, &Outcome::FAILURE, || t); // second opening: 1 s * 3
    assert_eq!(
        b.try_acquire(|| t).unwrap_err().retry_after(),
        Some(Duration::from_secs(3))
    );
}

fn half_open(permits: u32) -> (Breaker, Instant) {
    let b = Breaker::new(probes(permits));
    let t0 = Instant::now();
    settle(&b, &Outcome::FAILURE, t0);
    (b, t0 + Duration::from_secs(1))
}

fn probes(permits: u32) -> Config {
    Config::builder()
        .consecutive_failures(1)
        .open_duration(Duration::from_secs(1))
        .half_open_permits(permits)
        .build()
        .unwrap()
}

#[test]
fn raised_half_open_permits_admit_more_probes_and_wait_for_them() {
    let (b, t) = half_open(1);
    let first = b.try_acquire(|| t).unwrap();
    assert_eq!(b.try_acquire(|| t).unwrap_err().state(), State::HalfOpen);
    b.retune(&probes(3)).unwrap();
    let more = [b.try_acquire(|| t).unwrap(), b.try_acquire(|| t).unwrap()];
    assert!(b.try_acquire(|| t).is_err(), "three probes out");
    b.record(first, &Outcome::Success, || t);
    assert_eq!(b.state(), State::HalfOpen, "one result of three");
    for p in more {
        b.record(p, &Outcome::Success, || t);
    }
    assert_eq!(b.state(), State::Closed);
}

#[test]
fn lowered_half_open_permits_decide_on_fewer_results() {
    // Lowered with results still to come: the next result decides.
    let (b, t) = half_open(3);
    let p: Vec<_> = (0..3).map(|_| b.try_acquire(|| t).unwrap()).collect();
    let mut p = p.into_iter();
    b.record(p.next().unwrap(), &Outcome::Success, || t);
    b.retune(&probes(2)).unwrap();
    assert_eq!(b.snapshot(t).half_open_permits_free, Some(0));
    b.record(p.next().unwrap(), &Outcome::Success, || t);
    assert_eq!(b.state(), State::Closed, "two results of the new two");
    // The third probe ended after the decision: ignored.
    b.record(p.next().unwrap(), &Outcome::FAILURE, || t);
    assert_eq!(b.state(), State::Closed);

    // Lowered to no more than the results already in: the next call decides.
    let (b, t) = half_open(3);
    let p: Vec<_> = (0..3).map(|_| b.try_acquire(|| t).unwrap()).collect();
    let mut p = p.into_iter();
    b.record(p.next().unwrap(), &Outcome::Success, || t);
    b.retune(&probes(1)).unwrap();
    assert_eq!(b.state(), State::HalfOpen);
    let next = b.try_acquire(|| t).expect("decided: closed, so admitted");
    assert!(!next.is_probe());
    assert_eq!(b.state(), State::Closed);
    b.record(next, &Outcome::Success, || t);
    for late in p {
        b.record(late, &Outcome::FAILURE, || t);
    }
    assert_eq!(b.state(), State::Closed, "late probes are ignored");
}

#[test]
fn a_window_change_is_refused_and_changes_nothing() {
    let b = Breaker::new(
        Config::builder()
            .count_window(100)
            .failure_rate(0.5)
            .build()
            .unwrap(),
    );
    let t = Instant::now();
    settle(&b, &Outcome::FAILURE, t);
    let before = b.tuning();
    let cases = [
        (
            Config::builder().count_window(200),
            "count_window",
            "cannot change on a running breaker (100 -> 200); replace the breaker",
        ),
        (
            Config::builder().time_window(Duration::from_secs(10), 10),
            "time_window",
            "cannot change on a running breaker (count window of 100 calls -> time window of 10s in 10 buckets); replace the breaker",
        ),
        (
            Config::builder().consecutive_failures(5),
            "consecutive_failures",
            "cannot change on a running breaker (count window of 100 calls -> 5 consecutive failures); replace the breaker",
        ),
    ];
    for (builder, field, reason) in cases {
        let err = b
            .retune(&builder.failure_rate(0.1).build().unwrap())
            .unwrap_err();
        assert_eq!((err.setting(), err.reason()), (Some(field), reason));
    }
    assert_eq!(b.tuning(), before);
    assert_eq!(b.snapshot(t).failures, 1);

    let time = |d, n| {
        Breaker::new(
            Config::builder()
                .time_window(Duration::from_secs(d), n)
                .build()
                .unwrap(),
        )
    };
    let t10 = Config::builder()
        .time_window(Duration::from_secs(10), 10)
        .build()
        .unwrap();
    let err = time(10, 5).retune(&t10).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid circuit breaker configuration: time_window_buckets cannot change on a running breaker (5 -> 10); replace the breaker"
    );
    let err = time(20, 10).retune(&t10).unwrap_err();
    assert_eq!(err.setting(), Some("time_window"));
    time(10, 10).retune(&t10).unwrap();
}

#[test]
fn config_reports_the_retuned_settings() {
    let listened = Config::builder()
        .name("reported")
        .on_event(|_| {})
        .build()
        .unwrap();
    let b = Breaker::new(listened.clone());
    assert_eq!(format!("{:?}", b.config()), format!("{listened:?}"));
    let new = Config::builder()
        .name("other")
        .failure_rate(0.25)
        .slow_calls(Duration::from_millis(300), 0.75)
        .minimum_calls(7)
        .open_duration(Duration::from_secs(2))
        .open_duration_growth(2.0, Duration::from_secs(30))
        .half_open_permits(9)
        .half_open_max_wait(Duration::from_secs(90))
        .respect_retry_after(false)
        .build()
        .unwrap();
    b.retune(&new).unwrap();
    let now = b.config();
    assert_eq!(now.name(), "reported");
    assert_eq!(Tuning::of(&now), Tuning::of(&new));
    let debug = format!("{now:?}");
    assert!(debug.contains("listeners: 1"), "{debug}");
    assert!(debug.contains("failure_rate: 0.25"), "{debug}");
    assert_eq!(now.half_open_max_wait(), Some(Duration::from_secs(90)));
}

#[test]
fn slow_calls_turned_on_time_calls_admitted_afterwards() {
    let plain = rate(0.5).build().unwrap();
    let slow = rate(0.5)
        .slow_calls(Duration::from_millis(100), 1.0)
        .build()
        .unwrap();
    let b = Breaker::new(plain.clone());
    let t = Instant::now();
    let untimed = b.try_acquire(|| t).unwrap();
    b.retune(&slow).unwrap();
    let timed = b.try_acquire(|| t).unwrap();
    let late = t + Duration::from_secs(1);
    b.record(untimed, &Outcome::Success, || late);
    b.record(timed, &Outcome::Success, || late);
    assert_eq!(
        b.snapshot(late).slow_calls,
        1,
        "only the timed call is slow"
    );
    // Turned off again: a timed permit is no longer judged slow.
    let timed = b.try_acquire(|| late).unwrap();
    b.retune(&plain).unwrap();
    b.record(timed, &Outcome::Success, || late + Duration::from_secs(1));
    assert_eq!(b.snapshot(late).slow_calls, 1);
}

/// One thread retunes back and forth between two configurations while others make calls:
/// every read of the settings is one whole configuration or the other.
#[test]
fn concurrent_retunes_are_never_seen_torn() {
    let a = Config::builder()
        .failure_rate(0.2)
        .minimum_calls(2)
        .open_duration(Duration::from_millis(2))
        .half_open_permits(1)
        .build()
        .unwrap();
    let b_config = Config::builder()
        .failure_rate(0.9)
        .minimum_calls(8)
        .open_duration(Duration::from_millis(8))
        .half_open_permits(4)
        .slow_calls(Duration::from_millis(50), 0.5)
        .respect_retry_after(false)
        .build()
        .unwrap();
    let (ta, tb) = (Tuning::of(&a), Tuning::of(&b_config));
    let breaker = Arc::new(Breaker::new(a.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (breaker, stop) = (breaker.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Relaxed) {
                let c = if n & 1 == 0 { &b_config } else { &a };
                breaker.retune(c).unwrap();
                n += 1;
            }
            n
        })
    };
    let callers: Vec<_> = (0..3u64)
        .map(|seed| {
            let breaker = breaker.clone();
            std::thread::spawn(move || {
                let mut rng = fastrand::Rng::with_seed(seed);
                for i in 0..20_000u32 {
                    let t = breaker.tuning();
                    assert!(t == ta || t == tb, "torn read: {t:?}");
                    if let Ok(p) = breaker.try_acquire(Instant::now) {
                        let outcome = if rng.bool() {
                            Outcome::FAILURE
                        } else {
                            Outcome::Success
                        };
                        breaker.record(p, &outcome, Instant::now);
                    }
                    if i % 1000 == 999 {
                        let _ = breaker.snapshot(Instant::now());
                    }
                }
            })
        })
        .collect();
    for c in callers {
        c.join().unwrap();
    }
    stop.store(true, Relaxed);
    assert!(writer.join().unwrap() > 0);
    let last = breaker.tuning();
    assert!(last == ta || last == tb);
}

#[test]
fn live_breaker_retunes_or_replaces() {
    let live = LiveBreaker::new(rate(0.5).name("live").build().unwrap());
    let t = Instant::now();
    let first = live.current();
    for _ in 0..4 {
        settle(&first, &Outcome::FAILURE, t);
    }
    let tuned = rate(0.4)
        .name("renamed")
        .on_event(|_| panic!("ignored"))
        .build()
        .unwrap();
    assert_eq!(live.reconfigure(tuned), Reconfigured::Retuned);
    assert!(Arc::ptr_eq(&first, &live.current()));
    assert_eq!(first.snapshot(t).failures, 4);
    assert_eq!(first.name(), "live");
    settle(&first, &Outcome::FAILURE, t); // listeners of the new config ignored: no panic

    // A call in flight across a replacement records into the old breaker.
    let in_flight = first.try_acquire(|| t).unwrap();
    let resized = Config::builder()
        .name("live")
        .count_window(20)
        .build()
        .unwrap();
    assert_eq!(live.reconfigure(resized), Reconfigured::Replaced);
    let second = live.current();
    assert!(!Arc::ptr_eq(&first, &second));
    assert_eq!(second.config().window(), WindowKind::Count { size: 20 });
    assert_eq!(second.snapshot(t).calls, 0);
    first.record(in_flight, &Outcome::Success, || t);
    assert_eq!(first.snapshot(t).calls, 6);
    assert_eq!(second.snapshot(t).calls, 0);
}

#[tokio::test(flavor = "current_thread")]
async fn the_live_layer_follows_replacements() {
    use tower::{Service, ServiceBuilder, ServiceExt};

    let live = LiveBreaker::new(Config::builder().consecutive_failures(3).build().unwrap());
    let mut svc = ServiceBuilder::new()
        .layer(
            CircuitBreakerLayer::live(live.clone())
                .classify(crate::classify::HttpStatus::default())
                .respond_http(),
        )
        .service_fn(|code: u16| async move {
            Ok::<_, std::convert::Infallible>(
                http::Response::builder()
                    .status(code)
                    .body(bytes::Bytes::new())
                    .unwrap(),
            )
        });
    let mut call = async |code| {
        svc.ready()
            .await
            .unwrap()
            .call(code)
            .await
            .unwrap()
            .status()
    };
    assert_eq!(call(500).await, 500);
    let replaced = live.reconfigure(
        Config::builder()
            .count_window(1)
            .minimum_calls(1)
            .build()
            .unwrap(),
    );
    assert_eq!(replaced, Reconfigured::Replaced);
    assert_eq!(call(500).await, 500);
    assert_eq!(call(200).await, 503, "the new breaker opened");
}

#[test]
fn keyed_reconfigure_retunes_every_breaker_and_the_template() {
    let base = |r| rate(r).name("api");
    let layer =
        CircuitBreakerLayer::keyed(base(0.5).build().unwrap(), |k: &String| k.clone()).max_keys(1);
    let breakers = layer.breakers();
    let t = Instant::now();
    let a = breakers.get_or_insert("a".to_owned(), t);
    for _ in 0..10 {
        settle(&a, &Outcome::FAILURE, t);
    }
    assert_eq!(a.state(), State::Open);
    // The one slot holds an open breaker: "b" goes to the overflow breaker.
    let overflow = breakers.get_or_insert("b".to_owned(), t);
    assert_eq!(overflow.name(), "api/(other)");

    let tuned = base(0.3).build().unwrap();
    assert_eq!(breakers.reconfigure(tuned.clone()), Reconfigured::Retuned);
    let want = Tuning::of(&tuned);
    assert_eq!((a.tuning(), overflow.tuning()), (want, want));
    assert_eq!(a.state(), State::Open, "state kept");
    assert_eq!(a.name(), "api/a");
    assert_eq!(Tuning::of(&breakers.config()), want);
    assert_eq!(breakers.config().name(), "api");
    assert!(Arc::ptr_eq(&a, &breakers.get_or_insert("a".to_owned(), t)));
    assert_eq!(breakers.handles().len(), 2, "a and the overflow breaker");
}

#[test]
fn keyed_reconfigure_with_another_window_replaces_every_breaker() {
    let layer = CircuitBreakerLayer::keyed(rate(0.5).name("api").build().unwrap(), |k: &String| {
        k.clone()
    })
    .max_keys(1);
    let breakers = layer.breakers();
    let t = Instant::now();
    let a = breakers.get_or_insert("a".to_owned(), t);
    for _ in 0..10 {
        settle(&a, &Outcome::FAILURE, t);
    }
    breakers.get_or_insert("b".to_owned(), t); // the overflow breaker
    assert_eq!(breakers.handles().len(), 2);

    let resized = Config::builder()
        .name("api")
        .count_window(50)
        .build()
        .unwrap();
    assert_eq!(breakers.reconfigure(resized), Reconfigured::Replaced);
    assert_eq!(
        breakers.keys(),
        ["a"],
        "open: replaced in its state, not dropped"
    );
    assert_eq!(
        breakers.handles().len(),
        1,
        "the closed overflow breaker went"
    );
    assert_eq!(breakers.config().window(), WindowKind::Count { size: 50 });
    let again = breakers.get_or_insert("a".to_owned(), t);
    assert!(!Arc::ptr_eq(&a, &again));
    assert_eq!((again.name(), again.state()), ("api/a", State::Open));
    assert_eq!(again.config().window(), WindowKind::Count { size: 50 });
    assert_eq!(again.snapshot(t).calls, 0, "with an empty window");
}

#[cfg(feature = "metrics")]
mod gauges {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

    use super::*;
    use crate::circuit_breaker::metric_names;

    /// The state gauges of `breaker`, by state, leaving out zeros. A snapshot of the debugging
    /// recorder zeroes the gauges it reads, so each test reads once per check point.
    /// The non-zero state gauges of `breaker` (and, for a keyed one, its `key` label).
    fn gauges(snapshotter: &Snapshotter, breaker: &str, key: Option<&str>) -> Vec<(String, f64)> {
        let mut out: Vec<_> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter(|(k, ..)| k.key().name() == metric_names::STATE)
            .filter(|(k, ..)| {
                k.key()
                    .labels()
                    .any(|l| l.key() == "breaker" && l.value() == breaker)
            })
            .filter(|(k, ..)| {
                let found = k.key().labels().find(|l| l.key() == "key");
                found.map(|l| l.value()) == key
            })
            .map(|(k, _, _, v)| {
                let state = k.key().labels().find(|l| l.key() == "state").unwrap();
                let DebugValue::Gauge(g) = v else {
                    panic!("a gauge")
                };
                (state.value().to_owned(), g.into_inner())
            })
            .filter(|(_, v)| *v != 0.0)
            .collect();
        out.sort_by(|x, y| x.0.cmp(&y.0));
        out
    }

    /// A replaced breaker that opens (for a call in flight) or is dropped afterwards leaves the
    /// gauges of its successor, which has the same name, alone.
    #[test]
    fn a_replaced_breaker_leaves_its_successors_gauges_alone() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let live = LiveBreaker::new(
                Config::builder()
                    .name("swap")
                    .consecutive_failures(1)
                    .build()
                    .unwrap(),
            );
            let t = Instant::now();
            let old = live.current();
            let in_flight = old.try_acquire(|| t).unwrap();
            let resized = Config::builder()
                .name("swap")
                .count_window(2)
                .minimum_calls(2)
                .build()
                .unwrap();
            assert_eq!(live.reconfigure(resized), Reconfigured::Replaced);
            assert_eq!(
                gauges(&snapshotter, "swap", None),
                [("closed".to_owned(), 1.0)],
                "the live breaker is closed"
            );
            old.record(in_flight, &Outcome::FAILURE, || t);
            assert_eq!(old.state(), State::Open);
            drop(old);
            // The opening passed on to the successor, whose own transition set the gauges;
            // the old breaker's moved none.
            assert_eq!(live.current().state(), State::Open);
            assert_eq!(
                gauges(&snapshotter, "swap", None),
                [("open".to_owned(), 1.0)]
            );
            live.current().reset(t);
            assert_eq!(
                gauges(&snapshotter, "swap", None),
                [("closed".to_owned(), 1.0)]
            );
        });
    }

    /// Keyed breakers replaced or dropped by a window change leave the counting gauges, as
    /// evicted ones do; an open one's successor counts as open.
    #[test]
    fn keyed_breakers_replaced_by_a_window_change_leave_the_gauges() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let layer = CircuitBreakerLayer::keyed(
                Config::builder()
                    .name("fam")
                    .consecutive_failures(1)
                    .build()
                    .unwrap(),
                |k: &String| k.clone(),
            );
            let breakers = layer.breakers();
            let t = Instant::now();
            let a = breakers.get_or_insert("a".to_owned(), t);
            settle(&a, &Outcome::FAILURE, t);
            let b = breakers.get_or_insert("b".to_owned(), t);
            settle(&b, &Outcome::Success, t);
            let two = Config::builder()
                .name("fam")
                .count_window(2)
                .minimum_calls(2)
                .build()
                .unwrap();
            // Nothing in flight: `b`, closed, can be dropped.
            drop((a, b));
            assert_eq!(breakers.reconfigure(two), Reconfigured::Replaced);
            // Summed since the start: the old breakers left the gauges, `a`'s successor is open
            // and `b` (closed) has no successor until its next call. One snapshot: reading
            // zeroes the gauges.
            let read = gauges(&snapshotter, "fam", Some("a"));
            assert_eq!(read, [("open".to_owned(), 1.0)]);
            assert!(breakers.get("b").is_none());
        });
    }
}

#[test]
fn a_new_consecutive_threshold_is_a_retune_and_keeps_the_run() {
    let live = LiveBreaker::new(Config::builder().consecutive_failures(5).build().unwrap());
    let t = Instant::now();
    let b = live.current();
    for _ in 0..2 {
        let p = b.try_acquire(|| t).unwrap();
        b.record(p, &Outcome::FAILURE, || t);
    }
    let three = Config::builder().consecutive_failures(3).build().unwrap();
    assert_eq!(live.reconfigure(three), Reconfigured::Retuned);
    assert_eq!(b.config().window(), WindowKind::Consecutive { failures: 3 });
    let p = b.try_acquire(|| t).unwrap();
    b.record(p, &Outcome::FAILURE, || t);
    assert_eq!(
        b.state(),
        State::Open,
        "two failures before, one after: three in a row"
    );
    // Raising it again keeps the breaker open.
    let ten = Config::builder().consecutive_failures(10).build().unwrap();
    assert_eq!(live.reconfigure(ten), Reconfigured::Retuned);
    assert_eq!(live.current().state(), State::Open);
}

#[test]
fn a_replacement_keeps_open_and_operator_states() {
    let t = Instant::now();
    let counted = || {
        Config::builder()
            .count_window(10)
            .minimum_calls(5)
            .build()
            .unwrap()
    };
    let timed = || {
        Config::builder()
            .time_window(Duration::from_secs(10), 10)
            .minimum_calls(5)
            .build()
            .unwrap()
    };
    // Open stays open: the downstream is known to be failing.
    let live = LiveBreaker::new(Config::builder().consecutive_failures(1).build().unwrap());
    let p = live.current().try_acquire(|| t).unwrap();
    live.current().record(p, &Outcome::FAILURE, || t);
    assert_eq!(live.reconfigure(counted()), Reconfigured::Replaced);
    assert_eq!(live.current().state(), State::Open);
    // An operator's choice stays.
    for (set, state) in [
        (
            Breaker::force_open as fn(&Breaker, Instant),
            State::ForcedOpen,
        ),
        (Breaker::disable, State::Disabled),
        (Breaker::metrics_only, State::MetricsOnly),
    ] {
        let live = LiveBreaker::new(counted());
        set(&live.current(), t);
        assert_eq!(live.reconfigure(timed()), Reconfigured::Replaced);
        assert_eq!(live.current().state(), state);
    }
    // Closed stays closed.
    let live = LiveBreaker::new(counted());
    assert_eq!(live.reconfigure(timed()), Reconfigured::Replaced);
    assert_eq!(live.current().state(), State::Closed);
}

#[test]
fn a_keyed_window_change_keeps_open_hosts_open() {
    let t = Instant::now();
    let layer = CircuitBreakerLayer::keyed(
        Config::builder()
            .name("api")
            .consecutive_failures(1)
            .build()
            .unwrap(),
        |k: &String| k.clone(),
    );
    let breakers = layer.breakers();
    settle(
        &breakers.get_or_insert("down".to_owned(), t),
        &Outcome::FAILURE,
        t,
    );
    settle(
        &breakers.get_or_insert("up".to_owned(), t),
        &Outcome::Success,
        t,
    );
    let counted = Config::builder()
        .name("api")
        .count_window(10)
        .minimum_calls(5)
        .build()
        .unwrap();
    assert_eq!(breakers.reconfigure(counted), Reconfigured::Replaced);
    assert_eq!(
        breakers.keys(),
        ["down"],
        "the closed one went, the open one was replaced"
    );
    let down = breakers.get_or_insert("down".to_owned(), t);
    assert_eq!(down.state(), State::Open);
    assert_eq!(down.name(), "api/down");
    assert_eq!(down.config().window(), WindowKind::Count { size: 10 });
    let up = breakers.get_or_insert("up".to_owned(), t);
    assert_eq!(up.state(), State::Closed);
}
