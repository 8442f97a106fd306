//! Breaker listeners may steer the breaker they listen to: no listener runs while the crate
//! holds a lock, so a listener that forces open, resets, retunes or reconfigures its own breaker
//! (or reads it) returns, and the transitions it causes reach listeners in the order they
//! happened. Every test runs on a thread of its own and fails after a timeout instead of hanging
//! when a listener deadlocks.

use std::{
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
        mpsc,
    },
    thread,
    time::Duration,
};

use tokio::time::Instant;
use tower_rampart::{
    circuit_breaker::{
        Builder, CircuitBreakerLayer, Config, Event, EventKind, LiveBreaker, Reconfigured, State,
    },
    classify::Outcome,
};

/// Runs `f` on its own thread; a deadlock (no answer within 10 s) fails the test instead of
/// hanging it.
fn within_10s<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(v) => v,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("deadlocked: {what}"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("panicked: {what}"),
    }
}

type Log = Arc<Mutex<Vec<EventKind>>>;

fn logger(log: &Log) -> impl Fn(&Event<'_>) + Send + Sync + 'static {
    let log = log.clone();
    move |e: &Event<'_>| log.lock().unwrap().push(e.kind)
}

fn transitions(log: &Log) -> Vec<(State, State)> {
    log.lock()
        .unwrap()
        .iter()
        .filter_map(|k| match *k {
            EventKind::Transition { from, to } => Some((from, to)),
            _ => None,
        })
        .collect()
}

/// The case from the issue: `consecutive_failures(1)` and a listener that forces the breaker
/// open when it opens. `record()` used to never return.
#[test]
fn a_listener_forcing_open_on_open_lets_record_return() {
    within_10s("force_open from an Open listener", || {
        let handle = Arc::new(OnceLock::new());
        let log = Log::default();
        let h = handle.clone();
        let config = Config::builder()
            .consecutive_failures(1)
            .on_event(logger(&log))
            .on_event(move |e: &Event<'_>| {
                if let EventKind::Transition {
                    to: State::Open, ..
                } = e.kind
                {
                    let h: &tower_rampart::circuit_breaker::CircuitBreakerHandle = h.get().unwrap();
                    h.force_open();
                    assert_eq!(h.state(), State::ForcedOpen, "the listener sees its change");
                }
            })
            .build()
            .unwrap();
        let layer = CircuitBreakerLayer::new(config);
        handle.set(layer.handle()).unwrap();
        let b = layer.handle();
        let t = Instant::now();
        let p = b.breaker().try_acquire(|| t).unwrap();
        b.breaker().record(p, &Outcome::FAILURE, || t);
        assert_eq!(b.state(), State::ForcedOpen);
        assert_eq!(
            transitions(&log),
            [
                (State::Closed, State::Open),
                (State::Open, State::ForcedOpen)
            ]
        );
    });
}

/// What a listener does to the breaker it listens to.
#[derive(Debug, Clone, Copy)]
enum Act {
    ForceOpen,
    Reset,
    Retune,
    /// Another window: the live breaker is replaced.
    Reconfigure,
    Read,
}

fn base() -> Builder {
    Config::builder()
        .name("steered")
        .count_window(4)
        .minimum_calls(2)
        .failure_rate(0.5)
        .slow_calls(Duration::from_millis(50), 1.0)
        .open_duration(Duration::from_secs(1))
        .half_open_permits(1)
}

fn kind_name(k: &EventKind) -> &'static str {
    match k {
        EventKind::Transition { .. } => "transition",
        EventKind::Rejected { .. } => "rejected",
        EventKind::Success { .. } => "success",
        EventKind::Failure { .. } => "failure",
        EventKind::Slow { .. } => "slow",
        EventKind::Ignored => "ignored",
        EventKind::Reset { .. } => "reset",
        _ => "other",
    }
}

/// Drives the live breaker through every kind of event: success, ignored, slow, failure,
/// transition, rejected, reset. Steps the listener made impossible (a forced-open breaker
/// refuses calls) are skipped.
fn script(live: &LiveBreaker) {
    let t0 = Instant::now();
    let at = |ms| t0 + Duration::from_millis(ms);
    let call = |start: u64, end: u64, outcome: Outcome| {
        let b = live.current();
        if let Ok(p) = b.try_acquire(|| at(start)) {
            b.record(p, &outcome, || at(end));
        }
    };
    call(0, 1, Outcome::Success);
    call(1, 2, Outcome::Ignore);
    call(2, 200, Outcome::Success);
    call(3, 4, Outcome::FAILURE);
    call(4, 5, Outcome::FAILURE);
    let _ = live.current().try_acquire(|| at(6));
    live.current().reset(at(7));
}

