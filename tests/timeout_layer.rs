//! Timeouts: error mode on paused time, HTTP 504 through a real axum server, gRPC
//! DEADLINE_EXCEEDED with the client's grpc-timeout.

mod common;

use std::{convert::Infallible, time::Duration};

use bytes::Bytes;
use common::http::{client, http_timeout, never, serve_addr};
use http::{Request, Response, StatusCode};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};
use tower_rampart::{
    circuit_breaker::{CircuitBreakerLayer, Config, State},
    timeout::{Elapsed, TIMEOUT_PROBLEM_TYPE, TimeoutLayer},
};

fn slow(
    ms: u64,
) -> impl Fn(()) -> std::pin::Pin<Box<dyn Future<Output = Result<u64, Infallible>> + Send>> + Clone
{
    move |_| {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(ms)
        })
    }
}

#[tokio::test(start_paused = true)]
async fn error_mode_fails_with_elapsed_exactly_on_time() {
    let mut late = TimeoutLayer::new(Duration::from_millis(100))
        .unwrap()
        .layer(service_fn(slow(1000)));
    let start = Instant::now();
    let err = late.ready().await.unwrap().call(()).await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_millis(100));
    assert_eq!(
        err.downcast_ref::<Elapsed>().unwrap().after(),
        Duration::from_millis(100)
    );
    assert_eq!(err.to_string(), "request timed out after 0.100s");

    let mut fast = TimeoutLayer::new(Duration::from_millis(100))
        .unwrap()
        .layer(service_fn(slow(99)));
    assert_eq!(fast.ready().await.unwrap().call(()).await.unwrap(), 99);
}

#[tokio::test(start_paused = true)]
async fn timeouts_are_failures_for_a_breaker_outside() {
    let breaker =
        CircuitBreakerLayer::new(Config::builder().consecutive_failures(3).build().unwrap());
    let handle = breaker.handle();
    let mut svc = ServiceBuilder::new()
        .layer(breaker)
        .layer(TimeoutLayer::new(Duration::from_millis(10)).unwrap())
        .service_fn(slow(1000));
    for _ in 0..3 {
        svc.ready().await.unwrap().call(()).await.unwrap_err();
    }
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn grpc_mode_answers_deadline_exceeded_and_honours_grpc_timeout() {
    let handler = service_fn(|_req: Request<()>| async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        Ok::<_, Infallible>(Response::new(Bytes::from_static(b"late")))
    });
    let mut svc = TimeoutLayer::new(Duration::from_secs(1))
        .unwrap()
        .respond_grpc()
        .layer(handler);
    // The time a call with `grpc-timeout: <header>` took, and its answer.
    let mut call = async |header: &'static str| {
        let start = Instant::now();
        let req = Request::post("/pkg.Svc/Call")
            .header("grpc-timeout", header)
            .body(())
            .unwrap();
        let res = svc.ready().await.unwrap().call(req).await.unwrap();
        (start.elapsed(), res)
    };
    let (took, res) = call("50m").await;
    assert_eq!(
        took,
        Duration::from_millis(50),
        "the client's shorter deadline"
    );
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["grpc-status"], "4");
    assert_eq!(res.headers()["content-type"], "application/grpc");
    assert!(res.body().is_empty());

    let (took, res) = call("1H").await;
    assert_eq!(
        took,
        Duration::from_secs(1),
        "ours when the client's is longer"
    );
    assert_eq!(res.headers()["grpc-status"], "4");

    let (took, _) = call("junk").await;
    assert_eq!(
        took,
        Duration::from_secs(1),
        "an unparsable header is ignored"
    );
}

#[tokio::test]
async fn an_axum_router_answers_504_over_real_http() {
    let app = axum::Router::new()
        .route("/slow", axum::routing::get(never))
        .route("/fast", axum::routing::get(|| async { "fast" }))
        .layer(http_timeout(Duration::from_millis(100)));
    let addr = serve_addr(app).await;
    let client = client();

    let start = std::time::Instant::now();
    let res = client
        .get(format!("http://{addr}/slow"))
        .send()
        .await
        .unwrap();
    let took = start.elapsed();
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(
        took >= Duration::from_millis(100) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let body = res.text().await.unwrap();
    assert!(
        body.contains(TIMEOUT_PROBLEM_TYPE) && body.contains("\"status\":504"),
        "{body}"
    );

    let res = client
        .get(format!("http://{addr}/fast"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.text().await.unwrap(), "fast");
}
