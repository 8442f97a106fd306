//! Response-mode body types (#9, item 4): the circuit breaker and the timeout in HTTP mode,
//! stacked as a server stacks them, around services answering each body type axum, tonic and
//! hyper users have. Each test is written against a concrete body type, so it is also the
//! compile check that the stack accepts it (before `mode::ResponseBody`, `Response<String>`,
//! `tonic::body::Body` and the boxed bodies failed with "trait bounds were not satisfied").

mod common;

use std::{convert::Infallible, time::Duration};

use bytes::Bytes;
use common::{
    breakers::server_side,
    http::{client, http_timeout, never, serve},
};
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_rampart::{circuit_breaker::Config, problems};

/// Builds the server stack (breaker 503 > timeout 504) around a handler answering
/// `Response<$body>` made by `$make("live")`, and checks all three answers: the handler's, the
/// timeout's 504 and the open breaker's 503, with their problem+json bodies read back through
/// `$read`.
macro_rules! stack_answers {
    ($body:ty, $make:expr, $read:expr) => {{
        let make: fn(&'static str) -> $body = $make;
        let breaker = server_side(Config::builder().name("bodies").build().unwrap());
        let handle = breaker.handle();
        let mut svc = ServiceBuilder::new()
            .layer(breaker)
            .layer(http_timeout(Duration::from_millis(50)))
            .service(service_fn(move |req: Request<()>| async move {
                if req.uri().path() == "/slow" {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
                Ok::<Response<$body>, Infallible>(Response::new(make("live")))
            }));
        let call = |path: &'static str| Request::get(path).body(()).unwrap();

        let res: Response<$body> = svc.ready().await.unwrap().call(call("/")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!($read(res.into_body()).await, "live");

        let res = svc
            .ready()
            .await
            .unwrap()
            .call(call("/slow"))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(
            res.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let json: serde_json::Value = serde_json::from_str(&$read(res.into_body()).await).unwrap();
        assert_eq!(json["type"], problems::TIMEOUT);

        handle.force_open();
        let res = svc.ready().await.unwrap().call(call("/")).await.unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        let json: serde_json::Value = serde_json::from_str(&$read(res.into_body()).await).unwrap();
        assert_eq!(json["type"], problems::CIRCUIT_OPEN);
    }};
}

/// Reads any `http_body::Body` to a string.
async fn text<B>(body: B) -> String
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let bytes = body.collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn string_bodies() {
    stack_answers!(String, |s| s.to_owned(), |b: String| async move { b });
}

#[tokio::test(start_paused = true)]
async fn bytes_and_vec_bodies() {
    stack_answers!(
        Bytes,
        |s| Bytes::from_static(s.as_bytes()),
        |b: Bytes| async move { String::from_utf8(b.to_vec()).unwrap() }
    );
    stack_answers!(
        Vec<u8>,
        |s| s.as_bytes().to_vec(),
        |b: Vec<u8>| async move { String::from_utf8(b).unwrap() }
    );
}

#[tokio::test(start_paused = true)]
async fn hyper_full_bodies() {
    stack_answers!(
        Full<Bytes>,
        |s| Full::new(Bytes::from_static(s.as_bytes())),
        text
    );
}

#[tokio::test(start_paused = true)]
async fn hyper_boxed_bodies() {
    type Boxed = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;
    stack_answers!(
        Boxed,
        |s| Full::new(Bytes::from_static(s.as_bytes()))
            .map_err(|never| match never {})
            .boxed(),
        text
    );
    type Unsync = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;
    stack_answers!(
        Unsync,
        |s| Full::new(Bytes::from_static(s.as_bytes()))
            .map_err(|never| match never {})
            .boxed_unsync(),
        text
    );
}

#[tokio::test(start_paused = true)]
async fn axum_bodies() {
    stack_answers!(axum::body::Body, axum::body::Body::from, text);
}

#[tokio::test(start_paused = true)]
async fn tonic_bodies() {
    stack_answers!(
        tonic::body::Body,
        |s| tonic::body::Body::new(Full::new(Bytes::from_static(s.as_bytes()))),
        text
    );
}

/// An axum router keeps working with the layers in HTTP mode (its body is `axum::body::Body`),
/// served over real HTTP.
#[tokio::test]
async fn axum_router_over_http() {
    let breaker = server_side(Config::builder().name("router").build().unwrap());
    let handle = breaker.handle();
    let app = axum::Router::new()
        .route("/slow", axum::routing::get(never))
        .layer(
            ServiceBuilder::new()
                .layer(breaker)
                .layer(http_timeout(Duration::from_millis(100))),
        );
    let url = format!("{}/slow", serve(app).await);
    let client = client();
    let status = || async { client.get(&url).send().await.unwrap().status() };
    assert_eq!(status().await, StatusCode::GATEWAY_TIMEOUT);
    handle.force_open();
    assert_eq!(status().await, StatusCode::SERVICE_UNAVAILABLE);
}
