//! The owner's and the claim's faults of issue #14 (items 1, 2, 3 and 5), each reproduced
//! through the public API:
//! - durations too large to add to a clock are refused at build time, and a panic in the owner
//!   task after the handler returned completes the key as "ran, not replayable";
//! - a handler that blocks its worker thread keeps its lease (renewals run in their own task);
//! - a client that gives up while its claim is in flight does not block the key;
//! - a store outage is not multiplied by background releases and renewals.

mod common;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    http::{Request, StatusCode},
    response::IntoResponse,
    routing::post,
};
use common::http::{Answer, client, serve};
use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_rampart::{
    MAX_DURATION,
    idempotency::{
        EventKind, IdempotencyLayer, MemoryStore, problem_types,
        testing::{Fault, FaultyStore, Op},
    },
};

async fn send_key(app: &Router, key: &str) -> Answer {
    let req = Request::post("/pay")
        .header("idempotency-key", key)
        .body(Body::from("{\"amount\":1}"))
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    let (status, headers) = (res.status(), res.headers().clone());
    let body = res.into_body().collect().await.unwrap().to_bytes().to_vec();
    Answer::new(status, &headers, String::from_utf8(body).unwrap())
}

async fn send(app: &Router) -> Answer {
    send_key(app, "order-1").await
}

/// A handler at `/pay` that counts its runs and answers 201.
/// A layer over `store` with a 1 s lease and 100 ms per store call, for the outage tests.
fn short_lease(
    store: &FaultyStore<MemoryStore>,
) -> tower_rampart::idempotency::Builder<FaultyStore<MemoryStore>> {
    IdempotencyLayer::builder()
        .store(store.clone())
        .global_keys()
        .lease(Duration::from_secs(1))
        .store_timeout(Duration::from_millis(100))
}

fn counting_app(layer: IdempotencyLayer<FaultyStore<MemoryStore>>) -> (Router, Arc<AtomicUsize>) {
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    let app = Router::new()
        .route(
            "/pay",
            post(move || async move {
                counter.fetch_add(1, SeqCst);
                (StatusCode::CREATED, "{\"paid\":true}")
            }),
        )
        .layer(layer);
    (app, runs)
}

// ---------------------------------------------------------------------------------------------
// Item 1: huge durations, and panics after the handler returned.

/// Every duration setting is bounded at build time, named as in configuration files.
#[test]
fn every_duration_setting_is_bounded_at_build_time() {
    type Set = fn(
        tower_rampart::idempotency::Builder<MemoryStore>,
        Duration,
    ) -> tower_rampart::idempotency::Builder<MemoryStore>;
    let settings: [(&str, Set); 6] = [
        ("ttl", |b, d| b.ttl(d)),
        ("lease", |b, d| b.lease(d)),
        ("store_timeout", |b, d| b.store_timeout(d)),
        ("response_body_timeout", |b, d| b.response_body_timeout(d)),
        ("wait_for_in_flight", |b, d| b.wait_for_in_flight(d)),
        ("in_flight_retry_after", |b, d| b.in_flight_retry_after(d)),
    ];
    for (name, set) in settings {
        for huge in [Duration::MAX, MAX_DURATION + Duration::from_nanos(1)] {
            let b = set(IdempotencyLayer::builder().global_keys(), huge);
            let err = b.build().expect_err(name);
            assert_eq!(err.setting(), Some(name), "{err}");
            assert!(err.to_string().contains("at most one year"), "{err}");
        }
    }
}

/// Durations at the ceiling run, replay and never panic: no `Instant + Duration` overflows.
#[tokio::test(start_paused = true)]
async fn durations_at_the_ceiling_run_once_and_replay() {
    let store = FaultyStore::new(MemoryStore::new());
    let layer = IdempotencyLayer::builder()
        .store(store)
        .global_keys()
        .ttl(MAX_DURATION)
        .lease(MAX_DURATION - Duration::from_secs(1))
        .store_timeout(Duration::from_secs(1))
        .response_body_timeout(MAX_DURATION)
        .wait_for_in_flight(MAX_DURATION)
        .in_flight_retry_after(MAX_DURATION)
        .build()
        .unwrap();
    let (app, runs) = counting_app(layer);
    assert_eq!(send(&app).await.status, 201);
    let again = send(&app).await;
    assert!(again.replayed, "{again:?}");
    assert_eq!(runs.load(SeqCst), 1);
}

