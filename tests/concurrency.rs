//! Many tasks on a multi-thread runtime racing one breaker.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{sync::Barrier, time::Instant};
use tower_rampart::{
    circuit_breaker::{Breaker, Config, EventKind, State},
    classify::Outcome,
};

const TASKS: usize = 64;

fn counting(
    builder: tower_rampart::circuit_breaker::Builder,
) -> (Arc<Breaker>, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let (to_half, to_open) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (h, o) = (to_half.clone(), to_open.clone());
    let b = builder
        .on_event(move |e| match e.kind {
            EventKind::Transition {
                to: State::HalfOpen,
                ..
            } => {
                h.fetch_add(1, Ordering::SeqCst);
            }
            EventKind::Transition {
                to: State::Open, ..
            } => {
                o.fetch_add(1, Ordering::SeqCst);
            }
            _ => {}
        })
        .build()
        .unwrap();
    (Arc::new(Breaker::new(b)), to_half, to_open)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_at_the_half_open_boundary_never_exceeds_n_probes() {
    for permits in [1u32, 3, 10] {
        for _round in 0..50 {
            let (b, to_half, _) = counting(
                Config::builder()
                    .consecutive_failures(1)
                    .open_duration(Duration::from_millis(1))
                    .half_open_permits(permits),
            );
            let t0 = Instant::now();
            let p = b.try_acquire(|| t0).unwrap();
            b.record(p, &Outcome::FAILURE, || t0);
            assert_eq!(b.state(), State::Open);

            let later = t0 + Duration::from_millis(5);
            let barrier = Arc::new(Barrier::new(TASKS));
            let granted = Arc::new(AtomicUsize::new(0));
            let tasks: Vec<_> = (0..TASKS)
                .map(|_| {
                    let (b, barrier, granted) = (b.clone(), barrier.clone(), granted.clone());
                    tokio::spawn(async move {
                        barrier.wait().await;
                        // Hold the permit: a finished probe would let another in.
                        if let Ok(p) = b.try_acquire(|| later) {
                            granted.fetch_add(1, Ordering::SeqCst);
                            Some(p)
                        } else {
                            None
                        }
                    })
                })
                .collect();
            let mut held = Vec::new();
            for t in tasks {
                held.extend(t.await.unwrap());
            }
            assert_eq!(granted.load(Ordering::SeqCst), permits as usize);
            assert_eq!(
                to_half.load(Ordering::SeqCst),
                1,
                "one Open -> HalfOpen transition"
            );
            for p in held {
                b.release(p);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_failures_cross_the_threshold_once() {
    for window in ["count", "time", "consecutive"] {
        for _round in 0..50 {
            let builder = Config::builder().failure_rate(0.5).minimum_calls(10);
            let builder = match window {
                "count" => builder.count_window(100),
                "time" => builder.time_window(Duration::from_secs(10), 10),
                _ => builder.consecutive_failures(10),
            };
            let (b, _, to_open) = counting(builder);
            let t = Instant::now();
            // Permits first, so that every failure is recorded in the closed period.
            let permits: Vec<_> = (0..TASKS).map(|_| b.try_acquire(|| t).unwrap()).collect();
            let barrier = Arc::new(Barrier::new(TASKS));
            let tasks: Vec<_> = permits
                .into_iter()
                .map(|p| {
                    let (b, barrier) = (b.clone(), barrier.clone());
                    tokio::spawn(async move {
                        barrier.wait().await;
                        b.record(p, &Outcome::FAILURE, || t);
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
            assert_eq!(b.state(), State::Open, "{window}");
            assert_eq!(
                to_open.load(Ordering::SeqCst),
                1,
                "{window}: exactly one transition"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_recording_keeps_the_count_window_exact() {
    let b = Arc::new(Breaker::new(
        Config::builder()
            .count_window(64)
            .minimum_calls(1)
            .build()
            .unwrap(),
    ));
    let t = Instant::now();
    b.metrics_only(t);
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let b = b.clone();
            tokio::spawn(async move {
                for j in 0..20_000u32 {
                    let p = b.try_acquire(|| t).unwrap();
                    let fail = (i + j) % 3 == 0;
                    b.record(
                        p,
                        &if fail {
                            Outcome::FAILURE
                        } else {
                            Outcome::Success
                        },
                        || t,
                    );
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    // Every slot holds one outcome; the counters agree with a quiet reading of the ring.
    let s = b.snapshot(t);
    assert_eq!(s.calls, 64);
    assert!(s.failures > 0 && s.failures < 64, "{s:?}");
    // After a quiet period of known outcomes the counters are exact again.
    for _ in 0..64 {
        let p = b.try_acquire(|| t).unwrap();
        b.record(p, &Outcome::FAILURE, || t);
    }
    assert_eq!(b.snapshot(t).failures, 64);
}
