//! The consumer runner over the in-process broker (`message::memory`) and the memory-store
//! inbox, on tokio's paused clock: settlements, redelivery delays, dead letters, panics,
//! shutdown, the concurrency bound and duplicates. Effects are counted in the handlers and
//! the queue's own counts.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

use tokio::time::Instant;
use tower::ServiceBuilder;
use tower_rampart::{
    BoxError,
    backoff::{Backoff, Jitter},
    circuit_breaker::{CircuitBreakerLayer, Config},
    classify::{ClassifyFn, Outcome},
    idempotency::MemoryStore,
    message::{
        DeadLetter, DeadLetterReason, Delivery, Message, Poison, SinkError, Source, SourceError,
        consumer::{Consumer, RedeliverLater, RunSummary},
        inbox::{InboxLayer, Inboxed},
        memory::{self, MemoryAcker, MemorySource, Publisher},
        sink_fn,
    },
};

const S: Duration = Duration::from_secs(1);

/// Dead letters kept by a closure sink.
#[derive(Clone, Default)]
struct Letters(Arc<Mutex<Vec<DeadLetter>>>);

impl Letters {
    fn sink(&self) -> impl tower_rampart::message::DeadLetterSink + Clone {
        let into = self.0.clone();
        sink_fn(move |l: &DeadLetter| {
            into.lock().unwrap().push(l.clone());
            std::future::ready(Ok::<(), SinkError>(()))
        })
    }

    fn all(&self) -> Vec<DeadLetter> {
        self.0.lock().unwrap().clone()
    }
}

async fn publish(p: &Publisher, ids: &[&str]) {
    for id in ids {
        p.publish(Message::new(*id, "test", format!("payload {id}")))
            .await;
    }
}

/// No backoff jitter: redelivery delays are exact on the paused clock.
fn exact_backoff() -> Backoff {
    Backoff::exponential(S).jitter(Jitter::None)
}

/// Runs until the queue is closed and settled; a hang fails the test (paused clock: fast).
async fn run_to_end<F: std::future::Future<Output = RunSummary>>(run: F) -> RunSummary {
    tokio::time::timeout(Duration::from_secs(3600), run)
        .await
        .expect("the consumer finished")
}