#[test]
fn every_listener_kind_may_steer_its_live_breaker() {
    let kinds = [
        "success",
        "ignored",
        "slow",
        "failure",
        "transition",
        "rejected",
        "reset",
    ];
    let acts = [
        Act::ForceOpen,
        Act::Reset,
        Act::Retune,
        Act::Reconfigure,
        Act::Read,
    ];
    for kind in kinds {
        for act in acts {
            within_10s(&format!("{act:?} from a {kind} listener"), move || {
                let live_cell: Arc<OnceLock<LiveBreaker>> = Arc::new(OnceLock::new());
                let fired = Arc::new(AtomicBool::new(false));
                let checked = Arc::new(AtomicUsize::new(0));
                let (cell, f, c) = (live_cell.clone(), fired.clone(), checked.clone());
                let listener = move |e: &Event<'_>| {
                    if kind_name(&e.kind) != kind || f.swap(true, SeqCst) {
                        return;
                    }
                    let live = cell.get().expect("set before any call");
                    let now = Instant::now();
                    match act {
                        Act::ForceOpen => {
                            live.current().force_open(now);
                            assert_eq!(live.current().state(), State::ForcedOpen);
                        }
                        Act::Reset => {
                            live.current().reset(now);
                            assert_eq!(live.current().state(), State::Closed);
                        }
                        Act::Retune => {
                            live.current()
                                .retune(&base().failure_rate(0.9).build().unwrap())
                                .unwrap();
                        }
                        Act::Reconfigure => {
                            let other = base().count_window(8).build().unwrap();
                            assert_eq!(live.reconfigure(other), Reconfigured::Replaced);
                        }
                        Act::Read => {
                            let _ = live.current().snapshot(now);
                            let _ = live.current().state();
                        }
                    }
                    c.fetch_add(1, SeqCst);
                };
                let live = LiveBreaker::new(base().on_event(listener).build().unwrap());
                live_cell.set(live.clone()).unwrap();
                script(&live);
                assert_eq!(
                    checked.load(SeqCst),
                    1,
                    "the {kind} listener ran its {act:?} once"
                );
            });
        }
    }
}

/// A listener of the breaker that replaces another (its first transition is made while the
/// live breaker is being reconfigured) may reconfigure the live breaker again.
#[test]
fn a_listener_may_reconfigure_the_live_breaker_from_a_replacement_transition() {
    within_10s("reconfigure from a replacement's transition", || {
        let cell: Arc<OnceLock<LiveBreaker>> = Arc::new(OnceLock::new());
        let again = Arc::new(AtomicBool::new(false));
        let (c, a) = (cell.clone(), again.clone());
        let cfg = move |size: u32| {
            let (c, a) = (c.clone(), a.clone());
            Config::builder()
                .count_window(size)
                .minimum_calls(1)
                .on_event(move |e: &Event<'_>| {
                    if let EventKind::Transition {
                        to: State::Open, ..
                    } = e.kind
                        && !a.swap(true, SeqCst)
                    {
                        let live = c.get().unwrap();
                        let r = live.reconfigure(
                            Config::builder()
                                .count_window(7)
                                .minimum_calls(1)
                                .build()
                                .unwrap(),
                        );
                        assert_eq!(r, Reconfigured::Replaced);
                    }
                })
                .build()
                .unwrap()
        };
        let live = LiveBreaker::new(cfg(2));
        cell.set(live.clone()).unwrap();
        // Open the breaker (the listener's first Open replaces it at once: count window 7).
        let b = live.current();
        let p = b.try_acquire(Instant::now).unwrap();
        b.record(p, &Outcome::FAILURE, Instant::now);
        assert!(again.load(SeqCst));
        assert_eq!(
            live.current().state(),
            State::Open,
            "the replacement stays open"
        );
        // And once more from a replacement made by a reload.
        again.store(false, SeqCst);
        assert_eq!(live.reconfigure(cfg(3)), Reconfigured::Replaced);
        assert!(
            again.load(SeqCst),
            "the replacement's Open reached its listener"
        );
        assert_eq!(live.current().state(), State::Open);
    });
}

