//! The retry layer on paused time: limits, delays, hints, budgets, method safety, replay.

mod common;

use std::{
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering::SeqCst},
    },
    time::Duration,
};

use bytes::Bytes;
use common::events::{RetryEvents, retry_events};
use http::{Request, Response, StatusCode};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};
use tower_rampart::{
    BoxError,
    backoff::Backoff,
    circuit_breaker::{CircuitBreakerLayer, CircuitOpen, Config},
    classify::HttpStatus,
    retry::{
        Budget, BufferBodyLayer, DelayCause, EventKind, GiveUp, HttpReplay, RetryLayer,
        SetIdempotencyKeyLayer,
    },
};

fn constant(ms: u64) -> Backoff {
    Backoff::constant(Duration::from_millis(ms))
}

/// A service that fails its first `failures` calls, counting calls.
fn flaky(
    failures: u32,
) -> (
    Arc<AtomicU32>,
    impl Service<u32, Response = u32, Error = &'static str, Future: Send> + Clone,
) {
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let svc = service_fn(move |x: u32| {
        let n = seen.fetch_add(1, SeqCst);
        async move { if n < failures { Err("flaky") } else { Ok(x) } }
    });
    (calls, svc)
}

#[tokio::test(start_paused = true)]
async fn retries_until_success_with_the_backoff_delays() {
    let (calls, inner) = flaky(2);
    let (log, listener) = retry_events();
    let layer = RetryLayer::builder()
        .max_attempts(3)
        .backoff(constant(100))
        .on_event(listener)
        .build()
        .unwrap();
    let mut svc = layer.layer(inner);
    let start = Instant::now();
    assert_eq!(send(&mut svc, 7).await.unwrap(), 7);
    assert_eq!(calls.load(SeqCst), 3);
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(200),
        "two waits of 100 ms"
    );
    let delay = Duration::from_millis(100);
    assert_eq!(
        *log.lock().unwrap(),
        vec![
            EventKind::Retry {
                attempt: 2,
                delay,
                after_error: true,
                cause: DelayCause::Backoff,
            },
            EventKind::Retry {
                attempt: 3,
                delay,
                after_error: true,
                cause: DelayCause::Backoff,
            },
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn gives_up_after_max_attempts_with_the_last_error() {
    let (calls, inner) = flaky(10);
    let (log, listener) = retry_events();
    let mut svc = RetryLayer::builder()
        .max_attempts(4)
        .backoff(constant(10))
        .on_event(listener)
        .build()
        .unwrap()
        .layer(inner);
    let err = send(&mut svc, 1).await.unwrap_err();
    assert_eq!(err.to_string(), "flaky");
    assert_eq!(calls.load(SeqCst), 4);
    assert_gave_up(&log, 4, GiveUp::Attempts);
}

#[tokio::test(start_paused = true)]
async fn max_elapsed_stops_before_a_late_retry() {
    let (calls, inner) = flaky(10);
    let (log, listener) = retry_events();
    let mut svc = RetryLayer::builder()
        .max_attempts(10)
        .max_elapsed(Duration::from_millis(250))
        .backoff(constant(100))
        .on_event(listener)
        .build()
        .unwrap()
        .layer(inner);
    send(&mut svc, 1).await.unwrap_err();
    // Attempts at 0, 100 and 200 ms; one at 300 ms would pass the limit.
    assert_eq!(calls.load(SeqCst), 3);
    assert_gave_up(&log, 3, GiveUp::Elapsed);
}

/// One call through `svc` once it is ready.
async fn send<S: Service<R>, R>(svc: &mut S, req: R) -> Result<S::Response, S::Error>
where
    S::Error: std::fmt::Debug,
{
    svc.ready().await.unwrap().call(req).await
}

/// The last retry event was giving up after `attempts`, for `reason`.
fn assert_gave_up(log: &RetryEvents, attempts: u32, reason: GiveUp) {
    assert_eq!(
        log.lock().unwrap().last(),
        Some(&EventKind::GaveUp { attempts, reason })
    );
}

/// An empty HTTP answer with `status`.
fn answer(status: u16) -> Response<Bytes> {
    Response::builder()
        .status(status)
        .body(Bytes::new())
        .unwrap()
}

/// An empty `GET path`.
fn get(path: &str) -> Request<Bytes> {
    Request::get(path).body(Bytes::new()).unwrap()
}

type Times = Arc<Mutex<Vec<Instant>>>;

/// An HTTP service answering the statuses (and Retry-After values) in `script`, then 200.
fn scripted(
    script: Vec<(u16, Option<&'static str>)>,
) -> (
    Times,
    impl Service<Request<Bytes>, Response = Response<Bytes>, Error = Infallible, Future: Send> + Clone,
) {
    let times = Arc::new(Mutex::new(Vec::new()));
    let seen = times.clone();
    let script = Arc::new(script);
    let svc = service_fn(move |_req: Request<Bytes>| {
        let n = {
            let mut t = seen.lock().unwrap();
            t.push(Instant::now());
            t.len() - 1
        };
        let (status, retry_after) = script.get(n).copied().unwrap_or((200, None));
        async move {
            let mut res = Response::builder().status(status);
            if let Some(r) = retry_after {
                res = res.header("retry-after", r);
            }
            Ok::<_, Infallible>(res.body(Bytes::new()).unwrap())
        }
    });
    (times, svc)
}

fn http_retry(builder: tower_rampart::retry::Builder) -> RetryLayer<HttpStatus, HttpReplay> {
    builder
        .build()
        .unwrap()
        .classify(HttpStatus::retryable())
        .replay(HttpReplay::default())
}

#[tokio::test(start_paused = true)]
async fn retry_after_replaces_the_backoff() {
    let (times, inner) = scripted(vec![(503, Some("2")), (429, None)]);
    let mut svc = http_retry(RetryLayer::builder().backoff(constant(10))).layer(inner);
    let res = send(&mut svc, get("/")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let t = times.lock().unwrap();
    assert_eq!(t.len(), 3);
    assert_eq!(t[1] - t[0], Duration::from_secs(2), "Retry-After: 2");
    assert_eq!(
        t[2] - t[1],
        Duration::from_millis(10),
        "no hint: the backoff"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hint_beyond_the_cap_ends_retrying() {
    let (times, inner) = scripted(vec![(503, Some("3600"))]);
    let (log, listener) = retry_events();
    let mut svc = http_retry(
        RetryLayer::builder()
            .retry_after(Some(Duration::from_secs(30)))
            .on_event(listener),
    )
    .layer(inner);
    let res = send(&mut svc, get("/")).await.unwrap();
    assert_eq!(
        res.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "the last outcome, as it was"
    );
    assert_eq!(times.lock().unwrap().len(), 1);
    assert_eq!(
        *log.lock().unwrap(),
        vec![EventKind::GaveUp {
            attempts: 1,
            reason: GiveUp::RetryAfter
        }]
    );
}

#[tokio::test(start_paused = true)]
async fn post_is_retried_only_with_an_idempotency_key() {
    let post = |key: Option<&str>| {
        let mut b = Request::post("/payments");
        if let Some(k) = key {
            b = b.header("idempotency-key", k);
        }
        b.body(Bytes::from_static(b"{}")).unwrap()
    };
    // (what, statuses answered before a 200, max attempts if not the default, request,
    // final status, calls made)
    let cases = [
        (
            "POST without a key is not retried",
            vec![503],
            None,
            post(None),
            StatusCode::SERVICE_UNAVAILABLE,
            1,
        ),
        (
            "POST with a key is retried",
            vec![503],
            None,
            post(Some("\"k\"")),
            StatusCode::OK,
            2,
        ),
        (
            "PUT is retried",
            vec![500, 502, 504],
            Some(4),
            Request::put("/x").body(Bytes::new()).unwrap(),
            StatusCode::OK,
            4,
        ),
        (
            "501 will not change",
            vec![501],
            None,
            get("/x"),
            StatusCode::NOT_IMPLEMENTED,
            1,
        ),
    ];
    for (what, statuses, max_attempts, req, status, calls) in cases {
        let (times, inner) = scripted(statuses.into_iter().map(|s| (s, None)).collect());
        let mut builder = RetryLayer::builder().backoff(constant(1));
        if let Some(n) = max_attempts {
            builder = builder.max_attempts(n);
        }
        let mut svc = http_retry(builder).layer(inner);
        let res = send(&mut svc, req).await.unwrap();
        assert_eq!(
            (res.status(), times.lock().unwrap().len()),
            (status, calls),
            "{what}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn the_key_layer_gives_every_attempt_the_same_key() {
    let keys = Arc::new(Mutex::new(Vec::new()));
    let seen = keys.clone();
    let inner = service_fn(move |req: Request<Bytes>| {
        let mut k = seen.lock().unwrap();
        k.push(req.headers()["idempotency-key"].clone());
        let status = if k.len() < 3 { 503 } else { 201 };
        async move { Ok::<_, Infallible>(answer(status)) }
    });
    let mut svc = ServiceBuilder::new()
        .layer(SetIdempotencyKeyLayer::new())
        .layer(http_retry(RetryLayer::builder().backoff(constant(1))))
        .service(inner);
    for _ in 0..2 {
        keys.lock().unwrap().clear();
        let req = Request::post("/payments")
            .body(Bytes::from_static(b"{}"))
            .unwrap();
        let res = send(&mut svc, req).await.unwrap();
        assert_eq!(res.status(), StatusCode::CREATED);
        let k = keys.lock().unwrap();
        assert_eq!(k.len(), 3);
        assert!(k.iter().all(|x| *x == k[0]), "{k:?}");
        assert!(k[0].to_str().unwrap().starts_with('"'));
    }
}

#[tokio::test(start_paused = true)]
async fn a_budget_shared_by_clones_stops_a_retry_storm() {
    let (calls, inner) = flaky(u32::MAX);
    let (log, listener) = retry_events();
    let layer = RetryLayer::builder()
        .max_attempts(3)
        .backoff(constant(1))
        .budget(Budget::token_bucket(4, 0.1).unwrap())
        .on_event(listener)
        .build()
        .unwrap();
    let mut a = layer.layer(inner.clone());
    let mut b = a.clone();
    // 4 tokens: retries only while more than 2 remain. The first call spends 1 token per failed
    // attempt: 4 -> 3 (retry) -> 2 (no more: 2 is not more than half).
    send(&mut a, 1).await.unwrap_err();
    assert_eq!(calls.load(SeqCst), 2);
    send(&mut b, 1).await.unwrap_err();
    assert_eq!(calls.load(SeqCst), 3, "the clone shares the empty budget");
    let reasons: Vec<_> = log
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            EventKind::GaveUp { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect();
    assert_eq!(reasons, [GiveUp::Budget, GiveUp::Budget]);
}

#[tokio::test(start_paused = true)]
async fn circuit_open_refusals_are_not_retried_unless_asked() {
    for retry_open in [false, true] {
        let (calls, inner) = flaky(0);
        let breaker = CircuitBreakerLayer::new(Config::builder().build().unwrap());
        breaker.handle().force_open();
        let mut svc = ServiceBuilder::new()
            .layer(
                RetryLayer::builder()
                    .max_attempts(3)
                    .backoff(constant(1))
                    .retry_circuit_open(retry_open)
                    .build()
                    .unwrap(),
            )
            .layer(breaker.clone())
            .service(inner);
        let start = Instant::now();
        let err: BoxError = send(&mut svc, 1).await.unwrap_err();
        assert!(err.downcast_ref::<CircuitOpen>().is_some());
        assert_eq!(calls.load(SeqCst), 0);
        let waited = start.elapsed();
        assert_eq!(
            waited,
            Duration::from_millis(if retry_open { 2 } else { 0 })
        );
    }
}

/// The retry layer asks its classifier what a refusal is: a classifier that calls another
/// breaker's error a refusal stops retrying on it, as on a `CircuitOpen`.
#[tokio::test(start_paused = true)]
async fn the_classifier_says_what_a_refusal_is() {
    use tower_rampart::classify::{Classify, Outcome};

    #[derive(Clone)]
    struct FlakyIsRefusal;

    impl Classify<u32, &'static str> for FlakyIsRefusal {
        fn classify(&self, result: Result<&u32, &&'static str>) -> Outcome {
            if result.is_ok() {
                Outcome::Success
            } else {
                Outcome::FAILURE
            }
        }

        fn is_refusal(&self, error: &&'static str) -> bool {
            *error == "flaky"
        }
    }

    let (calls, inner) = flaky(5);
    let (log, listener) = retry_events();
    let mut svc = RetryLayer::builder()
        .max_attempts(3)
        .backoff(constant(1))
        .on_event(listener)
        .build()
        .unwrap()
        .classify(FlakyIsRefusal)
        .layer(inner);
    send(&mut svc, 1).await.unwrap_err();
    assert_eq!(calls.load(SeqCst), 1, "a refusal is not retried");
    assert_gave_up(&log, 1, GiveUp::CircuitOpen);
}

/// A request that counts its clones.
#[derive(Debug)]
struct Counted(Arc<AtomicU32>);

impl Clone for Counted {
    fn clone(&self) -> Self {
        self.0.fetch_add(1, SeqCst);
        Counted(self.0.clone())
    }
}

#[tokio::test(start_paused = true)]
async fn no_needless_copies() {
    for (max_attempts, failures, expected_clones) in
        [(1, 0, 0), (1, 5, 0), (3, 0, 1), (3, 5, 2), (5, 5, 4)]
    {
        let clones = Arc::new(AtomicU32::new(0));
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let inner = service_fn(move |_: Counted| {
            let n = c.fetch_add(1, SeqCst);
            async move { if n < failures { Err("no") } else { Ok(()) } }
        });
        let mut svc = RetryLayer::builder()
            .max_attempts(max_attempts)
            .backoff(constant(1))
            .build()
            .unwrap()
            .layer(inner);
        let _ = send(&mut svc, Counted(clones.clone())).await;
        assert_eq!(
            clones.load(SeqCst),
            expected_clones,
            "max {max_attempts}, {failures} failures"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn buffered_bodies_are_replayed_and_large_ones_sent_once() {
    use futures_util::stream;
    use http_body_util::{BodyExt, StreamBody};

    let bodies = Arc::new(Mutex::new(Vec::new()));
    let seen = bodies.clone();
    let inner = service_fn(move |req: Request<tower_rampart::retry::Buffered<_>>| {
        let seen = seen.clone();
        async move {
            let bytes = req
                .into_body()
                .collect()
                .await
                .map_err(|e: BoxError| e)?
                .to_bytes();
            let mut b = seen.lock().unwrap();
            b.push(bytes);
            let status = if b.len() % 2 == 1 { 503 } else { 200 };
            Ok::<_, BoxError>(answer(status))
        }
    });
    let mut svc = ServiceBuilder::new()
        .layer(BufferBodyLayer::new(16))
        .layer(http_retry(RetryLayer::builder().backoff(constant(1))))
        .service(inner);
    let streaming = |chunks: Vec<&'static [u8]>| {
        StreamBody::new(stream::iter(chunks.into_iter().map(|c| {
            Ok::<_, BoxError>(http_body::Frame::data(Bytes::from_static(c)))
        })))
    };
    let small = Request::put("/doc")
        .body(streaming(vec![b"hello ", b"world"]))
        .unwrap();
    let res = send(&mut svc, small).await.unwrap();
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "retried with the buffered body"
    );
    assert_eq!(*bodies.lock().unwrap(), vec![Bytes::from("hello world"); 2]);

    bodies.lock().unwrap().clear();
    let large = Request::put("/doc")
        .body(streaming(vec![b"0123456789", b"0123456789", b"tail"]))
        .unwrap();
    let res = send(&mut svc, large).await.unwrap();
    assert_eq!(
        res.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "sent once, not retried"
    );
    assert_eq!(
        *bodies.lock().unwrap(),
        vec![Bytes::from("01234567890123456789tail")],
        "the part read for buffering is sent first, nothing lost"
    );
}

#[tokio::test(start_paused = true)]
async fn a_leaked_retry_layer_behaves_the_same() {
    let (calls, inner) = flaky(2);
    let (log, listener) = retry_events();
    let layer = RetryLayer::builder()
        .max_attempts(3)
        .max_elapsed(Duration::from_secs(1))
        .backoff(constant(100))
        .budget(Budget::token_bucket(10, 0.5).unwrap())
        .on_event(listener)
        .build()
        .unwrap()
        .leak();
    let mut a = layer.layer(inner.clone());
    let mut b = layer.clone().layer(inner);
    let start = Instant::now();
    assert_eq!(send(&mut a, 5).await.unwrap(), 5);
    assert_eq!(start.elapsed(), Duration::from_millis(200));
    assert_eq!(send(&mut b, 6).await.unwrap(), 6);
    assert_eq!(calls.load(SeqCst), 4);
    assert_eq!(
        log.lock().unwrap().len(),
        2,
        "two retries, reported by the shared listener"
    );
}

#[tokio::test(start_paused = true)]
async fn every_outcome_settles_with_the_budget_also_without_a_retry() {
    // Failures take a token each and successes give back a share, through the layer, also for
    // calls that never retry (one attempt, and successes on the first attempt); shared and
    // leaked layers alike.
    for leaked in [false, true] {
        let budget = Budget::token_bucket(10, 0.5).unwrap();
        let (_, inner) = flaky(4);
        let layer = RetryLayer::builder()
            .max_attempts(1)
            .budget(budget.clone())
            .build()
            .unwrap();
        let layer = if leaked { layer.leak() } else { layer };
        let mut svc = layer.layer(inner);
        for _ in 0..4 {
            assert!(send(&mut svc, 1).await.is_err());
        }
        assert_eq!(budget.remaining(Instant::now()), 6.0);
        for _ in 0..3 {
            assert_eq!(send(&mut svc, 1).await.unwrap(), 1);
        }
        assert_eq!(budget.remaining(Instant::now()), 7.5);
    }
}