#[tokio::test(start_paused = true)]
async fn successes_are_acked_once_each() {
    let (p, source) = memory::channel(64);
    publish(&p, &["a", "b", "c"]).await;
    p.close();
    let runs = Arc::new(AtomicU32::new(0));
    let r = runs.clone();
    let handler = tower::service_fn(move |_: Message| {
        r.fetch_add(1, SeqCst);
        async { Ok::<_, BoxError>(()) }
    });
    let consumer = Consumer::builder()
        .dead_letters_to_broker()
        .build(source, handler)
        .unwrap();
    // The run is a `Send` future: a service spawns it beside its server.
    let run = tokio::spawn(consumer.run_until(std::future::pending::<()>()));
    let summary = run_to_end(async { run.await.unwrap() }).await;
    assert_eq!((summary.received, summary.acked), (3, 3));
    assert!(summary.source_finished);
    assert_eq!(runs.load(SeqCst), 3);
    let st = p.stats();
    assert_eq!(
        (st.acked, st.redelivered, st.rejected, st.queued, st.unacked),
        (3, 0, 0, 0, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn failures_are_redelivered_after_the_backoff() {
    let (p, source) = memory::channel(8);
    publish(&p, &["a"]).await;
    p.close();
    let seen: Arc<Mutex<Vec<(u32, Instant)>>> = Arc::default();
    let s = seen.clone();
    let handler = tower::service_fn(move |m: Message| {
        s.lock().unwrap().push((m.deliveries(), Instant::now()));
        async move {
            if m.deliveries() < 3 {
                Err::<(), BoxError>("downstream unavailable".into())
            } else {
                Ok(())
            }
        }
    });
    let consumer = Consumer::builder()
        .redelivery_backoff(exact_backoff())
        .dead_letters_to_broker()
        .build(source, handler)
        .unwrap();
    let summary = run_to_end(consumer.run_until(std::future::pending::<()>())).await;
    assert_eq!((summary.acked, summary.redelivered), (1, 2));
    let seen = seen.lock().unwrap().clone();
    let counts: Vec<u32> = seen.iter().map(|(n, _)| *n).collect();
    assert_eq!(counts, [1, 2, 3], "the broker's count reaches the handler");
    // Exponential from 1 s: 1 s before the second delivery, 2 s before the third.
    assert_eq!(seen[1].1 - seen[0].1, S);
    assert_eq!(seen[2].1 - seen[1].1, 2 * S);
}

#[tokio::test(start_paused = true)]
async fn the_last_attempt_is_dead_lettered_with_its_first_and_last_errors() {
    let (p, source) = memory::channel(8);
    publish(&p, &["a"]).await;
    p.close();
    let handler = tower::service_fn(|m: Message| async move {
        Err::<(), BoxError>(format!("failure {}", m.deliveries()).into())
    });
    let letters = Letters::default();
    let consumer = Consumer::builder()
        .max_attempts(3)
        .redelivery_backoff(exact_backoff())
        .dead_letters(letters.sink())
        .build(source, handler)
        .unwrap();
    let summary = run_to_end(consumer.run_until(std::future::pending::<()>())).await;
    assert_eq!((summary.redelivered, summary.dead_lettered), (2, 1));
    let all = letters.all();
    assert_eq!(all.len(), 1);
    let l = &all[0];
    assert_eq!(l.reason, DeadLetterReason::MaxAttempts);
    assert_eq!(l.attempts, 3);
    assert_eq!(l.first_error.as_deref(), Some("failure 1"));
    assert_eq!(l.last_error, "failure 3");
    assert_eq!(l.message.id(), "a");
    assert_eq!(l.message.payload().as_ref(), b"payload a");
    // The original was acked once its letter was taken, and is gone from the queue.
    let st = p.stats();
    assert_eq!((st.acked, st.queued, st.unacked, st.rejected), (1, 0, 0, 0));
}

/// A real source in front of the in-process queue that fails once and reads messages with an
/// `unreadable` header as unreadable (a broker message without an id, say).
struct Picky {
    inner: MemorySource,
    failed: bool,
}

impl Source for Picky {
    type Acker = MemoryAcker;

    async fn next(&mut self) -> Option<Result<Delivery<MemoryAcker>, SourceError>> {
        if !self.failed {
            self.failed = true;
            return Some(Err(SourceError::new("connection reset")));
        }
        let d = self.inner.next().await?;
        Some(d.map(|d| {
            if d.message.headers().contains_key("unreadable") {
                Delivery::unreadable(d.message, d.acker, "no message id")
            } else {
                d
            }
        }))
    }
}

#[tokio::test(start_paused = true)]
async fn poison_is_dead_lettered_at_once_and_unreadable_deliveries_never_reach_the_handler() {
    let (p, source) = memory::channel(8);
    p.publish(Message::new("bad-json", "test", "{")).await;
    p.publish(Message::new("placeholder", "test", "").with_header("unreadable", "1"))
        .await;
    p.close();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let handler = tower::service_fn(move |m: Message| {
        c.fetch_add(1, SeqCst);
        async move {
            let e: BoxError = Box::new(Poison::new(format!("cannot decode {}", m.id())));
            Err::<(), _>(e)
        }
    });
    let letters = Letters::default();
    let source = Picky {
        inner: source,
        failed: false,
    };
    let consumer = Consumer::builder()
        .dead_letters(letters.sink())
        .build(source, handler)
        .unwrap();
    let summary = run_to_end(consumer.run_until(std::future::pending::<()>())).await;
    assert_eq!(
        summary.source_errors, 1,
        "the source's error was waited out"
    );
    assert_eq!(summary.dead_lettered, 2);
    assert_eq!(
        calls.load(SeqCst),
        1,
        "the unreadable one never reached the handler"
    );
    let mut all = letters.all();
    all.sort_by(|a, b| a.message.id().cmp(b.message.id()));
    assert!(
        all.iter()
            .all(|l| l.reason == DeadLetterReason::Poison && l.attempts == 1)
    );
    assert_eq!(all[0].last_error, "poison message: cannot decode bad-json");
    assert_eq!(all[1].last_error, "no message id");
    assert_eq!(p.stats().acked, 2);
}

#[tokio::test(start_paused = true)]
async fn errors_the_classifier_ignores_are_not_retried_and_ignored_answers_are_acked() {
    let (p, source) = memory::channel(8);
    publish(&p, &["a", "b"]).await;
    p.close();
    let handler = tower::service_fn(|m: Message| async move {
        match m.id() {
            "a" => Err::<u8, BoxError>("400 bad request".into()),
            _ => Ok(1),
        }
    });
    let classifier = ClassifyFn::new(|r: Result<&u8, &BoxError>| match r {
        Ok(0) => Outcome::Success,
        Ok(_) => Outcome::Ignore,
        Err(e) if e.to_string().starts_with("400") => Outcome::Ignore,
        Err(_) => Outcome::FAILURE,
    });
    let letters = Letters::default();
    let consumer = Consumer::builder()
        .classifier(classifier)
        .dead_letters(letters.sink())
        .build(source, handler)
        .unwrap();
    let summary = run_to_end(consumer.run_until(std::future::pending::<()>())).await;
    assert_eq!(
        (summary.acked, summary.redelivered, summary.dead_lettered),
        (1, 0, 1)
    );
    let all = letters.all();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].message.id(), "a");
    assert_eq!(all[0].reason, DeadLetterReason::NotRetryable);
    assert_eq!(all[0].last_error, "400 bad request");
}

#[tokio::test(start_paused = true)]
async fn a_failing_sink_never_lets_the_original_be_acked() {
    let (p, source) = memory::channel(8);
    publish(&p, &["a"]).await;
    p.close();
    let handler =
        tower::service_fn(|_: Message| async { Err::<(), BoxError>(Box::new(Poison::new("bad"))) });
    let calls = Arc::new(AtomicU32::new(0));
    let kept = Letters::default();
    let (c, into, probe) = (calls.clone(), kept.0.clone(), p.clone());
    let sink = sink_fn(move |l: &DeadLetter| {
        let n = c.fetch_add(1, SeqCst);
        // While the sink refuses, the original is never acked.
        assert_eq!(probe.stats().acked, 0);
        let r = if n < 2 {
            Err(SinkError::new("dead-letter table unavailable"))
        } else {
            into.lock().unwrap().push(l.clone());
            Ok(())
        };
        std::future::ready(r)
    });
    let consumer = Consumer::builder()
        .sink_failure_delay(3 * S)
        .dead_letters(sink)
        .build(source, handler)
        .unwrap();
    let start = Instant::now();
    let summary = run_to_end(consumer.run_until(std::future::pending::<()>())).await;
    assert_eq!(calls.load(SeqCst), 3);
    assert_eq!(summary.sink_failures, 2);
    assert_eq!((summary.redelivered, summary.dead_lettered), (2, 1));
    assert_eq!(
        start.elapsed(),
        6 * S,
        "redelivered after the sink failure delay, twice"
    );
    let all = kept.all();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].reason, DeadLetterReason::Poison);
    assert_eq!(all[0].attempts, 3);
    assert_eq!(p.stats().acked, 1);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_handler_is_a_failed_attempt() {
    let (p, source) = memory::channel(8);
    publish(&p, &["a", "b"]).await;
    p.close();
    let handler = tower::service_fn(|m: Message| async move {
        if m.id() == "a" && m.deliveries() == 1 {
            panic!("index out of bounds");
        }
        Ok::<_, BoxError>(())
    });
    let consumer = Consumer::builder()
        .dead_letters_to_broker()
        .build(source, handler)
        .unwrap();
    let summary = run_to_end(consumer.run_until(std::future::pending::<()>())).await;
    assert_eq!(summary.panicked, 1);
    assert_eq!((summary.acked, summary.redelivered), (2, 1));
    assert_eq!(p.stats().acked, 2);
}

