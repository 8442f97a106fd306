//! A bounded load run against two app instances sharing one real Redis (started by the test on a
//! free port), with a Redis pause in the middle: 2,000 requests over 200 keys, 10 duplicates
//! each, 100 at a time, alternating between the instances; clients retry 409 and 503 like real
//! ones. No key may run twice, a key answered 2xx ran exactly once, and every other answer is a
//! documented 409 / 503 problem.

mod common;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::post,
};
use common::redis_server::RedisServer;
use futures_util::{StreamExt, stream};
use tower_rampart::idempotency::{IdempotencyLayer, RedisStore};

const KEYS: usize = 200;
const DUPLICATES: usize = 10;
const CONCURRENCY: usize = 100;
/// Attempts per request: the first and up to 19 retries after a 409 or 503.
const ATTEMPTS: usize = 20;
/// The handler's work.
const WORK: Duration = Duration::from_millis(3);
/// A safety bound on the whole run (not an assertion on speed).
const RUN_BOUND: Duration = Duration::from_secs(120);

/// Executions per key, as the handler saw them.
type Runs = Arc<Mutex<HashMap<String, usize>>>;

async fn pay(
    State((runs, seq)): State<(Runs, Arc<AtomicUsize>)>,
    headers: HeaderMap,
) -> (StatusCode, String) {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    // Counted when the execution starts: a second start is a second charge.
    *runs.lock().unwrap().entry(key).or_default() += 1;
    tokio::time::sleep(WORK).await;
    let id = seq.fetch_add(1, SeqCst);
    (StatusCode::CREATED, format!("{{\"payment\":{id}}}"))
}

/// One app instance: its own store connection and its own layer, as a separate process would.
async fn instance(redis_url: &str, runs: Runs, seq: Arc<AtomicUsize>) -> String {
    let store = RedisStore::connect(redis_url).await.unwrap();
    let layer = IdempotencyLayer::builder()
        .store(store)
        .global_keys()
        .build()
        .unwrap();
    let router = Router::new()
        .route("/payments", post(pay))
        .with_state((runs, seq))
        .layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}/payments")
}

/// One HTTP answer as the client saw it.
struct Answer {
    status: u16,
    problem_json: bool,
    body: String,
    took: Duration,
}

/// One logical request: every attempt's answer (or transport error), last one last.
struct Outcome {
    key: usize,
    answers: Vec<Answer>,
    transport_errors: Vec<String>,
}

