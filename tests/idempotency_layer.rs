//! The Idempotency-Key layer on a real axum server over loopback, with a real HTTP client: every
//! rule runs twice, on the memory store and on a real redis-server started by the test.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::State as Shared,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use common::outage::Outage;
use tower_rampart::idempotency::{
    DoNotStore, IDEMPOTENT_REPLAYED, IdempotencyLayer, OnStoreError, Store, problem_types,
};

#[derive(Clone)]
struct App {
    runs: Arc<AtomicUsize>,
    work: Duration,
    big: usize,
}

/// Records one execution, takes `work`, answers 201 with a body naming the run, a cookie, and
/// (for `/big`) a body of `big` bytes.
async fn pay(Shared(app): Shared<App>, headers: HeaderMap, body: Bytes) -> Response {
    tokio::time::sleep(app.work).await;
    let run = app.runs.fetch_add(1, SeqCst) + 1;
    let tenant = headers
        .get("x-tenant")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    let text = format!(
        "{{\"run\":{run},\"tenant\":\"{tenant}\",\"echo\":{}}}",
        String::from_utf8_lossy(&body)
    );
    (
        StatusCode::CREATED,
        [(header::SET_COOKIE, "session=secret")],
        text,
    )
        .into_response()
}

async fn big(Shared(app): Shared<App>) -> Response {
    app.runs.fetch_add(1, SeqCst);
    vec![b'x'; app.big].into_response()
}

async fn not_kept(Shared(app): Shared<App>) -> Response {
    let run = app.runs.fetch_add(1, SeqCst) + 1;
    let mut res = format!("run {run}").into_response();
    res.extensions_mut().insert(DoNotStore);
    res
}

async fn serve<St: Store>(
    layer: IdempotencyLayer<St>,
    work: Duration,
) -> (String, Arc<AtomicUsize>) {
    let runs = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route("/payments", post(pay).get(|| async { "list" }))
        .route("/big", post(big))
        .route("/not-kept", post(not_kept))
        .with_state(App {
            runs: runs.clone(),
            work,
            big: 4096,
        })
        .layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), runs)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn post_with(
    url: &str,
    key: Option<&str>,
    body: &'static str,
    extra: &[(&'static str, &'static str)],
) -> reqwest::Response {
    let mut req = client().post(url).body(body);
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    for (n, v) in extra {
        req = req.header(*n, *v);
    }
    req.send().await.unwrap()
}

async fn problem_type(res: reqwest::Response) -> String {
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let body = res.text().await.unwrap();
    let start = body.find("\"type\":\"").expect("a type") + 8;
    body[start..start + body[start..].find('"').unwrap()].to_owned()
}

fn layer<St: Store>(store: St) -> IdempotencyLayer<St> {
    IdempotencyLayer::builder()
        .global_keys()
        .store(store)
        .build()
        .unwrap()
}

async fn replays_byte_for_byte_without_cookies<St: Store + Clone>(store: St) {
    let (base, runs) = serve(layer(store.clone()), Duration::from_millis(10)).await;
    let url = format!("{base}/payments");
    let first = post_with(&url, Some("k-1"), "{\"amount\":10}", &[]).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    assert!(
        first.headers().get(IDEMPOTENT_REPLAYED).is_none(),
        "the first is not marked"
    );
    assert_eq!(first.headers()[header::SET_COOKIE], "session=secret");
    let first_body = first.text().await.unwrap();

    // Quoted (the draft's form) and bare name the same key.
    for key in ["\"k-1\"", "k-1"] {
        let again = post_with(&url, Some(key), "{\"amount\":10}", &[]).await;
        assert_eq!(again.status(), StatusCode::CREATED);
        assert_eq!(again.headers()[IDEMPOTENT_REPLAYED], "true");
        assert!(
            again.headers().get(header::SET_COOKIE).is_none(),
            "cookies are never replayed"
        );
        assert_eq!(again.text().await.unwrap(), first_body);
    }
    assert_eq!(runs.load(SeqCst), 1);
}

