//! A circuit breaker's refusal is never retried, whichever way the breaker answers it: a
//! `CircuitOpen` error (error mode) or its own 503 with `Retry-After` (`respond_http` mode).
//! Real layers over real HTTP: an axum server, a reqwest client, retry > breaker > client.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::http::StatusCode;
use common::{
    breakers::one_probe,
    events::{RetryEvents, retried_once_then_gave_up, retry_events},
    http::{client, serve},
};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_rampart::{
    backoff::Backoff,
    circuit_breaker::{CircuitBreakerLayer, CircuitOpen, Config, State},
    classify::{Classify, HttpStatus},
    retry::{EventKind, GiveUp, HttpReplay, RetryLayer},
};

/// An axum server on a port the OS picks, answering `status` to any request on `/`; its base
/// URL and its hit count.
async fn server(status: StatusCode) -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let seen = hits.clone();
    let app = axum::Router::new().route(
        "/",
        axum::routing::any(move || {
            seen.fetch_add(1, Ordering::SeqCst);
            async move { status }
        }),
    );
    (format!("{}/", serve(app).await), hits)
}

/// One `GET url` through `svc`.
async fn get<S>(svc: &mut S, http: &reqwest::Client, url: &str) -> Result<S::Response, S::Error>
where
    S: Service<reqwest::Request>,
    S::Error: std::fmt::Debug,
{
    let req = http.get(url).build().unwrap();
    svc.ready().await.unwrap().call(req).await
}

/// A reqwest response read into an `http::Response<Bytes>`, a body a breaker in `respond_http`
/// mode can answer with.
async fn into_http(res: reqwest::Response) -> Result<http::Response<bytes::Bytes>, reqwest::Error> {
    let mut head = http::Response::builder().status(res.status());
    *head.headers_mut().unwrap() = res.headers().clone();
    let body = res.bytes().await?;
    Ok(head.body(body).unwrap())
}

/// A retry layer that would retry a plain 503 (honouring `Retry-After` up to 30 s), recording
/// its events.
fn retry(retry_circuit_open: bool) -> (RetryLayer<HttpStatus, HttpReplay>, RetryEvents) {
    let (events, sink) = retry_events();
    let layer = RetryLayer::builder()
        .name("client")
        .max_attempts(3)
        .backoff(Backoff::constant(Duration::from_millis(10)))
        .retry_circuit_open(retry_circuit_open)
        .on_event(sink)
        .build()
        .unwrap()
        .classify(HttpStatus::retryable())
        .replay(HttpReplay::default());
    (layer, events)
}

/// Opens at the first failure for `open`, then lets one probe through.
fn breaker(open: Duration) -> CircuitBreakerLayer<HttpStatus> {
    let config = one_probe(open).name("downstream").build().unwrap();
    CircuitBreakerLayer::new(config).classify(HttpStatus::default())
}

fn gave_up(events: &RetryEvents) -> Vec<EventKind> {
    events.lock().unwrap().clone()
}

/// The events of a retry that was refused at its first attempt and gave up.
const REFUSED_ONCE: [EventKind; 1] = [EventKind::GaveUp {
    attempts: 1,
    reason: GiveUp::CircuitOpen,
}];

/// Retry > breaker in `respond_http` mode > reqwest client (its responses as `http::Response`,
/// the body type a breaker can answer with).
macro_rules! http_mode_stack {
    ($retry:expr, $breaker:expr, $client:expr) => {
        ServiceBuilder::new()
            .layer($retry)
            .layer($breaker)
            .and_then(into_http)
            .service($client)
    };
}

/// Retry > breaker in error mode > reqwest client.
macro_rules! error_mode_stack {
    ($retry:expr, $breaker:expr, $client:expr) => {
        ServiceBuilder::new()
            .layer($retry)
            .layer($breaker)
            .service($client)
    };
}

/// The axum shape of the issue: the breaker answers its 503 with `Retry-After: 1`; the retry
/// outside must neither honour it nor walk into the half-open period as a probe.
#[tokio::test]
async fn breakers_503_is_not_retried() {
    let (url, hits) = server(StatusCode::INTERNAL_SERVER_ERROR).await;
    let http = client();
    let breaker = breaker(Duration::from_secs(1)).respond_http();
    // One failing call opens the breaker.
    let mut direct = ServiceBuilder::new()
        .layer(breaker.clone())
        .and_then(into_http)
        .service(http.clone());
    let res = get(&mut direct, &http, &url).await.unwrap();
    assert_eq!(res.status(), 500);
    assert_eq!(breaker.handle().state(), State::Open);
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    let (retry, events) = retry(false);
    let mut stack = http_mode_stack!(retry, breaker.clone(), http.clone());
    let started = Instant::now();
    let res = get(&mut stack, &http, &url).await.unwrap();
    let took = started.elapsed();
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "1", "the breaker's own 503");
    assert!(res.extensions().get::<CircuitOpen>().is_some());
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "the downstream is not reached"
    );
    assert_eq!(gave_up(&events), REFUSED_ONCE, "refused once, not retried");
    assert!(
        took < Duration::from_millis(500),
        "no Retry-After sleep: {took:?}"
    );
}

