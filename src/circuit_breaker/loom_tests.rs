//! Model checks of the breaker's permit accounting with loom: every interleaving (up to the
//! preemption bound) of a few threads racing one breaker.
//!
//! ```sh
//! RUSTFLAGS="--cfg rampart_loom" CARGO_TARGET_DIR=target/loom cargo test --release --lib loom_
//! ```
//!
//! The breaker's atomics and transition lock come from loom in this build (see `sync.rs`). The
//! cfg is our own because a global `--cfg loom` changes tokio too. The event counters below are
//! plain std atomics, which is fine because loom runs one thread at a time.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

use loom::thread;
use tokio::time::Instant;

use super::{Breaker, Builder, Config, EventKind, State, future::Guard};
use crate::classify::Outcome;

/// Explores `f` with at most three preemptions per execution unless `LOOM_MAX_PREEMPTIONS`
/// says otherwise: unbounded, the three-thread models take many minutes.
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if std::env::var_os("LOOM_MAX_PREEMPTIONS").is_none() {
        builder.preemption_bound = Some(3);
    }
    builder.check(f);
}

/// Transitions into each state, counted by a listener.
#[derive(Default)]
struct Transitions {
    to_open: AtomicUsize,
    to_half_open: AtomicUsize,
}

fn breaker(builder: Builder) -> (Arc<Breaker>, Arc<Transitions>) {
    let seen = Arc::new(Transitions::default());
    let s = seen.clone();
    let config = builder
        .on_event(move |e| match e.kind {
            EventKind::Transition {
                to: State::Open, ..
            } => {
                s.to_open.fetch_add(1, SeqCst);
            }
            EventKind::Transition {
                to: State::HalfOpen,
                ..
            } => {
                s.to_half_open.fetch_add(1, SeqCst);
            }
            _ => {}
        })
        .build()
        .unwrap();
    (Arc::new(Breaker::new(config)), seen)
}

/// An open breaker whose open duration has passed at `t0 + 1 s`, with `permits` probes.
fn open_breaker(permits: u32) -> (Arc<Breaker>, Arc<Transitions>, Instant) {
    let (b, seen) = breaker(
        Config::builder()
            .consecutive_failures(1)
            .open_duration(Duration::from_secs(1))
            .half_open_permits(permits)
            .half_open_max_wait(None),
    );
    let t0 = Instant::now();
    let p = b.try_acquire(|| t0).unwrap();
    b.record(p, &Outcome::FAILURE, || t0);
    assert_eq!(b.state(), State::Open);
    (b, seen, t0 + Duration::from_secs(1))
}

/// Racing threads at the Open -> HalfOpen boundary get at most N permits in total, and the
/// breaker turns half-open exactly once.
#[test]
fn loom_half_open_boundary_grants_at_most_n_permits() {
    for (permits, threads) in [(1, 2), (2, 3)] {
        model(move || {
            let (b, seen, t) = open_breaker(permits);
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    let b = b.clone();
                    // Hold the permit past the join: a finished probe would let another in.
                    thread::spawn(move || b.try_acquire(|| t).ok())
                })
                .collect();
            let held: Vec<_> = handles
                .into_iter()
                .filter_map(|h| h.join().unwrap())
                .collect();
            assert_eq!(held.len(), permits as usize, "exactly N probes granted");
            assert!(held.iter().all(|p| p.is_probe()));
            assert_eq!(seen.to_half_open.load(SeqCst), 1, "one transition");
            assert_eq!(b.state(), State::HalfOpen);
            for p in held {
                b.release(p);
            }
        });
    }
}