async fn refuses_bad_requests_with_problem_details<St: Store + Clone>(store: St) {
    let (base, runs) = serve(
        IdempotencyLayer::builder()
            .global_keys()
            .store(store.clone())
            .max_request_body(64)
            .build()
            .unwrap(),
        Duration::ZERO,
    )
    .await;
    let url = format!("{base}/payments");
    let res = post_with(&url, None, "{}", &[]).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(problem_type(res).await, problem_types::MISSING_KEY);

    let long = "k".repeat(256);
    let res = client()
        .post(&url)
        .header("idempotency-key", long)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(problem_type(res).await, problem_types::INVALID_KEY);

    // Two keys: which one the client meant is a guess, so neither is used.
    let res = post_with(&url, Some("k1"), "{}", &[("idempotency-key", "k2")]).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let body = res.text().await.unwrap();
    assert!(body.contains("more than one Idempotency-Key"), "{body}");

    let res = post_with(
        &url,
        Some("k"),
        "{\"padding\":\"...............................................................\"}",
        &[],
    )
    .await;
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(problem_type(res).await, problem_types::TOO_LARGE);

    assert_eq!(
        post_with(&url, Some("k"), "{\"a\":1}", &[]).await.status(),
        StatusCode::CREATED
    );
    let res = post_with(&url, Some("k"), "{\"a\":2}", &[]).await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem_type(res).await, problem_types::MISMATCH);
    assert_eq!(
        runs.load(SeqCst),
        1,
        "nothing but the one valid request ran"
    );

    // Other methods pass through untouched, key or not.
    let res = client().get(&url).send().await.unwrap();
    assert_eq!(res.text().await.unwrap(), "list");
}

