//! The standard client pipeline inside a `reqwest_middleware::ClientWithMiddleware`, against real
//! axum servers on 127.0.0.1: retries, per-host breakers and timeouts behind `.send()`, typed
//! errors, extensions, and other middlewares (reqwest-retry, reqwest-tracing) in the same chain.

mod common;

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    extract::{Path, State as Shared},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::any,
};
use common::{
    flaky::Hits,
    http::{client as http, never, serve},
};
use http::Extensions;
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware, Error, Middleware, Next};
use reqwest_retry::{RetryError, RetryTransientMiddleware, policies::ExponentialBackoff};
use reqwest_tracing::TracingMiddleware;
use tower_rampart::{
    backoff::Backoff,
    circuit_breaker::{CircuitOpen, State},
    pipeline::{ClientBuilder as PipelineBuilder, StandardClientLayer},
    reqwest_middleware::RampartMiddleware,
    retry::SetIdempotencyKeyLayer,
    timeout::Elapsed,
};

/// `/flaky/{n}`: 503 for the first `n` hits, then 200 echoing the hit number, the request body
/// and its `idempotency-key`.
async fn flaky(
    Shared(hits): Shared<Hits>,
    Path(n): Path<usize>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let hit = hits.hit();
    if hit <= n {
        return (StatusCode::SERVICE_UNAVAILABLE, "busy").into_response();
    }
    let key = headers
        .get("idempotency-key")
        .map(|k| k.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (StatusCode::OK, format!("hit {hit} body {body:?} key {key}")).into_response()
}

/// `/broken`: always 500.
async fn broken(Shared(hits): Shared<Hits>) -> StatusCode {
    hits.hit();
    StatusCode::INTERNAL_SERVER_ERROR
}

/// A server with `/flaky/{n}`, `/broken` and `/never`; its base URL and hits.
async fn server() -> (String, Hits) {
    let hits = Hits::default();
    let app = Router::new()
        .route("/flaky/{n}", any(flaky))
        .route("/broken", any(broken))
        .route("/never", any(never))
        .with_state(hits.clone());
    (serve(app).await, hits)
}

/// The pipeline's defaults with quick retries: 3 attempts 10 ms apart, attempts of 2 s.
fn quick() -> PipelineBuilder {
    StandardClientLayer::builder()
        .name("mw")
        .total_timeout(Duration::from_secs(10))
        .attempt_timeout(Duration::from_secs(2))
        .retry(|d| d.backoff(Backoff::constant(Duration::from_millis(10))))
}

/// A marker a caller puts in the extensions (`RequestBuilder::with_extension`).
#[derive(Clone, Debug, PartialEq)]
struct Tenant(&'static str);

/// What an inner middleware leaves in the extensions for the middlewares outside.
#[derive(Clone, Debug, PartialEq)]
struct SeenAttempts(usize);

/// Records every call it sees, with the `Tenant` in its extensions. As the inner middleware it
/// also writes `SeenAttempts`; as the outer one it records what came back.
#[derive(Clone, Default)]
struct Recorder {
    calls: Arc<Mutex<Vec<Option<Tenant>>>>,
    came_back: Arc<Mutex<Vec<Option<SeenAttempts>>>>,
}

impl Recorder {
    fn calls(&self) -> Vec<Option<Tenant>> {
        self.calls.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl Middleware for Recorder {
    async fn handle(
        &self,
        req: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let n = {
            let mut calls = self.calls.lock().unwrap();
            calls.push(extensions.get::<Tenant>().cloned());
            calls.len()
        };
        extensions.insert(SeenAttempts(n));
        let res = next.run(req, extensions).await;
        self.came_back
            .lock()
            .unwrap()
            .push(extensions.get::<SeenAttempts>().cloned());
        res
    }
}

/// `outer` > the pipeline > `inner`.
fn chain(
    pipeline: StandardClientLayer,
    outer: &Recorder,
    inner: &Recorder,
) -> ClientWithMiddleware {
    ClientBuilder::new(http())
        .with(outer.clone())
        .with(RampartMiddleware::new(pipeline))
        .with(inner.clone())
        .build()
}

#[tokio::test]
async fn a_flaky_endpoint_is_retried_behind_send() {
    let (base, hits) = server().await;
    let (outer, inner) = (Recorder::default(), Recorder::default());
    let client = chain(quick().build().unwrap(), &outer, &inner);

    let res = client
        .get(format!("{base}/flaky/2"))
        .with_extension(Tenant("acme"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.text().await.unwrap().starts_with("hit 3"));
    assert_eq!(hits.count(), 3);
    // The rest of the chain runs once per attempt, each time with the caller's extensions.
    assert_eq!(outer.calls(), vec![Some(Tenant("acme"))]);
    assert_eq!(inner.calls(), vec![Some(Tenant("acme")); 3]);
    // What the last attempt's middlewares wrote comes back out (the outer recorder wrote 1
    // before the call; the inner one wrote 3 on the third attempt).
    assert_eq!(
        *outer.came_back.lock().unwrap(),
        vec![Some(SeenAttempts(3))]
    );
}

#[tokio::test]
async fn a_failing_host_opens_its_breaker_and_send_fails_fast() {
    let (base, hits) = server().await;
    let (outer, inner) = (Recorder::default(), Recorder::default());
    let pipeline = quick()
        .retry(|d| d.max_attempts(1))
        .circuit_breaker(|d| {
            d.count_window(4)
                .minimum_calls(4)
                .failure_rate(0.5)
                .open_duration(Duration::from_secs(60))
        })
        .build()
        .unwrap();
    let breakers = pipeline.breakers();
    let client = chain(pipeline, &outer, &inner);

    for _ in 0..4 {
        let res = client.get(format!("{base}/broken")).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
    assert_eq!(hits.count(), 4);

    let err = client
        .get(format!("{base}/broken"))
        .send()
        .await
        .unwrap_err();
    let Error::Middleware(any) = &err else {
        panic!("a refusal is a middleware error: {err:?}");
    };
    let open = any
        .downcast_ref::<CircuitOpen>()
        .expect("CircuitOpen downcasts from the anyhow error");
    assert_eq!(open.state(), State::Open);
    assert!(
        open.breaker().starts_with("mw/127.0.0.1:"),
        "{}",
        open.breaker()
    );
    assert!(open.retry_after().is_some());
    assert_eq!(hits.count(), 4, "refused without reaching the host");
    assert_eq!(inner.calls().len(), 4, "nor the middlewares inside");
    assert_eq!(breakers.len(), 1);
}

#[tokio::test]
async fn a_timeout_downcasts_as_elapsed() {
    let (base, _hits) = server().await;
    let pipeline = quick()
        .total_timeout(Duration::from_millis(600))
        .attempt_timeout(Duration::from_millis(200))
        .retry(|d| d.max_attempts(1))
        .build()
        .unwrap();
    let client = ClientBuilder::new(http())
        .with(RampartMiddleware::new(pipeline))
        .build();

    let err = client
        .get(format!("{base}/never"))
        .send()
        .await
        .unwrap_err();
    let Error::Middleware(any) = &err else {
        panic!("a timeout is a middleware error: {err:?}");
    };
    let elapsed = any.downcast_ref::<Elapsed>().expect("Elapsed downcasts");
    assert_eq!(elapsed.after(), Duration::from_millis(200));
}

#[tokio::test]
async fn reqwest_errors_stay_reqwest_errors() {
    // A port nothing listens on: bound, then closed.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let inner = Recorder::default();
    let client = chain(quick().build().unwrap(), &Recorder::default(), &inner);

    let err = client
        .get(format!("http://{addr}/"))
        .send()
        .await
        .unwrap_err();
    let Error::Reqwest(e) = &err else {
        panic!("a refused connection stays a reqwest error: {err:?}");
    };
    assert!(e.is_connect(), "{e:?}");
    assert_eq!(inner.calls().len(), 3, "connection errors are retried");
}

#[tokio::test]
async fn post_is_retried_with_its_idempotency_key_only() {
    let (base, hits) = server().await;
    let (outer, inner) = (Recorder::default(), Recorder::default());
    let client = chain(quick().build().unwrap(), &outer, &inner);

    let res = client
        .post(format!("{base}/flaky/1"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "no key: once"
    );
    assert_eq!(hits.count(), 1);

    let res = client
        .post(format!("{base}/flaky/3"))
        .header("idempotency-key", "\"order-42\"")
        .body("{\"amount\":1}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK, "with a key: retried");
    assert_eq!(
        res.text().await.unwrap(),
        "hit 4 body \"{\\\"amount\\\":1}\" key \"order-42\"",
        "the last attempt carried the same body and key"
    );
    assert_eq!(hits.count(), 4);
    assert_eq!(inner.calls().len(), 4);
}

#[tokio::test]
async fn a_streaming_body_is_sent_once() {
    let (base, hits) = server().await;
    let (outer, inner) = (Recorder::default(), Recorder::default());
    let client = chain(quick().build().unwrap(), &outer, &inner);
    let chunks: Vec<Result<&'static [u8], Infallible>> = vec![Ok(b"a"), Ok(b"b")];

    let res = client
        .put(format!("{base}/flaky/1"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(hits.count(), 1, "a body that cannot be copied is sent once");
}

#[tokio::test]
async fn stacks_with_reqwest_retry_and_reqwest_tracing() {
    let (base, hits) = server().await;
    let inner = Recorder::default();
    let pipeline = quick()
        .retry(|d| d.max_attempts(1))
        .circuit_breaker(|d| {
            // Open when both of the last two calls failed.
            d.count_window(2)
                .minimum_calls(2)
                .failure_rate(0.75)
                .open_duration(Duration::from_secs(60))
        })
        .build()
        .unwrap();
    let policy = ExponentialBackoff::builder()
        .retry_bounds(Duration::from_millis(1), Duration::from_millis(5))
        .build_with_max_retries(2);
    let client = ClientBuilder::new(http())
        .with(TracingMiddleware::default())
        .with(RetryTransientMiddleware::new_with_policy(policy))
        .with(RampartMiddleware::new(pipeline))
        .with(inner.clone())
        .build();

    // reqwest-retry outside retries the 503s; each of its tries passes the pipeline once.
    let res = client.get(format!("{base}/flaky/1")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(hits.count(), 2);
    assert_eq!(inner.calls().len(), 2);
    // The breaker judges a 200 at the end of its body: read it (dropping it would do too).
    assert!(res.text().await.unwrap().starts_with("hit 2"));

    // Two 500s open the breaker (reqwest-retry sent the call three times: its first try and the
    // second fail, the third is refused). The refusal is not retried by reqwest-retry (a
    // middleware error is fatal to it), which wraps it in its `RetryError`; the `CircuitOpen`
    // is inside, and passes reqwest-tracing unchanged.
    let err = client
        .get(format!("{base}/broken"))
        .send()
        .await
        .unwrap_err();
    let Error::Middleware(any) = &err else {
        panic!("{err:?}")
    };
    let Some(RetryError::WithRetries {
        retries: 2,
        err: wrapped,
    }) = any.downcast_ref::<RetryError>()
    else {
        panic!("reqwest-retry's error after two retries: {err:?}")
    };
    let Error::Middleware(wrapped) = wrapped else {
        panic!("{wrapped:?}")
    };
    assert!(
        wrapped.downcast_ref::<CircuitOpen>().is_some(),
        "{wrapped:?}"
    );
    assert_eq!(hits.count(), 4, "two hits on /broken, then refused");
    assert_eq!(inner.calls().len(), 4);
}

#[tokio::test]
async fn the_standard_pipeline_in_one_line() {
    let (base, hits) = server().await;
    let mw = RampartMiddleware::standard().unwrap();
    let breakers = mw.layer().breakers();
    let client = ClientBuilder::new(http()).with(mw).build();
    let res = client.get(format!("{base}/flaky/0")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(hits.count(), 1);
    assert_eq!(breakers.len(), 1, "one breaker for the host called");
}

#[tokio::test]
async fn a_tower_stack_of_ones_own_gives_posts_a_key_and_retries_them() {
    let (base, hits) = server().await;
    let inner = Recorder::default();
    let stack = tower::ServiceBuilder::new()
        .layer(SetIdempotencyKeyLayer::new())
        .layer(quick().build().unwrap())
        .into_inner();
    let client = ClientBuilder::new(http())
        .with(RampartMiddleware::new(stack))
        .with(inner.clone())
        .build();

    let res = client
        .post(format!("{base}/flaky/1"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "keyed by the stack, so retried"
    );
    let text = res.text().await.unwrap();
    let key = text.rsplit(" key ").next().unwrap();
    assert!(key.len() > 2, "the retried attempt carried a key: {text}");
    assert_eq!(hits.count(), 2);
    assert_eq!(inner.calls().len(), 2);
}

/// Says `Pending` at its first readiness check (waking the task at once), then delegates.
#[derive(Clone)]
struct ReadyLater<S> {
    inner: S,
    waited: bool,
}

impl<S: tower::Service<R>, R> tower::Service<R> for ReadyLater<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        if !self.waited {
            self.waited = true;
            cx.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> S::Future {
        self.inner.call(req)
    }
}

/// Makes [`ReadyLater`] services.
#[derive(Clone)]
struct ReadyLaterLayer;

impl<S> tower::Layer<S> for ReadyLaterLayer {
    type Service = ReadyLater<S>;

    fn layer(&self, inner: S) -> ReadyLater<S> {
        ReadyLater {
            inner,
            waited: false,
        }
    }
}

#[tokio::test]
async fn a_layer_that_is_not_ready_at_once_is_waited_for() {
    let (base, hits) = server().await;
    let stack = tower::ServiceBuilder::new()
        .layer(ReadyLaterLayer)
        .layer(quick().build().unwrap())
        .into_inner();
    let client = ClientBuilder::new(http())
        .with(RampartMiddleware::new(stack))
        .build();
    let res = client.get(format!("{base}/flaky/1")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(hits.count(), 2);
}
