//! Exactly-once under faults: every store operation (claim, renew, complete, release) and the
//! response body read meet every fault (fail, lose the answer, slow past the timeout, lose the
//! write, lease expired, answer late after taking effect), with duplicates arriving before,
//! during and after it, on tokio's paused clock, through a real axum `Router`; plus the rows of
//! issue #14 (a panic after the handler returned, a caller that gives up while its claim is in
//! flight, a store down for every operation). For every schedule:
//! - the payment commits at most once (the handler fences its commit with the owner token and
//!   the lease, as the README's Guarantees section tells users to);
//! - without a lost write or a lost lease, the handler runs at most once;
//! - every answer is a documented status;
//! - no key is stuck: one lease after the faults clear, a retry is answered (replay or run).

mod common;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

use axum::{
    Extension, Router,
    body::{Body, Bytes},
    extract::State,
    http::{Request, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use common::http::Answer;
use http_body_util::BodyExt;
use proptest::prelude::*;
use tower::ServiceExt;
use tower_rampart::idempotency::{
    DoNotStore, IdempotencyContext, IdempotencyLayer, MemoryStore, OnStoreError, problem_types,
    testing::{Fault, FaultyStore, Op},
};

const LEASE: Duration = Duration::from_secs(1);
const STORE_TIMEOUT: Duration = Duration::from_millis(100);
const WORK: Duration = Duration::from_secs(3);
const SLOW: Duration = Duration::from_millis(300);

#[derive(Clone, Default)]
struct Ledger {
    invocations: Arc<AtomicUsize>,
    commits: Arc<AtomicUsize>,
    /// Payments by idempotency key, with the owner token that wrote them: the unique
    /// constraint that fences a stale owner.
    rows: Arc<Mutex<HashMap<String, u128>>>,
    /// Invocations that panic before committing (to exercise release).
    panics_left: Arc<AtomicUsize>,
}

async fn pay(
    State(ledger): State<Ledger>,
    Extension(ctx): Extension<IdempotencyContext>,
) -> Response {
    let n = ledger.invocations.fetch_add(1, SeqCst) + 1;
    tokio::time::sleep(WORK).await;
    if ledger
        .panics_left
        .fetch_update(SeqCst, SeqCst, |p| p.checked_sub(1))
        .is_ok()
    {
        panic!("the handler fails before committing");
    }
    if !ctx.lease().is_held() {
        // Nothing was done: do not keep this answer, so that a retry runs.
        let mut res =
            (StatusCode::SERVICE_UNAVAILABLE, "lease lost: not committed").into_response();
        res.extensions_mut().insert(DoNotStore);
        return res;
    }
    let mut rows = ledger.rows.lock().unwrap();
    if rows.contains_key(&*ctx.key) {
        return (StatusCode::CONFLICT, "already processed").into_response();
    }
    rows.insert(ctx.key.to_string(), ctx.token.as_u128());
    ledger.commits.fetch_add(1, SeqCst);
    (StatusCode::CREATED, format!("{{\"run\":{n}}}")).into_response()
}

/// A body that trickles out over `chunks` pauses of `every`.
async fn slow_body(
    State(ledger): State<Ledger>,
    Extension(ctx): Extension<IdempotencyContext>,
) -> Response {
    let chunks = 4;
    let every = LEASE * 2;
    let n = ledger.invocations.fetch_add(1, SeqCst) + 1;
    ledger.rows.lock().unwrap().insert(ctx.key.to_string(), 0);
    ledger.commits.fetch_add(1, SeqCst);
    let stream = futures_util::stream::unfold(0, move |i| async move {
        if i == chunks {
            return None;
        }
        tokio::time::sleep(every).await;
        Some((
            Ok::<_, std::io::Error>(Bytes::from(format!("run {n} part {i};"))),
            i + 1,
        ))
    });
    (StatusCode::CREATED, Body::from_stream(stream)).into_response()
}

/// Commits, then its response body panics while the layer reads it (after the handler
/// returned): the key must be kept as not replayable, never freed for a second run.
async fn panicky_body(
    State(ledger): State<Ledger>,
    Extension(ctx): Extension<IdempotencyContext>,
) -> Response {
    ledger.invocations.fetch_add(1, SeqCst);
    ledger.rows.lock().unwrap().insert(ctx.key.to_string(), 0);
    ledger.commits.fetch_add(1, SeqCst);
    let stream = futures_util::stream::unfold(0, |i| async move {
        if i == 1 {
            panic!("the response body panics after the handler returned");
        }
        tokio::time::sleep(SLOW).await;
        Some((Ok::<_, std::io::Error>(Bytes::from_static(b"{")), 1))
    });
    (StatusCode::CREATED, Body::from_stream(stream)).into_response()
}

fn app(store: FaultyStore<MemoryStore>, ledger: Ledger, body_timeout: Duration) -> Router {
    let layer = IdempotencyLayer::builder()
        .store(store)
        .global_keys()
        .lease(LEASE)
        .store_timeout(STORE_TIMEOUT)
        .ttl(Duration::from_secs(3600))
        .response_body_timeout(body_timeout)
        .build()
        .unwrap();
    Router::new()
        .route("/pay", post(pay))
        .route("/slow-body", post(slow_body))
        .route("/panicky-body", post(panicky_body))
        .with_state(ledger)
        .layer(layer)
}

/// `pay` at `/pay` behind `layer`, paying into `ledger`.
fn pay_app(layer: IdempotencyLayer<FaultyStore<MemoryStore>>, ledger: &Ledger) -> Router {
    Router::new()
        .route("/pay", post(pay))
        .with_state(ledger.clone())
        .layer(layer)
}

/// A memory store that meets `fault` on the `calls`-th calls of `op`.
fn faulty(op: Op, calls: std::ops::Range<usize>, fault: Fault) -> FaultyStore<MemoryStore> {
    let store = FaultyStore::new(MemoryStore::new());
    store.inject(op, calls, fault);
    store
}

async fn send(app: &Router, path: &str) -> Answer {
    let req = Request::post(path)
        .header("idempotency-key", "order-1")
        .body(Body::from("{\"amount\":1}"))
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    let (status, headers) = (res.status(), res.headers().clone());
    let body = res.into_body().collect().await.unwrap().to_bytes().to_vec();
    Answer::new(status, &headers, String::from_utf8(body).unwrap())
}

/// The statuses the README documents for this layer and this handler.
fn documented(a: &Answer) {
    let ok = match a.status {
        201 => a.problem.is_none(),
        409 => {
            a.problem.as_deref() == Some(problem_types::IN_FLIGHT)
                || a.problem.as_deref() == Some(problem_types::NOT_REPLAYABLE)
                || a.body == "already processed"
        }
        503 => {
            a.problem.as_deref() == Some(problem_types::STORE_UNAVAILABLE)
                || a.body == "lease lost: not committed"
        }
        500 => {
            a.problem.as_deref() == Some(problem_types::HANDLER_FAILED)
                || a.problem.as_deref() == Some(problem_types::UNREADABLE_RECORD)
        }
        _ => false,
    };
    assert!(ok, "undocumented answer {a:?}");
}

struct Scenario {
    name: String,
    path: &'static str,
    rules: Vec<(Op, std::ops::Range<usize>, Fault)>,
    panics: usize,
    body_timeout: Duration,
    /// Duplicates sent at these offsets from the first request.
    duplicates: Vec<Duration>,
    /// The first caller gives up after this long (client gone, an outer timeout).
    gives_up: Option<Duration>,
}

struct Outcome {
    invocations: usize,
    commits: usize,
    commits_before_last: usize,
    answers: Vec<Answer>,
    last: Answer,
}

async fn run(s: &Scenario) -> Outcome {
    let store = FaultyStore::new(MemoryStore::new());
    for (op, calls, fault) in &s.rules {
        store.inject(*op, calls.clone(), *fault);
    }
    let ledger = Ledger::default();
    ledger.panics_left.store(s.panics, SeqCst);
    let app = app(store.clone(), ledger.clone(), s.body_timeout);

    let start = tokio::time::Instant::now();
    let mut tasks = vec![tokio::spawn({
        let (app, path, gives_up) = (app.clone(), s.path, s.gives_up);
        async move {
            let patience = gives_up.unwrap_or(Duration::MAX);
            tokio::time::timeout(patience, send(&app, path)).await.ok()
        }
    })];
    for at in &s.duplicates {
        let (app, at, path) = (app.clone(), start + *at, s.path);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            Some(send(&app, path).await)
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.extend(t.await.unwrap());
    }
    // The faults clear; one lease later the key must be answered, not stuck.
    let healed = tokio::time::Instant::now().max(start + Duration::from_secs(12));
    tokio::time::sleep_until(healed).await;
    store.heal();
    tokio::time::sleep(LEASE + LEASE / 2).await;
    let commits_before_last = ledger.commits.load(SeqCst);
    let last = send(&app, s.path).await;
    Outcome {
        commits_before_last,
        invocations: ledger.invocations.load(SeqCst),
        commits: ledger.commits.load(SeqCst),
        answers,
        last,
    }
}

fn check(s: &Scenario, o: &Outcome, lossy: bool) {
    let name = &s.name;
    assert!(o.commits <= 1, "{name}: {} commits", o.commits);
    if !lossy {
        assert!(
            o.invocations <= 1 + s.panics,
            "{name}: the handler ran {} times",
            o.invocations
        );
    }
    for a in o.answers.iter().chain([&o.last]) {
        documented(a);
    }
    let stuck = o.last.problem.as_deref() == Some(problem_types::IN_FLIGHT)
        || o.last.status == StatusCode::SERVICE_UNAVAILABLE;
    assert!(
        !stuck,
        "{name}: still stuck after the faults cleared: {:?}",
        o.last
    );
    if o.commits_before_last == 1 && o.last.status == StatusCode::CREATED {
        assert!(
            o.last.replayed,
            "{name}: committed, then ran again: {:?}",
            o.last
        );
    }
    // Replays give the first caller's answer, byte for byte.
    let first_ok: Vec<_> = o
        .answers
        .iter()
        .chain([&o.last])
        .filter(|a| a.status == StatusCode::CREATED)
        .map(|a| &a.body)
        .collect();
    assert!(
        first_ok.windows(2).all(|w| w[0] == w[1]),
        "{name}: two different successful answers {first_ok:?}"
    );
}

fn every(step: Duration, until: Duration) -> Vec<Duration> {
    let n = (until.as_millis() / step.as_millis()) as u32;
    (1..=n).map(|i| step * i).collect()
}

/// Every operation x every fault, with duplicates every 250 ms for 9 s (before, during and
/// after each fault point).
#[tokio::test(start_paused = true)]
async fn every_fault_point_keeps_exactly_once() {
    let faults = [
        ("fail", Fault::Fail, false),
        ("lose-answer", Fault::LoseAnswer, false),
        ("slow", Fault::Delay(SLOW), false),
        ("lose-write", Fault::LoseWrite, true),
        ("expire-lease", Fault::ExpireLease, true),
        ("answer-late", Fault::AnswerAfter(SLOW), false),
    ];
    let ops = [
        (Op::Claim, 0..1, 0),
        (Op::Renew, 0..2, 0),
        (Op::Renew, 0..40, 0),
        (Op::Complete, 0..3, 0),
        (Op::Release, 0..3, 1),
    ];
    let mut ran = 0;
    for (op, calls, panics) in ops {
        for (fname, fault, lossy) in faults {
            // A long renewal outage loses the lease (the handler is told; its commit is
            // fenced); so does a lost or expired lease.
            let lossy = lossy || (op == Op::Renew && calls.end > 2);
            let s = Scenario {
                name: format!("{op:?} {calls:?} {fname}"),
                path: "/pay",
                rules: vec![(op, calls.clone(), fault)],
                panics,
                body_timeout: Duration::from_secs(30),
                duplicates: every(Duration::from_millis(250), Duration::from_secs(9)),
                gives_up: None,
            };
            let o = run(&s).await;
            check(&s, &o, lossy);
            ran += 1;
        }
    }
    assert_eq!(ran, 30);
}

/// The rows of issue #14: a panic in the owner after the handler returned (item 1), a first
/// caller that gives up while its claim is in flight (item 3), and a store down for every
/// operation under duplicates (item 5: exactly-once with the shared backoff; the traffic
/// bounds are counted in `tests/idempotency_owner_faults.rs`). Item 2 (a handler that blocks
/// its thread) needs a multi-thread runtime: `tests/idempotency_owner_faults.rs`.
#[tokio::test(start_paused = true)]
async fn issue_14_rows_keep_exactly_once() {
    let outage = |op| (op, 0..40, Fault::Fail);
    let rows = [
        ("panic after return", "/panicky-body", vec![], None),
        (
            "gives up, the claim lands, its answer is late",
            "/pay",
            vec![(
                Op::Claim,
                0..1,
                Fault::AnswerAfter(Duration::from_millis(50)),
            )],
            Some(Duration::from_millis(10)),
        ),
        (
            "store down for every operation",
            "/pay",
            [Op::Claim, Op::Renew, Op::Complete, Op::Release]
                .map(outage)
                .to_vec(),
            None,
        ),
    ];
    for (name, path, rules, gives_up) in rows {
        let s = Scenario {
            name: name.to_owned(),
            path,
            rules,
            panics: 0,
            body_timeout: Duration::from_secs(30),
            duplicates: every(Duration::from_millis(250), Duration::from_secs(9)),
            gives_up,
        };
        let o = run(&s).await;
        check(&s, &o, false);
        if gives_up.is_some() {
            // The first duplicate (250 ms) runs: the abandoned claim did not block the key.
            assert_eq!(o.invocations, 1, "{name}");
            assert_eq!(o.answers[0].status, 201, "{name}: {:?}", o.answers[0]);
        }
        if path == "/panicky-body" {
            assert_eq!(o.invocations, 1, "{name}");
            assert_eq!(
                o.last.problem.as_deref(),
                Some(problem_types::NOT_REPLAYABLE)
            );
        }
    }
}

/// The lease is held while a slow response body is read (here 8 s, eight leases), and a body
/// slower than the body timeout is completed as not replayable: never released, never rerun.
#[tokio::test(start_paused = true)]
async fn the_lease_holds_while_the_body_is_read() {
    for (timeout, whole) in [
        (Duration::from_secs(30), true),
        (Duration::from_secs(3), false),
    ] {
        let s = Scenario {
            name: format!("body read, timeout {timeout:?}"),
            path: "/slow-body",
            rules: vec![],
            panics: 0,
            body_timeout: timeout,
            duplicates: every(Duration::from_millis(500), Duration::from_secs(10)),
            gives_up: None,
        };
        let o = run(&s).await;
        check(&s, &o, false);
        assert_eq!(o.invocations, 1, "{}", s.name);
        let first = &o.answers[0];
        assert_eq!(
            first.body.matches("part").count(),
            4,
            "the first caller gets it all"
        );
        if whole {
            assert!(o.last.replayed && o.last.body == first.body, "{:?}", o.last);
        } else {
            assert_eq!(
                o.last.problem.as_deref(),
                Some(problem_types::NOT_REPLAYABLE)
            );
        }
    }
}

/// A response body that fails after the handler answered: the handler ran, so the key is
/// completed as not replayable, never released for a second run.
#[tokio::test(start_paused = true)]
async fn a_body_that_fails_midway_is_never_rerun() {
    let ledger = Ledger::default();
    let runs = ledger.invocations.clone();
    let layer = IdempotencyLayer::builder()
        .store(MemoryStore::new())
        .global_keys()
        .build()
        .unwrap();
    let app = Router::new()
        .route(
            "/pay",
            post(move || async move {
                runs.fetch_add(1, SeqCst);
                let parts = futures_util::stream::iter([
                    Ok(Bytes::from_static(b"{\"id\":")),
                    Err(std::io::Error::other("the database connection dropped")),
                ]);
                (StatusCode::CREATED, Body::from_stream(parts))
            }),
        )
        .layer(layer);
    let first = send(&app, "/pay").await;
    assert_eq!(first.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        first.problem.as_deref(),
        Some(problem_types::HANDLER_FAILED)
    );
    for _ in 0..3 {
        tokio::time::sleep(LEASE * 2).await;
        let retry = send(&app, "/pay").await;
        assert_eq!(
            retry.problem.as_deref(),
            Some(problem_types::NOT_REPLAYABLE)
        );
    }
    assert_eq!(ledger.invocations.load(SeqCst), 1);
}

/// A claim that lands after the layer gave up on it is released with its token, so a retry a
/// moment later runs instead of meeting a 409 for a whole lease.
#[tokio::test(start_paused = true)]
async fn a_claim_that_timed_out_does_not_block_the_key() {
    let store = faulty(Op::Claim, 0..1, Fault::Delay(Duration::from_millis(400)));
    let ledger = Ledger::default();
    let layer = IdempotencyLayer::builder()
        .store(store.clone())
        .global_keys()
        .lease(Duration::from_secs(10))
        .store_timeout(STORE_TIMEOUT)
        .build()
        .unwrap();
    let app = pay_app(layer, &ledger);
    let first = send(&app, "/pay").await;
    assert_eq!(first.status, StatusCode::SERVICE_UNAVAILABLE);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let retry = send(&app, "/pay").await;
    assert_eq!(retry.status, StatusCode::CREATED, "{retry:?}");
    assert_eq!(ledger.invocations.load(SeqCst), 1);
}

/// A record that cannot be read is never taken for a free key, not even when the layer fails
/// open for a store that is down; it is answered 500 and the handler does not run.
#[tokio::test(start_paused = true)]
async fn an_unreadable_record_never_runs_the_handler() {
    for on_error in [OnStoreError::FailClosed, OnStoreError::FailOpen] {
        let store = faulty(Op::Claim, 0..2, Fault::Corrupt);
        let ledger = Ledger::default();
        let layer = IdempotencyLayer::builder()
            .store(store.clone())
            .global_keys()
            .on_store_error(on_error)
            .build()
            .unwrap();
        let app = pay_app(layer, &ledger);
        for _ in 0..2 {
            let a = send(&app, "/pay").await;
            assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR, "{on_error:?}");
            assert_eq!(a.problem.as_deref(), Some(problem_types::UNREADABLE_RECORD));
        }
        assert_eq!(ledger.invocations.load(SeqCst), 0, "{on_error:?}");
        // Once the record reads again (here: the fault ends), the key works.
        assert_eq!(send(&app, "/pay").await.status, StatusCode::CREATED);
    }
}

/// The handler learns that it lost its key: `lease().lost()` resolves when a renewal finds
/// another owner, and when renewals fail for longer than a lease.
#[tokio::test(start_paused = true)]
async fn the_handler_observes_a_lost_lease() {
    for (fault, calls) in [(Fault::ExpireLease, 0..1), (Fault::Fail, 0..100)] {
        let store = faulty(Op::Renew, calls, fault);
        let lost_after = Arc::new(Mutex::new(None));
        let layer = IdempotencyLayer::builder()
            .store(store)
            .global_keys()
            .lease(LEASE)
            .store_timeout(STORE_TIMEOUT)
            .build()
            .unwrap();
        let seen = lost_after.clone();
        let app = Router::new()
            .route(
                "/pay",
                post(
                    move |Extension(ctx): Extension<IdempotencyContext>| async move {
                        let start = tokio::time::Instant::now();
                        tokio::select! {
                            _ = ctx.lease().lost() => {
                                *seen.lock().unwrap() = Some(start.elapsed());
                                StatusCode::SERVICE_UNAVAILABLE
                            }
                            _ = tokio::time::sleep(Duration::from_secs(60)) => StatusCode::CREATED,
                        }
                    },
                ),
            )
            .layer(layer);
        let a = send(&app, "/pay").await;
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{fault:?}");
        let after = lost_after.lock().unwrap().expect("lost");
        assert!(after <= LEASE * 2, "{fault:?}: told after {after:?}");
    }
}

#[derive(Debug, Clone)]
struct Rule(Op, usize, usize, Fault);

fn rule() -> impl Strategy<Value = Rule> {
    let op = prop_oneof![
        Just(Op::Claim),
        Just(Op::Renew),
        Just(Op::Complete),
        Just(Op::Release)
    ];
    let fault = prop_oneof![
        Just(Fault::Fail),
        Just(Fault::LoseAnswer),
        (1u64..1500).prop_map(|ms| Fault::Delay(Duration::from_millis(ms))),
        Just(Fault::LoseWrite),
        Just(Fault::ExpireLease),
        Just(Fault::Corrupt),
        (1u64..1500).prop_map(|ms| Fault::AnswerAfter(Duration::from_millis(ms))),
    ];
    (op, 0usize..6, 1usize..12, fault).prop_map(|(op, from, len, f)| Rule(op, from, len, f))
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Random fault schedules: at most one commit, documented answers, no stuck key.
    #[test]
    fn random_fault_schedules_keep_exactly_once(
        rules in proptest::collection::vec(rule(), 0..4),
        dups in proptest::collection::vec(0u64..9000, 1..12),
        panics in 0usize..2,
    ) {
        let lossy = rules.iter().any(|Rule(op, _, len, f)| {
            matches!(f, Fault::LoseWrite | Fault::ExpireLease)
                || (*op == Op::Renew && *len > 2)
                || matches!(f, Fault::Delay(d) | Fault::AnswerAfter(d)
                    if *d >= STORE_TIMEOUT && *op != Op::Claim)
        });
        let s = Scenario {
            name: format!("{rules:?} panics {panics}"),
            path: "/pay",
            rules: rules.iter().map(|Rule(op, from, len, f)| (*op, *from..from + len, *f)).collect(),
            panics,
            body_timeout: Duration::from_secs(30),
            duplicates: dups.iter().map(|ms| Duration::from_millis(*ms)).collect(),
            gives_up: None,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let o = rt.block_on(run(&s));
        check(&s, &o, lossy);
    }
}