/// Concurrent failures that cross the threshold produce exactly one transition and one event.
#[test]
fn loom_concurrent_failures_open_exactly_once() {
    for threads in [2, 3] {
        model(move || {
            // Growing open durations make a second opening visible: it would double the wait.
            let (b, seen) = breaker(
                Config::builder()
                    .consecutive_failures(2)
                    .open_duration(Duration::from_secs(1))
                    .open_duration_growth(2.0, Duration::from_secs(60)),
            );
            let t = Instant::now();
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    let b = b.clone();
                    thread::spawn(move || {
                        // Admitted while closed, failing after the others were admitted or not.
                        if let Ok(p) = b.try_acquire(|| t) {
                            b.record(p, &Outcome::FAILURE, || t);
                        }
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
            assert_eq!(b.state(), State::Open);
            assert_eq!(
                seen.to_open.load(SeqCst),
                1,
                "one Closed -> Open transition"
            );
            assert_eq!(
                b.snapshot(t).retry_after,
                Some(Duration::from_secs(1)),
                "opened once, not twice"
            );
        });
    }
}

/// A probe permit given back by a cancelled call (its guard dropped, as when a caller drops the
/// response future or a panic unwinds through it) is never lost, whatever a racing acquirer
/// does, and at no moment are more than N probes out.
///
/// Loom cannot unwind a real panic here: its threads share one OS thread, whose panic count
/// would poison the other threads' locks. The drop of the guard is the same code either way;
/// `tests/breaker_faults.rs` covers the real panics.
#[test]
fn loom_cancelled_probes_give_their_permits_back() {
    model(|| {
        let (b, _, t) = open_breaker(1);
        let out = Arc::new(loom::sync::atomic::AtomicUsize::new(0));
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let (b, out) = (b.clone(), out.clone());
                thread::spawn(move || {
                    let Ok(permit) = b.try_acquire(|| t) else {
                        return;
                    };
                    assert_eq!(out.fetch_add(1, SeqCst), 0, "two probes out at once");
                    let guard = Guard::new(&*b, permit);
                    // Counted back in before the guard goes: its release lets the next in.
                    out.fetch_sub(1, SeqCst);
                    drop(guard);
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(b.state(), State::HalfOpen);
        let p = b
            .try_acquire(|| t)
            .expect("the permit came back: the breaker admits a probe");
        b.record(p, &Outcome::Success, || t);
        assert_eq!(b.state(), State::Closed);
    });
}

/// A probe released after its half-open period ended (another probe's failure reopened the
/// breaker and a new period began) must not free a permit of the new period.
#[test]
fn loom_a_stale_release_frees_nothing_in_the_next_period() {
    model(|| {
        let (b, _, t) = open_breaker(2);
        let stale = b.try_acquire(|| t).unwrap();
        let failing = b.try_acquire(|| t).unwrap();
        let later = t + Duration::from_secs(2);
        let b2 = b.clone();
        // Reopens, then takes both permits of the next half-open period, racing the release.
        let racer = thread::spawn(move || {
            b2.record(failing, &Outcome::FAILURE, || t);
            let first = b2.try_acquire(|| later).ok();
            let second = b2.try_acquire(|| later).ok();
            (first, second)
        });
        b.release(stale);
        let (first, second) = racer.join().unwrap();
        let (first, second) = (first.expect("probe 1"), second.expect("probe 2"));
        assert_eq!(
            b.try_acquire(|| later).unwrap_err().state(),
            State::HalfOpen,
            "both permits of the new period are out"
        );
        b.release(first);
        b.release(second);
    });
}

/// A retune racing a reader of the settings: the reader gets the old set or the new one whole,
/// never a mix (the seqlock's words are written one by one, so a torn copy is possible without
/// the sequence check and its fences).
#[test]
fn loom_a_retune_is_never_read_torn() {
    use super::tuning::Tuning;

    model(|| {
        let old = Config::builder()
            .failure_rate(0.2)
            .minimum_calls(2)
            .open_duration(Duration::from_secs(2))
            .half_open_permits(1)
            .build()
            .unwrap();
        let new = Config::builder()
            .failure_rate(0.9)
            .minimum_calls(8)
            .open_duration(Duration::from_secs(8))
            .half_open_permits(4)
            .build()
            .unwrap();
        let (was, will) = (Tuning::of(&old), Tuning::of(&new));
        let b = Arc::new(Breaker::new(old));
        let writer = {
            let b = b.clone();
            thread::spawn(move || b.retune(&new).unwrap())
        };
        let seen = b.tuning();
        assert!(seen == was || seen == will, "torn read: {seen:?}");
        writer.join().unwrap();
        assert_eq!(b.tuning(), will);
    });
}

/// The time window's count of failures and slow calls (which lets a success skip summing the
/// buckets) stays equal to the buckets' sum when a failure races a success that moves the
/// window past the failure's bucket, and a failure always judges a window that holds it.
#[test]
fn loom_time_window_marks_match_the_buckets() {
    use crate::window::{Sample, TimeWindow};
    model(|| {
        let w = Arc::new(TimeWindow::new(1_000, 2));
        let fail = Sample {
            failure: true,
            slow: true,
        };
        let ok = Sample {
            failure: false,
            slow: false,
        };
        let a = {
            let w = w.clone();
            thread::spawn(move || w.record_judged(10, fail))
        };
        // Bucket 2 takes the place of bucket 0, where the failure goes.
        let b = {
            let w = w.clone();
            thread::spawn(move || w.record_judged(2_500, ok))
        };
        let judged = a.join().unwrap();
        b.join().unwrap();
        let r = w.reading(2_500);
        assert_eq!(w.marks(), r.failures + r.slow);
        if let Some(seen) = judged {
            assert!(seen.failures <= 1 && seen.slow <= 1);
        }
    });
}