async fn send(client: &reqwest::Client, urls: &[String; 2], i: usize, key: usize) -> Outcome {
    let mut out = Outcome {
        key,
        answers: Vec::new(),
        transport_errors: Vec::new(),
    };
    for attempt in 0..ATTEMPTS {
        // Alternate between the instances, as a load balancer would, retries included.
        let url = &urls[(i + attempt) % 2];
        let start = Instant::now();
        let sent = client
            .post(url)
            .header("idempotency-key", format!("load-{key}"))
            .header("content-type", "application/json")
            .body(format!("{{\"amount\":{key}}}"))
            .send()
            .await;
        let retry = match sent {
            Ok(res) => {
                let status = res.status().as_u16();
                let problem_json = res
                    .headers()
                    .get("content-type")
                    .is_some_and(|v| v == "application/problem+json");
                let body = res.text().await.unwrap_or_default();
                out.answers.push(Answer {
                    status,
                    problem_json,
                    body,
                    took: start.elapsed(),
                });
                matches!(status, 409 | 503)
            }
            Err(e) => {
                out.transport_errors.push(e.to_string());
                true
            }
        };
        if !retry {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50 + fastrand::u64(0..=50))).await;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_under_load_with_a_redis_pause_run_each_key_at_most_once() {
    let started = Instant::now();
    let redis = Arc::new(RedisServer::start_with(&[
        "--enable-debug-command",
        "local",
    ]));
    let runs: Runs = Arc::default();
    let seq = Arc::new(AtomicUsize::new(0));
    let urls = [
        instance(&redis.url(), runs.clone(), seq.clone()).await,
        instance(&redis.url(), runs.clone(), seq.clone()).await,
    ];
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    // Every key DUPLICATES times, shuffled (seeded): some duplicates run side by side, others
    // long apart, on either side of the pause.
    let mut order: Vec<usize> = (0..KEYS * DUPLICATES).map(|i| i % KEYS).collect();
    fastrand::Rng::with_seed(0x5eed).shuffle(&mut order);
    let total = order.len();

    // After a third of the requests have started, Redis stops answering for a second.
    let launched = Arc::new(AtomicUsize::new(0));
    let pause = {
        let (redis, launched) = (redis.clone(), launched.clone());
        tokio::spawn(async move {
            let deadline = Instant::now() + RUN_BOUND;
            while launched.load(SeqCst) < total / 3 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let at = Instant::now();
            // DEBUG SLEEP blocks this redis-cli call (and Redis) for its duration.
            let reply = tokio::task::spawn_blocking(move || redis.cli(&["DEBUG", "SLEEP", "1"]))
                .await
                .unwrap();
            (reply, at, at.elapsed())
        })
    };

    let load = stream::iter(order.into_iter().enumerate())
        .map(|(i, key)| {
            let (client, urls, launched) = (&client, &urls, &launched);
            async move {
                launched.fetch_add(1, SeqCst);
                send(client, urls, i, key).await
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<Outcome>>();
    let outcomes = tokio::time::timeout(RUN_BOUND, load)
        .await
        .expect("the load run is bounded");
    let (pause_reply, pause_at, pause_took) = pause.await.unwrap();

    // Tally.
    let runs = runs.lock().unwrap().clone();
    let mut ok_bodies: HashMap<usize, Vec<&str>> = HashMap::new();
    let (mut answers, mut by_status) = (0, HashMap::<u16, usize>::new());
    let (mut slow, mut final_ok) = (0, 0);
    let mut transport_errors = Vec::new();
    for o in &outcomes {
        transport_errors.extend(o.transport_errors.iter().cloned());
        if o.answers
            .last()
            .is_some_and(|a| (200..300).contains(&a.status))
        {
            final_ok += 1;
        }
        for a in &o.answers {
            answers += 1;
            *by_status.entry(a.status).or_default() += 1;
            if a.took >= Duration::from_millis(500) {
                slow += 1;
            }
            if (200..300).contains(&a.status) {
                ok_bodies.entry(o.key).or_default().push(&a.body);
            } else {
                assert!(
                    matches!(a.status, 409 | 503) && a.problem_json,
                    "key {}: undocumented answer {} (problem+json: {}): {}",
                    o.key,
                    a.status,
                    a.problem_json,
                    a.body
                );
            }
        }
    }
    let mut statuses: Vec<_> = by_status.iter().collect();
    statuses.sort();
    eprintln!(
        "{total} requests, {answers} answers {statuses:?}, {final_ok} ended 2xx, {} keys answered \
         2xx, {} keys executed, {slow} answers >= 500 ms, {} transport errors; DEBUG SLEEP 1 -> \
         {pause_reply:?} at +{:?} ({:?}); wall {:?}",
        ok_bodies.len(),
        runs.len(),
        transport_errors.len(),
        pause_at - started,
        pause_took,
        started.elapsed(),
    );

    assert_eq!(outcomes.len(), total);
    assert!(
        transport_errors.is_empty(),
        "every request got an HTTP answer: {:?}",
        &transport_errors[..transport_errors.len().min(5)]
    );
    // The pause happened, and the load saw it.
    assert_eq!(pause_reply.as_deref(), Some("OK"), "DEBUG SLEEP ran");
    assert!(
        by_status.get(&503).copied().unwrap_or(0) > 0 || slow > 0,
        "the Redis pause was visible to clients (503s or answers held through it)"
    );
    // At most once, everywhere.
    for (key, n) in &runs {
        assert!(*n <= 1, "key {key} executed {n} times");
    }
    // A 2xx means it ran exactly once, and every 2xx for a key is that one execution's answer.
    for (key, bodies) in &ok_bodies {
        assert_eq!(
            runs.get(&format!("load-{key}")).copied(),
            Some(1),
            "key load-{key} was answered 2xx"
        );
        assert!(
            bodies.iter().all(|b| b == &bodies[0]),
            "key load-{key}: replays differ from the first answer: {bodies:?}"
        );
    }
    // Not vacuous: most keys got through despite the pause.
    assert!(
        ok_bodies.len() >= KEYS / 2,
        "only {} of {KEYS} keys were answered 2xx",
        ok_bodies.len()
    );
}
