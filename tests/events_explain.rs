//! Events that explain: a retry says where its delay came from, and every event of one logical
//! call, through breaker, retry, timeout and fallback, carries the same call id.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

use axum::{http::StatusCode, response::IntoResponse};
use bytes::Bytes;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_rampart::{
    BoxError,
    backoff::Backoff,
    call::CallId,
    circuit_breaker::{self, CircuitBreakerLayer, Config},
    classify::HttpStatus,
    fallback::{self, FallbackLayer, Trigger},
    retry::{self, DelayCause, EventKind, GiveUp, RetryLayer},
    timeout::{self, TimeoutLayer},
};

/// An axum server on a port the OS picks: the first request gets a 503 with `Retry-After: 1`,
/// the second a plain 500, the others a 200.
async fn server() -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let seen = hits.clone();
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(move || {
            let n = seen.fetch_add(1, SeqCst);
            async move {
                match n {
                    0 => (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "1")]).into_response(),
                    1 => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                    _ => StatusCode::OK.into_response(),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, hits)
}

#[tokio::test]
async fn a_retry_says_whether_its_delay_came_from_retry_after_or_the_backoff() {
    let (url, hits) = server().await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let retry = RetryLayer::builder()
        .name("api")
        .max_attempts(3)
        .backoff(Backoff::constant(Duration::from_millis(10)))
        .on_event(move |e: &retry::Event<'_>| seen.lock().unwrap().push((e.call, e.kind)))
        .build()
        .unwrap()
        .classify(HttpStatus::retryable());
    let mut svc = ServiceBuilder::new()
        .layer(retry)
        .service(service_fn(move |url: String| {
            let http = http.clone();
            async move {
                let res = http.get(url).send().await?;
                let mut head = http::Response::builder().status(res.status());
                *head.headers_mut().unwrap() = res.headers().clone();
                Ok::<_, reqwest::Error>(head.body(res.bytes().await?).unwrap())
            }
        }));
    let res: http::Response<Bytes> = svc.ready().await.unwrap().call(url).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(hits.load(SeqCst), 3);
    let events = events.lock().unwrap().clone();
    assert_eq!(
        events.iter().map(|(_, k)| *k).collect::<Vec<_>>(),
        vec![
            EventKind::Retry {
                attempt: 2,
                delay: Duration::from_secs(1),
                after_error: false,
                cause: DelayCause::RetryAfter,
            },
            EventKind::Retry {
                attempt: 3,
                delay: Duration::from_millis(10),
                after_error: false,
                cause: DelayCause::Backoff,
            },
        ],
        "the 503's Retry-After, then the backoff after the plain 500"
    );
    assert_eq!(events[0].0, events[1].0, "one logical call, one id");
}

/// What every layer reported: (layer, call id, what).
type Log = Arc<Mutex<Vec<(&'static str, CallId, String)>>>;

#[tokio::test(start_paused = true)]
async fn every_event_of_one_call_carries_its_id_through_the_whole_stack() {
    let log = Log::default();
    let (l1, l2, l3, l4) = (log.clone(), log.clone(), log.clone(), log.clone());
    let breaker = CircuitBreakerLayer::new(
        Config::builder()
            .name("ledger")
            .consecutive_failures(10)
            .on_event(move |e: &circuit_breaker::Event<'_>| {
                let call = e.call.expect("every outcome belongs to a call");
                l1.lock()
                    .unwrap()
                    .push(("breaker", call, format!("{:?}", e.kind)));
            })
            .build()
            .unwrap(),
    );
    let retry = RetryLayer::builder()
        .max_attempts(2)
        .backoff(Backoff::constant(Duration::from_millis(10)))
        .on_event(move |e: &retry::Event<'_>| {
            l2.lock()
                .unwrap()
                .push(("retry", e.call, format!("{:?}", e.kind)));
        })
        .build()
        .unwrap();
    let attempt_timeout = TimeoutLayer::new(Duration::from_millis(100))
        .unwrap()
        .on_event(move |e: &timeout::Event| {
            l3.lock()
                .unwrap()
                .push(("timeout", e.call, format!("{:?}", e.kind)));
        });
    let fallback = FallbackLayer::value("degraded")
        .on(&[Trigger::Timeout, Trigger::CircuitOpen])
        .on_event(move |e: &fallback::Event| {
            l4.lock()
                .unwrap()
                .push(("fallback", e.call, format!("{:?}", e.kind)));
        });
    // The id the service inside sees, for each attempt.
    let inside = Arc::new(Mutex::new(Vec::new()));
    let seen = inside.clone();
    let mut svc = ServiceBuilder::new()
        .layer(fallback)
        .layer(retry)
        .layer(breaker)
        .layer(attempt_timeout)
        .service(service_fn(move |slow: bool| {
            seen.lock().unwrap().push(CallId::current().unwrap());
            async move {
                if slow {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Ok::<_, BoxError>("fresh")
            }
        }));

    // Both attempts time out: two timeouts, two breaker failures, a retry, a give-up and the
    // fallback's answer, all for one call.
    assert_eq!(
        svc.ready().await.unwrap().call(true).await.unwrap(),
        "degraded"
    );
    let first = std::mem::take(&mut *log.lock().unwrap());
    let layers: Vec<_> = first.iter().map(|(layer, _, _)| *layer).collect();
    assert_eq!(
        layers,
        [
            "timeout", "breaker", "retry", "timeout", "breaker", "retry", "fallback"
        ],
        "{first:#?}"
    );
    assert!(first[2].2.contains("Retry"), "{first:#?}");
    assert!(
        first[5].2.contains(&format!("{:?}", GiveUp::Attempts)),
        "{first:#?}"
    );
    let id = first[0].1;
    assert!(
        first.iter().all(|(_, call, _)| *call == id),
        "one id for the whole call: {first:#?}"
    );
    let inside = std::mem::take(&mut *inside.lock().unwrap());
    assert_eq!(inside, [id, id], "each attempt runs inside the same call");

    // A second call: its own id, shared by its events (here the breaker's success).
    assert_eq!(
        svc.ready().await.unwrap().call(false).await.unwrap(),
        "fresh"
    );
    let second = std::mem::take(&mut *log.lock().unwrap());
    assert_eq!(second.len(), 1, "{second:#?}");
    assert_eq!(second[0].0, "breaker");
    assert_ne!(second[0].1, id, "two calls, two ids");
    assert_eq!(
        CallId::current(),
        None,
        "no call in scope outside the stack"
    );
}

#[tokio::test(start_paused = true)]
async fn an_id_in_scope_is_reused_and_operator_events_have_none() {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let saw = calls.clone();
    let breaker = CircuitBreakerLayer::new(
        Config::builder()
            .on_event(move |e: &circuit_breaker::Event<'_>| {
                saw.lock().unwrap().push((e.call, e.kind))
            })
            .build()
            .unwrap(),
    );
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let timeout = TimeoutLayer::new(Duration::from_millis(5))
        .unwrap()
        .on_event(move |e: &timeout::Event| seen.lock().unwrap().push(*e));
    let mut svc = ServiceBuilder::new()
        .layer(breaker.clone())
        .layer(timeout)
        .service(service_fn(|_: ()| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, BoxError>(())
        }));
    // A caller's own id (e.g. from a request header) is used by the layers it calls.
    let mine = CallId::next();
    let future = mine.scope(|| svc.call(()));
    assert!(future.await.is_err());
    let events = events.lock().unwrap().clone();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].call, mine);
    assert_eq!(
        events[0].kind,
        timeout::EventKind::Elapsed {
            after: Duration::from_millis(5)
        }
    );
    assert!(mine.get() > 0 && mine.to_string() == mine.get().to_string());
    // An operator's reset happens outside any call.
    breaker.handle().reset();
    let calls = calls.lock().unwrap().clone();
    assert!(
        matches!(calls[0], (Some(c), circuit_breaker::EventKind::Failure { .. }) if c == mine),
        "{calls:?}"
    );
    assert!(
        matches!(
            calls.last(),
            Some((None, circuit_breaker::EventKind::Reset { .. }))
        ),
        "{calls:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn idempotency_events_carry_the_id_of_the_call_a_layer_outside_opened() {
    use axum::{Router, body::Body, routing::post};
    use tower_rampart::idempotency::{self, IdempotencyLayer, MemoryStore};

    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let app = Router::new()
        .route("/pay", post(|| async { "paid" }))
        .layer(
            IdempotencyLayer::builder()
                .store(MemoryStore::default())
                .global_keys()
                .on_event(move |e: &idempotency::Event<'_>| {
                    seen.lock().unwrap().push((e.call, e.kind))
                })
                .build()
                .unwrap(),
        )
        .layer(
            TimeoutLayer::new(Duration::from_secs(5))
                .unwrap()
                .respond_http(),
        );
    for key in ["a", "b"] {
        let req = http::Request::post("/pay")
            .header("idempotency-key", key)
            .body(Body::from("{}"))
            .unwrap();
        assert_eq!(app.clone().oneshot(req).await.unwrap().status(), 200);
    }
    let events = events.lock().unwrap().clone();
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(
        events
            .iter()
            .all(|(_, k)| *k == idempotency::EventKind::New)
    );
    assert!(events[0].0.is_some(), "{events:?}");
    assert_ne!(events[0].0, events[1].0, "two requests, two ids");
}
