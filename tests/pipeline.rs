//! The standard pipelines against real servers on 127.0.0.1: a reqwest client through the
//! client pipeline, an axum router behind the server pipeline.

mod common;

use std::{
    convert::Infallible,
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::State as Shared,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{any, get},
};
use common::{
    events::{RetryEvents, retry_events},
    flaky::{Hits, counting_server, status},
    http::{client as http, get_text, never, serve_addr as serve},
};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_rampart::{
    BoxError,
    backoff::Backoff,
    circuit_breaker::{CircuitOpen, Config, State},
    fallback::Trigger,
    pipeline::{StandardClientLayer, StandardServerLayer},
    retry::{Event, EventKind, RetryLayer},
};

/// `/flaky/{n}` fails its first `n` hits with 503 (with `Retry-After` when asked), then 200.
async fn flaky(
    Shared(log): Shared<Hits>,
    axum::extract::Path(n): axum::extract::Path<usize>,
    headers: HeaderMap,
) -> Response {
    let hit = log.hit();
    if hit <= n {
        let mut res = (StatusCode::SERVICE_UNAVAILABLE, "busy").into_response();
        if let Some(ra) = headers.get("x-want-retry-after") {
            res.headers_mut().insert("retry-after", ra.clone());
        }
        res
    } else {
        (StatusCode::OK, format!("ok after {hit}")).into_response()
    }
}

fn pipeline(listener: impl Fn(&Event<'_>) + Send + Sync + 'static) -> StandardClientLayer {
    StandardClientLayer::builder()
        .name("test-client")
        .total_timeout(Duration::from_secs(10))
        .attempt_timeout(Duration::from_secs(2))
        .replace_retry(
            RetryLayer::builder()
                .max_attempts(3)
                .backoff(Backoff::constant(Duration::from_millis(20)))
                .on_event(listener),
        )
        .build()
        .unwrap()
}

/// A flaky server, a reqwest client and the client through the standard pipeline.
struct Flaky {
    log: Hits,
    addr: std::net::SocketAddr,
    events: RetryEvents,
    client: reqwest::Client,
    svc: tower_rampart::pipeline::StandardClient<reqwest::Client>,
}

/// One call through `svc` once it is ready.
async fn send<S: Service<R>, R>(svc: &mut S, req: R) -> Result<S::Response, S::Error>
where
    S::Error: std::fmt::Debug,
{
    svc.ready().await.unwrap().call(req).await
}

/// Serves `/flaky/{n}`; its hits and its address.
async fn flaky_server() -> (Hits, std::net::SocketAddr) {
    let log = Hits::default();
    let addr = serve(
        Router::new()
            .route("/flaky/{n}", any(flaky))
            .with_state(log.clone()),
    )
    .await;
    (log, addr)
}

impl Flaky {
    async fn start() -> Flaky {
        let (log, addr) = flaky_server().await;
        let (events, listener) = retry_events();
        let client = http();
        let svc = ServiceBuilder::new()
            .layer(pipeline(listener))
            .service(client.clone());
        Flaky {
            log,
            addr,
            events,
            client,
            svc,
        }
    }

    /// The URL of `/flaky/{n}`: fails its first `n` hits.
    fn url(&self, n: usize) -> String {
        format!("http://{}/flaky/{n}", self.addr)
    }

    /// Sends `req` through the pipeline; it must get an answer.
    async fn send(&mut self, req: reqwest::RequestBuilder) -> reqwest::Response {
        send(&mut self.svc, req.build().unwrap()).await.unwrap()
    }
}

#[tokio::test]
async fn reqwest_through_the_pipeline_retries_and_counts() {
    let mut f = Flaky::start().await;
    let res = f.send(f.client.get(f.url(2))).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.text().await.unwrap(), "ok after 3");
    assert_eq!(f.log.times().len(), 3);
    let retries = f
        .events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, EventKind::Retry { .. }))
        .count();
    assert_eq!(retries, 2);
}

#[tokio::test]
async fn retry_after_one_second_delays_the_next_attempt() {
    let mut f = Flaky::start().await;
    let req = f.client.get(f.url(1)).header("x-want-retry-after", "1");
    let res = f.send(req).await;
    assert_eq!(res.status(), StatusCode::OK);
    let t = f.log.times();
    let gap = t[1] - t[0];
    assert!(
        gap >= Duration::from_millis(950) && gap < Duration::from_millis(1900),
        "{gap:?}"
    );
}

#[tokio::test]
async fn post_is_retried_only_with_a_key() {
    let mut f = Flaky::start().await;

    let res = f.send(f.client.post(f.url(1)).body("{}")).await;
    assert_eq!(
        res.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "POST without a key: once"
    );
    assert_eq!(f.log.times().len(), 1);

    let req = f
        .client
        .post(f.url(2))
        .header("idempotency-key", "\"order-42\"")
        .body("{}");
    let res = f.send(req).await;
    assert_eq!(res.status(), StatusCode::OK, "POST with a key: retried");
    assert_eq!(f.log.times().len(), 3);
}

#[tokio::test]
async fn a_streaming_body_is_sent_once() {
    let mut f = Flaky::start().await;
    let chunks: Vec<Result<&'static [u8], Infallible>> = vec![Ok(b"a"), Ok(b"b")];
    let req = f
        .client
        .put(f.url(1))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )));
    let res = f.send(req).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(f.log.times().len(), 1);
    assert!(matches!(
        f.events.lock().unwrap().last(),
        Some(EventKind::GaveUp {
            reason: tower_rampart::retry::GiveUp::NotRetryable,
            ..
        })
    ));
}