#[tokio::test]
async fn forced_open_breakers_503_comes_back_at_once() {
    let (url, hits) = server(StatusCode::OK).await;
    let http = client();
    let breaker = breaker(Duration::from_secs(30)).respond_http();
    breaker.handle().force_open();
    let (retry, events) = retry(false);
    let mut stack = http_mode_stack!(retry, breaker, http.clone());
    let res = get(&mut stack, &http, &url).await.unwrap();
    assert_eq!(res.status(), 503);
    assert!(res.extensions().get::<CircuitOpen>().is_some());
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    assert_eq!(gave_up(&events), REFUSED_ONCE);
}

/// The same stacks with the breaker in error mode: a `CircuitOpen` error, not retried.
#[tokio::test]
async fn error_mode_refusal_is_not_retried() {
    let (url, hits) = server(StatusCode::INTERNAL_SERVER_ERROR).await;
    let http = client();
    let breaker = breaker(Duration::from_secs(1));
    let (retry, events) = retry(false);
    let mut stack = error_mode_stack!(retry, breaker.clone(), http.clone());
    // The first attempt fails (500) and opens the breaker; the second is refused: no more.
    let started = Instant::now();
    let err = get(&mut stack, &http, &url).await.unwrap_err();
    assert!(err.downcast_ref::<CircuitOpen>().is_some(), "{err}");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    let events = gave_up(&events);
    assert!(
        retried_once_then_gave_up(&events, GiveUp::CircuitOpen),
        "{events:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(500));

    breaker.handle().force_open();
    let (retry, events) = self::retry(false);
    let mut stack = error_mode_stack!(retry, breaker, http.clone());
    let err = get(&mut stack, &http, &url).await.unwrap_err();
    assert!(err.downcast_ref::<CircuitOpen>().is_some(), "{err}");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert_eq!(gave_up(&events), REFUSED_ONCE);
}

/// The same answer to "is this a refusal?" for both forms, from the one classifier method.
#[test]
fn one_question_for_both_modes() {
    let config = Config::builder().name("b").build().unwrap();
    let layer = CircuitBreakerLayer::new(config.clone()).respond_http();
    layer.handle().force_open();
    let refused: http::Response<bytes::Bytes> = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
        .block_on(async {
            let mut svc = tower::Layer::layer(
                &layer,
                tower::service_fn(|_: ()| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(bytes::Bytes::new()))
                }),
            );
            svc.ready().await.unwrap().call(()).await.unwrap()
        });
    let c = HttpStatus::default();
    type E = tower_rampart::BoxError;
    assert!(c.is_refused(Ok::<_, &E>(&refused)));
    let open: E = refused
        .extensions()
        .get::<CircuitOpen>()
        .unwrap()
        .clone()
        .into();
    assert!(<HttpStatus as Classify<http::Response<bytes::Bytes>, E>>::is_refused(&c, Err(&open)));
    let plain = http::Response::builder()
        .status(503)
        .body(bytes::Bytes::new())
        .unwrap();
    assert!(!c.is_refused(Ok::<_, &E>(&plain)));
    // The gRPC classifier and a reqwest response converted from the breaker's answer agree.
    assert!(tower_rampart::classify::GrpcResponse::default().is_refused(Ok::<_, &E>(&refused)));
    let as_reqwest = reqwest::Response::from(refused);
    assert!(c.is_refused(Ok::<_, &E>(&as_reqwest)));
}

/// The README's promise, word for word, and both of its halves.
#[tokio::test]
async fn readme_claim_refusals_retried_only_when_asked() {
    let claim = "A circuit breaker's refusal is never retried unless `retry_circuit_open(true)`.";
    assert!(include_str!("../README.md").contains(claim));
    let (url, hits) = server(StatusCode::OK).await;
    let http = client();

    for respond_http in [false, true] {
        for asked in [false, true] {
            let breaker = breaker(Duration::from_secs(30));
            breaker.handle().force_open();
            let (retry, events) = retry(asked);
            let (status, refused) = if respond_http {
                let mut stack = http_mode_stack!(retry, breaker.respond_http(), http.clone());
                let res = get(&mut stack, &http, &url).await.unwrap();
                (
                    Some(res.status()),
                    res.extensions().get::<CircuitOpen>().is_some(),
                )
            } else {
                let mut stack = error_mode_stack!(retry, breaker, http.clone());
                let err = get(&mut stack, &http, &url).await.unwrap_err();
                (None, err.downcast_ref::<CircuitOpen>().is_some())
            };
            assert!(refused, "respond_http {respond_http}");
            assert!(status.is_none_or(|s| s == 503));
            let events = gave_up(&events);
            let retries = events
                .iter()
                .filter(|e| matches!(e, EventKind::Retry { .. }))
                .count();
            let reason = events.iter().find_map(|e| match e {
                EventKind::GaveUp { reason, .. } => Some(*reason),
                _ => None,
            });
            let expected = if asked {
                (2, Some(GiveUp::Attempts))
            } else {
                (0, Some(GiveUp::CircuitOpen))
            };
            assert_eq!((retries, reason), expected, "respond_http {respond_http}");
        }
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "a forced-open breaker lets nothing through"
    );
}