/// A panic in the owner task after the handler returned (its response body panics while the
/// layer reads it; the user's `keep_response_if` panics) completes the key as not replayable:
/// the handler ran, so it never runs again. A panic before it returned still frees the key.
#[tokio::test(start_paused = true)]
async fn a_panic_after_the_handler_returned_never_runs_it_again() {
    for case in ["body", "keep"] {
        let runs = Arc::new(AtomicUsize::new(0));
        let counter = runs.clone();
        let events = Arc::new(Mutex::new(Vec::new()));
        let seen = events.clone();
        let mut b = IdempotencyLayer::builder()
            .store(MemoryStore::new())
            .global_keys()
            .on_event(move |e| seen.lock().unwrap().push(e.kind));
        if case == "keep" {
            b = b.keep_response_if(|_| panic!("the user's keep function panics"));
        }
        let app = Router::new()
            .route(
                "/pay",
                post(move || async move {
                    counter.fetch_add(1, SeqCst);
                    let stream = futures_util::stream::unfold(0, move |i| async move {
                        match i {
                            0 => Some((Ok::<_, std::io::Error>(Bytes::from_static(b"{")), 1)),
                            _ if case == "body" => panic!("the response body panics"),
                            _ => None,
                        }
                    });
                    (StatusCode::CREATED, Body::from_stream(stream)).into_response()
                }),
            )
            .layer(b.build().unwrap());
        let first = send(&app).await;
        assert_eq!(first.status, 500, "{case}: {first:?}");
        assert!(first.is_problem(problem_types::HANDLER_FAILED), "{case}");
        for _ in 0..2 {
            tokio::time::sleep(Duration::from_secs(20)).await;
            let retry = send(&app).await;
            assert!(
                retry.is_problem(problem_types::NOT_REPLAYABLE),
                "{case}: the key was freed after the handler ran: {retry:?}"
            );
        }
        assert_eq!(runs.load(SeqCst), 1, "{case}: the handler ran again");
        let events = events.lock().unwrap();
        assert!(
            !events.contains(&EventKind::HandlerPanicked),
            "{case}: taken for a handler panic: {events:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Item 2: a handler that blocks its worker thread.

/// A handler that blocks its worker thread for four leases keeps its key: its renewals run on
/// the other workers, so a duplicate meanwhile gets 409 and the handler runs once. (On a
/// single-worker runtime nothing else runs while the handler blocks: see `Builder::lease`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_handler_that_blocks_its_thread_keeps_its_lease() {
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    let layer = IdempotencyLayer::builder()
        .global_keys()
        .lease(Duration::from_millis(300))
        .store_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let app = Router::new()
        .route(
            "/pay",
            post(move || async move {
                counter.fetch_add(1, SeqCst);
                // A synchronous driver: the worker thread is blocked, not the task.
                std::thread::sleep(Duration::from_millis(1200));
                (StatusCode::CREATED, "{\"paid\":true}")
            }),
        )
        .layer(layer);
    let url = format!("{}/pay", serve(app).await);
    let post = |c: reqwest::Client, url: String| async move {
        c.post(url)
            .header("idempotency-key", "blocking-1")
            .body("{}")
            .send()
            .await
            .unwrap()
            .status()
    };
    let first = tokio::spawn(post(client(), url.clone()));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let duplicate = post(client(), url.clone()).await;
    assert_eq!(first.await.unwrap(), StatusCode::CREATED);
    let last = post(client(), url).await;
    assert_eq!(
        runs.load(SeqCst),
        1,
        "two executions (duplicate answered {duplicate}, then {last})"
    );
}

/// The renewal task ends with its key: no renewal after the completion is stored, after a
/// release, or after a handler panic (nothing leaks).
#[tokio::test(start_paused = true)]
async fn renewals_end_with_their_key() {
    let store = FaultyStore::new(MemoryStore::new());
    let layer = short_lease(&store).build().unwrap();
    let app = Router::new()
        .route(
            "/pay",
            post(|body: String| async move {
                tokio::time::sleep(Duration::from_secs(2)).await;
                match body.as_str() {
                    "panic" => panic!("the handler panics"),
                    "error" => (StatusCode::INTERNAL_SERVER_ERROR, "no").into_response(),
                    _ => (StatusCode::CREATED, "{}").into_response(),
                }
            }),
        )
        .layer(layer);
    for (i, body) in ["ok", "error", "panic"].into_iter().enumerate() {
        let req = Request::post("/pay")
            .header("idempotency-key", format!("k-{i}"))
            .body(Body::from(body))
            .unwrap();
        let _ = app.clone().oneshot(req).await.unwrap();
    }
    let renewals = store.calls(Op::Renew);
    assert!(
        renewals >= 3 * 5,
        "{renewals} renewals in 3 x 2 s of 1 s leases"
    );
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        store.calls(Op::Renew),
        renewals,
        "renewals went on after their key"
    );
}

// ---------------------------------------------------------------------------------------------
// Item 3: a client that gives up while its claim is in flight.

/// The claim lands, its answer takes 50 ms, the caller gives up at 10 ms, and nobody released
/// the claim: retries at 0.5 s and 3.5 s got 409 (the whole lease). Now the abandoned claim is
/// released with its token, and the retry runs.
#[tokio::test(start_paused = true)]
async fn a_client_that_gives_up_during_the_claim_does_not_block_the_key() {
    {
        let fault = Fault::AnswerAfter(Duration::from_millis(50));
        let store = FaultyStore::new(MemoryStore::new());
        store.inject(Op::Claim, 0..1, fault);
        let layer = IdempotencyLayer::builder()
            .store(store)
            .global_keys()
            .lease(Duration::from_secs(10))
            .store_timeout(Duration::from_millis(500))
            .build()
            .unwrap();
        let (app, runs) = counting_app(layer);
        let start = tokio::time::Instant::now();
        let gave_up = tokio::time::timeout(Duration::from_millis(10), send(&app)).await;
        assert!(
            gave_up.is_err(),
            "{fault:?}: the caller should have given up"
        );
        tokio::time::sleep_until(start + Duration::from_millis(500)).await;
        let retry = send(&app).await;
        assert_eq!(retry.status, 201, "{fault:?}: {retry:?}");
        assert!(!retry.replayed, "{fault:?}");
        tokio::time::sleep_until(start + Duration::from_millis(3500)).await;
        let again = send(&app).await;
        assert!(again.replayed, "{fault:?}: {again:?}");
        assert_eq!(runs.load(SeqCst), 1, "{fault:?}");
    }
}

/// A key claimed `New` whose request dies before the owner task takes it (here a listener
/// panics on the `New` event) is released with its token, not left in flight for a lease.
#[tokio::test(start_paused = true)]
async fn a_panic_between_the_claim_and_the_owner_task_frees_the_key() {
    let panics = Arc::new(AtomicUsize::new(1));
    let layer = IdempotencyLayer::builder()
        .store(FaultyStore::new(MemoryStore::new()))
        .global_keys()
        .lease(Duration::from_secs(10))
        .on_event(move |e| {
            if e.kind == EventKind::New && panics.fetch_sub(1, SeqCst) == 1 {
                panic!("a listener panics on the first new key");
            }
        })
        .build()
        .unwrap();
    let (app, runs) = counting_app(layer);
    let first = tokio::spawn({
        let app = app.clone();
        async move { send(&app).await }
    });
    assert!(first.await.unwrap_err().is_panic());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let retry = send(&app).await;
    assert_eq!(retry.status, 201, "{retry:?}");
    assert_eq!(runs.load(SeqCst), 1);
}

// ---------------------------------------------------------------------------------------------
// Item 5: store traffic during an outage.

/// 500 requests in one second against a store that is down: each failed claim used to start a
/// release task of its own (7 releases each within a 1 s lease). Background releases are now
/// capped and share one backoff: fewer release calls than requests, and the releases shed are
/// told as events (the lease frees those keys anyway).
#[tokio::test(start_paused = true)]
async fn an_outage_is_not_multiplied_by_background_releases() {
    let store = FaultyStore::new(MemoryStore::new());
    store.inject(Op::Claim, 0.., Fault::Fail);
    store.inject(Op::Release, 0.., Fault::Fail);
    let shed = Arc::new(AtomicUsize::new(0));
    let counter = shed.clone();
    let layer = short_lease(&store)
        .on_event(move |e| {
            if e.kind == EventKind::ReleaseShed {
                counter.fetch_add(1, SeqCst);
            }
        })
        .build()
        .unwrap();
    let (app, runs) = counting_app(layer);
    let mut tasks = Vec::new();
    for i in 0..500 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            send_key(&app, &format!("k-{i}")).await.status
        }));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 503);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let releases = store.calls(Op::Release);
    println!("{releases} releases, {} shed", shed.load(SeqCst));
    assert!(
        releases < 500,
        "{releases} release calls for 500 failed claims"
    );
    assert!(shed.load(SeqCst) > 0, "no release was shed");
    assert_eq!(runs.load(SeqCst), 0);
}

/// 100 owners whose renewals fail for 5 s: renewals used to be retried every tenth of a lease
/// by each owner (about 46 each). They now back off together: a few tries while the lease
/// lasts, then at most one per lease.
#[tokio::test(start_paused = true)]
async fn an_outage_is_not_multiplied_by_renewals() {
    let store = FaultyStore::new(MemoryStore::new());
    store.inject(Op::Renew, 0.., Fault::Fail);
    let layer = short_lease(&store).build().unwrap();
    let app = Router::new()
        .route(
            "/pay",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                (StatusCode::CREATED, "{}")
            }),
        )
        .layer(layer);
    let mut tasks = Vec::new();
    for i in 0..100 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            send_key(&app, &format!("k-{i}")).await.status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 201);
    }
    let renewals = store.calls(Op::Renew);
    println!("{renewals} renewals");
    assert!(
        renewals <= 100 * 20,
        "{renewals} renewals from 100 owners in 5 s"
    );
}