#[tokio::test(start_paused = true)]
async fn redeliver_later_and_breaker_refusals_are_not_attempts() {
    let (p, source) = memory::channel(8);
    publish(&p, &["a"]).await;
    p.close();
    let seen: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let s = seen.clone();
    let breaker = CircuitBreakerLayer::new(
        Config::builder()
            .count_window(1)
            .minimum_calls(1)
            .failure_rate(0.5)
            .open_duration(4 * S)
            .build()
            .unwrap(),
    );
    let handler = ServiceBuilder::new()
        .layer(breaker)
        .service_fn(move |m: Message| {
            s.lock().unwrap().push(Instant::now());
            async move {
                if m.deliveries() == 1 {
                    // A failure to the breaker: it opens for 4 s and refuses the next one.
                    return Err::<(), BoxError>(Box::new(RedeliverLater::new(2 * S)));
                }
                Ok(())
            }
        });
    let consumer = Consumer::builder()
        .max_attempts(1)
        .dead_letters_to_broker()
        .build(source, handler)
        .unwrap();
    let start = Instant::now();
    let summary = run_to_end(consumer.run_until(std::future::pending::<()>())).await;
    // One attempt allowed, yet neither "not now" dead-lettered it.
    assert_eq!((summary.acked, summary.dead_lettered), (1, 0));
    assert!(summary.redelivered >= 2);
    assert_eq!(
        seen.lock().unwrap().len(),
        2,
        "the refusal never reached the handler"
    );
    // "Later" after 2 s, then the breaker's own retry-after: until it half-opens at 4 s.
    assert_eq!(start.elapsed(), 4 * S);
    assert!(p.rejected().is_empty());
}