#[tokio::test]
async fn the_per_host_breaker_opens_for_the_failing_host_only() {
    let (bad, bad_hits) = counting_server(|_| status(StatusCode::INTERNAL_SERVER_ERROR));
    let (good, good_hits) = counting_server(|_| status(StatusCode::OK));
    let (bad, good) = (serve(bad).await, serve(good).await);
    let layer = StandardClientLayer::builder()
        .attempt_timeout(Duration::from_secs(2))
        .replace_retry(RetryLayer::builder().max_attempts(1))
        .replace_circuit_breaker(
            Config::builder()
                .consecutive_failures(3)
                .open_duration(Duration::from_secs(60)),
        )
        .build()
        .unwrap();
    let breakers = layer.breakers();
    let client = http();
    let mut svc = ServiceBuilder::new().layer(layer).service(client.clone());
    for _ in 0..6 {
        let req = client.get(format!("http://{bad}/")).build().unwrap();
        let out = send(&mut svc, req).await;
        if let Err(e) = out {
            assert!(e.downcast_ref::<CircuitOpen>().is_some(), "{e}");
        }
        let req = client.get(format!("http://{good}/")).build().unwrap();
        let res = send(&mut svc, req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    assert_eq!(bad_hits.count(), 3, "open after three failures");
    assert_eq!(good_hits.count(), 6);
    let key =
        |a: std::net::SocketAddr| http::uri::Authority::try_from(a.to_string().as_str()).unwrap();
    assert_eq!(breakers.get(&key(bad)).unwrap().state(), State::Open);
    assert_eq!(breakers.get(&key(good)).unwrap().state(), State::Closed);
}

#[tokio::test]
async fn the_total_timeout_bounds_retries() {
    let slow = serve(Router::new().route("/", get(never))).await;
    let layer = StandardClientLayer::builder()
        .total_timeout(Duration::from_millis(300))
        .attempt_timeout(Duration::from_millis(100))
        .replace_retry(
            RetryLayer::builder()
                .max_attempts(10)
                .backoff(Backoff::constant(Duration::from_millis(1))),
        )
        .build()
        .unwrap();
    let client = http();
    let mut svc = ServiceBuilder::new().layer(layer).service(client.clone());
    let start = Instant::now();
    let req = client.get(format!("http://{slow}/")).build().unwrap();
    let err: BoxError = send(&mut svc, req).await.unwrap_err();
    let took = start.elapsed();
    // The total timeout passes its deadline down: after two attempts (about 200 ms) a third
    // (1 ms + 100 ms) no longer fits, so the retry gives up with the last attempt's timeout
    // instead of starting an attempt the total timeout would cut (tests/compose_deadlines.rs).
    let elapsed = err
        .downcast_ref::<tower_rampart::timeout::Elapsed>()
        .expect("a timeout");
    assert!(elapsed.after() <= Duration::from_millis(100), "{elapsed}");
    assert!(took < Duration::from_secs(2), "{took:?}");
}

#[tokio::test]
async fn the_server_pipeline_answers_504_503_and_fallbacks() {
    let resilience = StandardServerLayer::builder()
        .timeout(Duration::from_millis(100))
        .replace_circuit_breaker(
            Config::builder()
                .name("server")
                .consecutive_failures(2)
                .open_duration(Duration::from_secs(60)),
        )
        .fallback(
            |_| (StatusCode::OK, "cached").into_response(),
            &[Trigger::CircuitOpen],
        )
        .build()
        .unwrap();
    let breaker = resilience.breaker();
    let app = Router::new()
        .route("/slow", get(never))
        .route("/ok", get(|| async { "live" }))
        .layer(resilience);
    let addr = serve(app).await;
    let client = http();
    let get = |path: &str| get_text(&client, format!("http://{addr}{path}"));
    assert_eq!(get("/ok").await, (StatusCode::OK, "live".into()));
    let (status, body) = get("/slow").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(get("/slow").await.0, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(breaker.state(), State::Open, "two timeouts in a row");
    assert_eq!(
        get("/ok").await,
        (StatusCode::OK, "cached".into()),
        "open: the fallback answers"
    );
}

#[tokio::test]
async fn the_server_pipeline_without_breaker_never_refuses() {
    let resilience = StandardServerLayer::builder()
        .timeout(Duration::from_millis(50))
        .build()
        .unwrap();
    let breaker = resilience.breaker();
    let app = Router::new()
        .route("/fail", get(|| async { StatusCode::INTERNAL_SERVER_ERROR }))
        .layer(resilience);
    let addr = serve(app).await;
    let client = http();
    for _ in 0..50 {
        let res = client
            .get(format!("http://{addr}/fail"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
    assert_eq!(breaker.state(), State::Disabled);
}

#[tokio::test]
async fn a_hyper_util_client_through_the_pipeline() {
    use http_body_util::{BodyExt, Full};
    use hyper_util::{client::legacy::Client, rt::TokioExecutor};

    let (log, addr) = flaky_server().await;
    let (_, listener) = retry_events();
    let client: Client<_, Full<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut svc = ServiceBuilder::new()
        .layer(pipeline(listener))
        .service(client);
    let req = http::Request::put(format!("http://{addr}/flaky/2"))
        .body(Full::new(bytes::Bytes::from_static(b"{\"v\":1}")))
        .unwrap();
    let res = send(&mut svc, req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "ok after 3");
    assert_eq!(
        log.times().len(),
        3,
        "PUT with an in-memory body is retried"
    );
}