/// A keyed breaker's listener may use the family: make a breaker for another key, or
/// reconfigure the family, while the family replaces breakers.
#[test]
fn a_keyed_breakers_listener_may_use_its_family() {
    within_10s("keyed family from a listener", || {
        type Family = Arc<tower_rampart::circuit_breaker::KeyedBreakers<String>>;
        let cell: Arc<OnceLock<Family>> = Arc::new(OnceLock::new());
        let made = Arc::new(AtomicUsize::new(0));
        let (c, m) = (cell.clone(), made.clone());
        let listener = move |e: &Event<'_>| {
            if let EventKind::Transition {
                to: State::Open, ..
            } = e.kind
            {
                let family = c.get().unwrap();
                let n = m.fetch_add(1, SeqCst);
                family.get_or_insert(format!("spare-{n}"), Instant::now());
                let _ = family.snapshots(Instant::now());
            }
        };
        let layer = CircuitBreakerLayer::keyed(
            Config::builder()
                .name("hosts")
                .consecutive_failures(1)
                .on_event(listener.clone())
                .build()
                .unwrap(),
            |k: &String| k.clone(),
        );
        let family = layer.breakers();
        cell.set(family.clone()).unwrap();
        let b = family.get_or_insert("a".to_owned(), Instant::now());
        let p = b.try_acquire(Instant::now).unwrap();
        b.record(p, &Outcome::FAILURE, Instant::now);
        assert_eq!(made.load(SeqCst), 1);
        // A window change replaces the open breaker in its state: its successor opens, and
        // the successor's listener makes another key while the family is being replaced.
        let r = family.reconfigure(
            Config::builder()
                .name("hosts")
                .count_window(5)
                .minimum_calls(1)
                .on_event(listener)
                .build()
                .unwrap(),
        );
        assert_eq!(r, Reconfigured::Replaced);
        assert_eq!(made.load(SeqCst), 2);
        assert_eq!(family.get("a").unwrap().state(), State::Open);
    });
}

/// Transitions caused by listeners reach listeners after the transition that ran them, in the
/// order they happened, each `from` the previous `to`.
#[test]
fn nested_transitions_reach_listeners_in_order() {
    within_10s("nested transitions", || {
        let handle = Arc::new(OnceLock::new());
        let log = Log::default();
        let h = handle.clone();
        let config = Config::builder()
            .consecutive_failures(1)
            .on_event(move |e: &Event<'_>| {
                let h: &tower_rampart::circuit_breaker::CircuitBreakerHandle = h.get().unwrap();
                match e.kind {
                    EventKind::Transition {
                        to: State::Open, ..
                    } => h.force_open(),
                    EventKind::Transition {
                        to: State::ForcedOpen,
                        ..
                    } => h.disable(),
                    EventKind::Transition {
                        to: State::Disabled,
                        ..
                    } => h.reset(),
                    _ => {}
                }
            })
            .on_event(logger(&log))
            .build()
            .unwrap();
        let layer = CircuitBreakerLayer::new(config);
        handle.set(layer.handle()).unwrap();
        let b = layer.handle();
        let p = b.breaker().try_acquire(Instant::now).unwrap();
        b.breaker().record(p, &Outcome::FAILURE, Instant::now);
        assert_eq!(b.state(), State::Closed);
        let kinds: Vec<_> = log
            .lock()
            .unwrap()
            .iter()
            .filter(|k| !matches!(k, EventKind::Failure { .. }))
            .copied()
            .collect();
        assert_eq!(
            kinds,
            [
                EventKind::Transition {
                    from: State::Closed,
                    to: State::Open
                },
                EventKind::Transition {
                    from: State::Open,
                    to: State::ForcedOpen
                },
                EventKind::Transition {
                    from: State::ForcedOpen,
                    to: State::Disabled
                },
                EventKind::Transition {
                    from: State::Disabled,
                    to: State::Closed
                },
                EventKind::Reset {
                    from: State::Disabled
                },
            ]
        );
    });
}

/// Threads racing operator commands: listeners see one chain of transitions, each `from` the
/// previous `to`, although they run after the lock is released.
#[test]
fn racing_transitions_reach_listeners_as_one_chain() {
    within_10s("racing transitions", || {
        let log = Log::default();
        let layer = CircuitBreakerLayer::new(
            Config::builder()
                .on_event(logger(&log))
                .on_event(|_: &Event<'_>| thread::yield_now())
                .build()
                .unwrap(),
        );
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let h = layer.handle();
                thread::spawn(move || {
                    for n in 0..500 {
                        match (i + n) % 3 {
                            0 => h.force_open(),
                            1 => h.disable(),
                            _ => h.metrics_only(),
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let chain = transitions(&log);
        assert!(chain.len() > 100);
        assert_eq!(chain[0].0, State::Closed);
        for pair in chain.windows(2) {
            assert_eq!(pair[0].1, pair[1].0, "a transition out of order: {pair:?}");
        }
        assert_eq!(chain.last().unwrap().1, layer.handle().state());
    });
}