#[tokio::test(start_paused = true)]
async fn shutdown_drains_in_flight_messages_and_leaves_the_rest_queued() {
    let (p, source) = memory::channel(16);
    publish(&p, &["a", "b", "c", "d", "e", "f"]).await;
    let done = Arc::new(AtomicU32::new(0));
    let d = done.clone();
    let handler = tower::service_fn(move |_: Message| {
        let d = d.clone();
        async move {
            tokio::time::sleep(3 * S).await;
            d.fetch_add(1, SeqCst);
            Ok::<_, BoxError>(())
        }
    });
    let consumer = Consumer::builder()
        .concurrency(2)
        .shutdown_grace(5 * S)
        .dead_letters_to_broker()
        .build(source, handler)
        .unwrap();
    let start = Instant::now();
    let summary = consumer.run_until(tokio::time::sleep(S)).await;
    assert_eq!(
        start.elapsed(),
        3 * S,
        "waited for the two in flight, no longer"
    );
    assert_eq!(
        (summary.received, summary.acked, summary.abandoned),
        (2, 2, 0)
    );
    assert_eq!(done.load(SeqCst), 2);
    let st = p.stats();
    assert_eq!(
        (st.acked, st.queued, st.unacked),
        (2, 4, 0),
        "the rest stays queued"
    );
}

#[tokio::test(start_paused = true)]
async fn handlers_still_running_after_the_grace_are_left_for_redelivery() {
    let (p, source) = memory::channel(16);
    publish(&p, &["a", "b", "c"]).await;
    let handler = tower::service_fn(|_: Message| async {
        tokio::time::sleep(60 * S).await;
        Ok::<_, BoxError>(())
    });
    let consumer = Consumer::builder()
        .concurrency(2)
        .shutdown_grace(2 * S)
        .dead_letters_to_broker()
        .build(source, handler)
        .unwrap();
    let start = Instant::now();
    let summary = consumer.run_until(tokio::time::sleep(S)).await;
    assert_eq!(start.elapsed(), 3 * S, "one second of work, two of grace");
    assert_eq!((summary.acked, summary.abandoned), (0, 2));
    // The broker got them back, counting a delivery each.
    let st = p.stats();
    assert_eq!(
        (st.acked, st.queued, st.unacked, st.redelivered),
        (0, 3, 0, 2)
    );
    let mut again = p.subscribe();
    let mut counts = Vec::new();
    for _ in 0..3 {
        counts.push(again.next().await.unwrap().unwrap().message.deliveries());
    }
    counts.sort();
    assert_eq!(counts, [1, 2, 2]);
}

#[tokio::test(start_paused = true)]
async fn never_more_handlers_than_the_concurrency() {
    let (p, source) = memory::channel(64);
    for i in 0..40 {
        p.publish(Message::new(format!("m{i}"), "test", "")).await;
    }
    p.close();
    let (now, max) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (n, m) = (now.clone(), max.clone());
    let handler = tower::service_fn(move |msg: Message| {
        let (n, m) = (n.clone(), m.clone());
        async move {
            let inside = n.fetch_add(1, SeqCst) + 1;
            m.fetch_max(inside, SeqCst);
            // Uneven durations, so slots free up in every order; some fail and come back.
            let i: u64 = msg.id()[1..].parse().unwrap();
            tokio::time::sleep(Duration::from_millis(10 + (i * 37) % 90)).await;
            n.fetch_sub(1, SeqCst);
            if i.is_multiple_of(7) && msg.deliveries() == 1 {
                return Err::<(), BoxError>("flaky".into());
            }
            Ok(())
        }
    });
    let consumer = Consumer::builder()
        .concurrency(3)
        .redelivery_backoff(Backoff::constant(Duration::from_millis(5)))
        .dead_letters_to_broker()
        .build(source, handler)
        .unwrap();
    let summary = run_to_end(consumer.run_until(std::future::pending::<()>())).await;
    assert_eq!(summary.acked, 40);
    assert_eq!(max.load(SeqCst), 3, "reached, never exceeded");
}