async fn fifty_concurrent_duplicates_run_once<St: Store + Clone>(store: St) {
    let (base, runs) = serve(layer(store.clone()), Duration::from_millis(100)).await;
    let url = format!("{base}/payments");
    let calls: Vec<_> = (0..50)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let res = post_with(&url, Some("same"), "{\"amount\":5}", &[]).await;
                let replayed = res.headers().get(IDEMPOTENT_REPLAYED).is_some();
                // A short hint, not the whole 10 s lease.
                let retry_after = res.headers().get(header::RETRY_AFTER).cloned();
                (
                    res.status(),
                    replayed,
                    retry_after.is_some_and(|v| v == "1"),
                )
            })
        })
        .collect();
    let mut created = 0;
    for c in calls {
        match c.await.unwrap() {
            (StatusCode::CREATED, false, _) => created += 1,
            (StatusCode::CREATED, true, _) => {}
            (StatusCode::CONFLICT, _, true) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(created, 1);
    assert_eq!(runs.load(SeqCst), 1, "the handler ran exactly once");
}

async fn a_client_that_disconnects_does_not_cancel_the_handler<St: Store + Clone>(store: St) {
    let (base, runs) = serve(layer(store.clone()), Duration::from_millis(300)).await;
    let url = format!("{base}/payments");
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(50))
        .build()
        .unwrap();
    let gone = impatient
        .post(&url)
        .header("idempotency-key", "bye")
        .body("{}")
        .send()
        .await;
    assert!(gone.is_err(), "the client gave up");
    // The handler takes 300 ms; give a loaded machine room before calling it a failure.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while runs.load(SeqCst) == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(runs.load(SeqCst), 1, "the handler finished anyway");
    // The detached task stores the response just after the handler returns: until then a retry
    // is answered 409 (in flight), never run again.
    let res = loop {
        let res = post_with(&url, Some("bye"), "{}", &[]).await;
        if res.status() != StatusCode::CONFLICT || std::time::Instant::now() >= deadline {
            break res;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(res.headers()[IDEMPOTENT_REPLAYED], "true");
    assert_eq!(runs.load(SeqCst), 1);
}

async fn a_slow_handler_keeps_its_key_through_many_leases<St: Store + Clone>(store: St) {
    let lease = Duration::from_millis(300);
    let layer = IdempotencyLayer::builder()
        .global_keys()
        .store(store.clone())
        .lease(lease)
        .store_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let (base, runs) = serve(layer, lease * 5).await;
    let url = format!("{base}/payments");
    let first = tokio::spawn({
        let url = url.clone();
        async move { post_with(&url, Some("slow"), "{}", &[]).await.status() }
    });
    tokio::time::sleep(lease * 4).await;
    let dup = post_with(&url, Some("slow"), "{}", &[]).await;
    assert_eq!(
        dup.status(),
        StatusCode::CONFLICT,
        "still owned after four leases"
    );
    assert_eq!(first.await.unwrap(), StatusCode::CREATED);
    assert_eq!(runs.load(SeqCst), 1);
}

async fn too_large_responses_reach_the_first_caller_and_are_never_rerun<St: Store + Clone>(
    store: St,
) {
    let layer = IdempotencyLayer::builder()
        .global_keys()
        .store(store.clone())
        .max_response_body(1024)
        .build()
        .unwrap();
    let (base, runs) = serve(layer, Duration::ZERO).await;
    let url = format!("{base}/big");
    let first = post_with(&url, Some("big"), "{}", &[]).await;
    assert_eq!(first.bytes().await.unwrap().len(), 4096, "delivered whole");
    let again = post_with(&url, Some("big"), "{}", &[]).await;
    assert_eq!(again.status(), StatusCode::CONFLICT);
    assert_eq!(problem_type(again).await, problem_types::NOT_REPLAYABLE);
    assert_eq!(runs.load(SeqCst), 1);
}

async fn scopes_keep_principals_apart_and_unkept_responses_rerun<St: Store + Clone>(store: St) {
    let layer = IdempotencyLayer::builder()
        .store(store.clone())
        .scope(|parts| {
            parts
                .headers
                .get("x-tenant")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
        .build()
        .unwrap();
    let (base, runs) = serve(layer, Duration::ZERO).await;
    let url = format!("{base}/payments");
    let a = post_with(&url, Some("shared"), "{}", &[("x-tenant", "a")])
        .await
        .text()
        .await
        .unwrap();
    let b = post_with(&url, Some("shared"), "{}", &[("x-tenant", "b")])
        .await
        .text()
        .await
        .unwrap();
    assert!(a.contains("\"tenant\":\"a\"") && b.contains("\"tenant\":\"b\""));
    let a2 = post_with(&url, Some("shared"), "{}", &[("x-tenant", "a")])
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(a2, a, "each principal replays its own response");
    assert_eq!(runs.load(SeqCst), 2);
    let anonymous = post_with(&url, Some("shared"), "{}", &[]).await;
    assert_eq!(anonymous.status(), StatusCode::BAD_REQUEST);
    assert_eq!(problem_type(anonymous).await, problem_types::NO_PRINCIPAL);
    assert_eq!(runs.load(SeqCst), 2, "never run unscoped");

    let url = format!("{base}/not-kept");
    let one = post_with(&url, Some("nk"), "{}", &[("x-tenant", "a")])
        .await
        .text()
        .await
        .unwrap();
    let two = post_with(&url, Some("nk"), "{}", &[("x-tenant", "a")])
        .await
        .text()
        .await
        .unwrap();
    assert_ne!(one, two, "a response marked DoNotStore releases its key");
}

#[tokio::test]
async fn a_store_outage_fails_closed_or_open_as_chosen() {
    for hang in [false, true] {
        let closed = IdempotencyLayer::builder()
            .global_keys()
            .store(Outage { hang })
            .store_timeout(Duration::from_millis(100))
            .build()
            .unwrap();
        let (base, runs) = serve(closed, Duration::ZERO).await;
        let start = std::time::Instant::now();
        let res = post_with(&format!("{base}/payments"), Some("k"), "{}", &[]).await;
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "bounded by the store timeout"
        );
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(res.headers().get(header::RETRY_AFTER).is_some());
        assert_eq!(problem_type(res).await, problem_types::STORE_UNAVAILABLE);
        assert_eq!(runs.load(SeqCst), 0, "fail closed: not run");

        let open = IdempotencyLayer::builder()
            .global_keys()
            .store(Outage { hang })
            .store_timeout(Duration::from_millis(100))
            .on_store_error(OnStoreError::FailOpen)
            .build()
            .unwrap();
        let (base, runs) = serve(open, Duration::ZERO).await;
        let res = post_with(&format!("{base}/payments"), Some("k"), "{}", &[]).await;
        assert_eq!(res.status(), StatusCode::CREATED);
        assert_eq!(runs.load(SeqCst), 1, "fail open: run without protection");
    }
}

async fn a_duplicate_may_wait_for_the_first_and_get_its_replay<St: Store + Clone>(store: St) {
    let layer = IdempotencyLayer::builder()
        .global_keys()
        .store(store.clone())
        .wait_for_in_flight(Duration::from_secs(2))
        .build()
        .unwrap();
    let (base, runs) = serve(layer, Duration::from_millis(200)).await;
    let url = format!("{base}/payments");
    let first = tokio::spawn({
        let url = url.clone();
        async move {
            post_with(&url, Some("wait"), "{}", &[])
                .await
                .text()
                .await
                .unwrap()
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = post_with(&url, Some("wait"), "{}", &[]).await;
    assert_eq!(
        second.status(),
        StatusCode::CREATED,
        "waited instead of 409"
    );
    assert_eq!(second.headers()[IDEMPOTENT_REPLAYED], "true");
    assert_eq!(second.text().await.unwrap(), first.await.unwrap());
    assert_eq!(runs.load(SeqCst), 1);
}

/// Runs each rule on the memory store and on Redis.
macro_rules! on_both_stores {
    ($($rule:ident),* $(,)?) => {$(
        mod $rule {
            use super::*;

            #[tokio::test]
            async fn memory() {
                super::$rule(tower_rampart::idempotency::MemoryStore::new()).await;
            }

            #[tokio::test]
            async fn redis() {
                let server = common::redis_server::RedisServer::start();
                let store = tower_rampart::idempotency::RedisStore::connect(&server.url())
                    .await
                    .unwrap();
                super::$rule(store).await;
            }
        }
    )*};
}

on_both_stores!(
    replays_byte_for_byte_without_cookies,
    refuses_bad_requests_with_problem_details,
    fifty_concurrent_duplicates_run_once,
    a_client_that_disconnects_does_not_cancel_the_handler,
    a_slow_handler_keeps_its_key_through_many_leases,
    too_large_responses_reach_the_first_caller_and_are_never_rerun,
    scopes_keep_principals_apart_and_unkept_responses_rerun,
    a_duplicate_may_wait_for_the_first_and_get_its_replay,
);

#[test]
fn the_builder_refuses_nonsense() {
    let cases = [
        (IdempotencyLayer::builder().build().err(), "global_keys"),
        (
            IdempotencyLayer::builder()
                .global_keys()
                .methods(&[])
                .build()
                .err(),
            "methods",
        ),
        (
            IdempotencyLayer::builder()
                .global_keys()
                .lease(Duration::from_millis(1))
                .build()
                .err(),
            "lease",
        ),
        (
            IdempotencyLayer::builder()
                .global_keys()
                .ttl(Duration::from_secs(1))
                .lease(Duration::from_secs(2))
                .build()
                .err(),
            "ttl",
        ),
        (
            IdempotencyLayer::builder()
                .global_keys()
                .store_timeout(Duration::from_secs(20))
                .build()
                .err(),
            "store_timeout",
        ),
        (
            IdempotencyLayer::builder()
                .global_keys()
                .max_request_body(0)
                .build()
                .err(),
            "max_request_body",
        ),
    ];
    for (err, needle) in cases {
        let msg = err.expect(needle).to_string();
        assert!(msg.contains(needle), "{msg:?} should mention {needle}");
    }
}