#[tokio::test(start_paused = true)]
async fn duplicate_deliveries_run_once_through_the_inbox() {
    let (p, source) = memory::channel(64);
    // "a" published three times (a publisher retry, an outbox relay that crashed after
    // publishing), two of them in flight at once; "b" fails once after its effect was
    // attempted and comes back.
    publish(&p, &["a", "a", "b", "a"]).await;
    p.close();
    let effects: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let e = effects.clone();
    let handler = ServiceBuilder::new()
        .layer(InboxLayer::new(MemoryStore::new()))
        .service_fn(move |m: Message| {
            let e = e.clone();
            async move {
                tokio::time::sleep(S).await;
                if m.id() == "b" && m.deliveries() == 1 {
                    return Err::<(), BoxError>("failed before its effect".into());
                }
                *e.lock().unwrap().entry(m.id().to_owned()).or_default() += 1;
                Ok(())
            }
        });
    let duplicates = Arc::new(AtomicU32::new(0));
    let d = duplicates.clone();
    let classifier = ClassifyFn::new(move |r: Result<&Inboxed<()>, &BoxError>| match r {
        Ok(Inboxed::Duplicate) => {
            d.fetch_add(1, SeqCst);
            Outcome::Success
        }
        Ok(_) => Outcome::Success,
        Err(_) => Outcome::FAILURE,
    });
    let consumer = Consumer::builder()
        .concurrency(4)
        .classifier(classifier)
        .redelivery_backoff(exact_backoff())
        .dead_letters_to_broker()
        .build(source, handler)
        .unwrap();
    let summary = run_to_end(consumer.run_until(std::future::pending::<()>())).await;
    let effects = effects.lock().unwrap().clone();
    assert_eq!(effects["a"], 1, "{effects:?}");
    assert_eq!(effects["b"], 1, "{effects:?}");
    assert_eq!(duplicates.load(SeqCst), 2, "two copies of a skipped");
    assert_eq!(summary.acked, 4);
    assert!(
        summary.redelivered >= 2,
        "a copy in flight elsewhere, b's failure: {summary:?}"
    );
    assert_eq!(p.stats().rejected, 0);
}

/// `rampart_messages_total{consumer, outcome}` and the handling-duration histogram, read back
/// with a debugging recorder the consumer binds to when built.
#[cfg(feature = "metrics")]
#[test]
fn settlements_are_counted_by_outcome() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    use tower_rampart::message::consumer::metric_names;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let (p, source) = memory::channel(8);
    rt.block_on(publish(&p, &["ok", "poison", "flaky"]));
    p.close();
    let handler = tower::service_fn(|m: Message| async move {
        match (m.id(), m.deliveries()) {
            ("poison", _) => Err::<(), BoxError>(Box::new(Poison::new("bad"))),
            ("flaky", 1) => Err("try again".into()),
            _ => Ok(()),
        }
    });
    let consumer = metrics::with_local_recorder(&recorder, || {
        Consumer::builder()
            .name("metrics-test")
            .redelivery_backoff(exact_backoff())
            .dead_letters_to_broker()
            .build(source, handler)
            .unwrap()
    });
    rt.block_on(consumer.run_until(std::future::pending::<()>()));
    let snap = snapshotter.snapshot().into_vec();
    let value = |name: &str, outcome: Option<&str>| {
        snap.iter().find_map(|(k, _, _, v)| {
            let key = k.key();
            let labels: Vec<_> = key.labels().map(|l| (l.key(), l.value())).collect();
            let ok = key.name() == name
                && labels.contains(&("consumer", "metrics-test"))
                && outcome.is_none_or(|o| labels.contains(&("outcome", o)));
            ok.then(|| match v {
                DebugValue::Counter(c) => *c,
                DebugValue::Histogram(h) => h.len() as u64,
                DebugValue::Gauge(_) => unreachable!(),
            })
        })
    };
    assert_eq!(value(metric_names::MESSAGES, Some("acked")), Some(2));
    assert_eq!(value(metric_names::MESSAGES, Some("redelivered")), Some(1));
    assert_eq!(
        value(metric_names::MESSAGES, Some("dead_lettered")),
        Some(1)
    );
    assert_eq!(value(metric_names::HANDLING_DURATION, None), Some(4));
}
