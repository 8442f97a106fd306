//! End-of-stream outcomes: a breaker that follows response bodies counts a gRPC server stream
//! by the status in its trailers and an HTTP response by how its body ends, holding the call's
//! permit until then. Real tonic and axum servers on 127.0.0.1, real tonic and reqwest clients.

mod common;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

use bytes::Bytes;
use common::grpc::{Messages, Ping, Streaming, channel, incoming};
use futures_util::{StreamExt, stream};
use http::uri::PathAndQuery;
use tonic::{
    Code, Status,
    body::Body,
    client::{Grpc, GrpcService},
    transport::Server,
};
use tonic_prost::ProstCodec;
use tower::{Service, ServiceBuilder};
use tower_rampart::{
    BoxError,
    backoff::Backoff,
    circuit_breaker::{CircuitBreakerHandle, CircuitBreakerLayer, Config, EndOfStream, State},
    classify::{GrpcResponse, HttpStatus},
    mode::RespondHttp,
    retry::{BufferBodyLayer, HttpReplay, RetryLayer},
};

/// `test.Stream/Watch`: two messages, then what the request's text says: `ok` ends the stream
/// with OK, `fail` with UNAVAILABLE in the trailers, `hang` never ends it.
fn watch_messages(req: tonic::Request<Ping>) -> Messages {
    let two = stream::iter([1, 2].map(|n| {
        Ok(Ping {
            text: format!("m{n}"),
        })
    }));
    match req.into_inner().text.as_str() {
        "ok" => Box::pin(two),
        "fail" => Box::pin(two.chain(stream::once(async {
            Err(Status::unavailable("gone after two"))
        }))),
        _ => Box::pin(two.chain(stream::pending())),
    }
}

/// Starts the streaming server; its address and the number of calls it received.
async fn grpc_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let service = Streaming::new(watch_messages);
    let calls = service.calls.clone();
    let (incoming, addr) = incoming().await;
    let server = Server::builder()
        .add_service(service)
        .serve_with_incoming(incoming);
    tokio::spawn(server);
    (addr, calls)
}

/// Opens `test.Stream/Watch` with `how` (`ok`, `fail`, `hang`); the stream of messages.
async fn watch<S>(grpc: &mut Grpc<S>, how: &str) -> Result<tonic::Streaming<Ping>, Status>
where
    S: GrpcService<Body>,
    S::Error: Into<BoxError>,
    S::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <S::ResponseBody as http_body::Body>::Error: Into<BoxError>,
{
    grpc.ready()
        .await
        .map_err(|e| Status::unknown(e.into().to_string()))?;
    let req = tonic::Request::new(Ping { text: how.into() });
    let path = PathAndQuery::from_static("/test.Stream/Watch");
    let codec = ProstCodec::<Ping, Ping>::default();
    Ok(grpc.server_streaming(req, path, codec).await?.into_inner())
}

/// Reads a whole stream: the messages' texts, and the status that ended it.
async fn read_all(mut messages: tonic::Streaming<Ping>) -> (Vec<String>, Result<(), Status>) {
    let mut texts = Vec::new();
    loop {
        match messages.message().await {
            Ok(Some(m)) => texts.push(m.text),
            Ok(None) => return (texts, Ok(())),
            Err(status) => return (texts, Err(status)),
        }
    }
}

fn gone_after_two(texts: &[String], end: &Result<(), Status>) {
    assert_eq!(texts, ["m1", "m2"]);
    assert_eq!(
        end.as_ref().unwrap_err().code(),
        Code::Unavailable,
        "{end:?}"
    );
}

#[tokio::test]
async fn a_stream_failing_in_its_trailers_counts_as_a_failure_and_opens_the_breaker() {
    let (addr, calls) = grpc_server().await;
    let breaker = CircuitBreakerLayer::new(
        Config::builder()
            .name("streams")
            .consecutive_failures(3)
            .open_duration(Duration::from_secs(60))
            .build()
            .unwrap(),
    )
    .classify(GrpcResponse::default())
    .end_of_stream();
    let handle = breaker.handle();
    let mut grpc = Grpc::new(
        ServiceBuilder::new()
            .layer(breaker)
            .service(channel(addr).await),
    );

    let (texts, end) = read_all(watch(&mut grpc, "fail").await.unwrap()).await;
    gone_after_two(&texts, &end);
    let s = handle.snapshot();
    assert_eq!(
        (s.state, s.failures),
        (State::Closed, 1),
        "UNAVAILABLE in the trailers is a failure"
    );
    for _ in 0..2 {
        let (texts, end) = read_all(watch(&mut grpc, "fail").await.unwrap()).await;
        gone_after_two(&texts, &end);
    }
    assert_eq!(handle.state(), State::Open, "three failed streams in a row");
    let refused = watch(&mut grpc, "fail").await.unwrap_err();
    assert!(refused.message().contains("open"), "{refused:?}");
    assert_eq!(
        calls.load(SeqCst),
        3,
        "the refused stream never reached the server"
    );
}

#[tokio::test]
async fn a_stream_ending_ok_counts_as_a_success_once_it_ends() {
    let (addr, _) = grpc_server().await;
    let breaker = CircuitBreakerLayer::new(
        Config::builder()
            .count_window(10)
            .minimum_calls(1)
            .build()
            .unwrap(),
    )
    .classify(GrpcResponse::default())
    .end_of_stream();
    let handle = breaker.handle();
    let mut grpc = Grpc::new(
        ServiceBuilder::new()
            .layer(breaker)
            .service(channel(addr).await),
    );

    let mut messages = watch(&mut grpc, "ok").await.unwrap();
    assert_eq!(messages.message().await.unwrap().unwrap().text, "m1");
    assert_eq!(
        handle.snapshot().calls,
        0,
        "nothing is counted before the end"
    );
    let (texts, end) = read_all(messages).await;
    assert_eq!((texts, end.is_ok()), (vec!["m2".to_owned()], true));
    let s = handle.snapshot();
    assert_eq!((s.calls, s.failures), (1, 0), "one success");
}

/// A breaker half-open with one probe permit, after one failed stream and its short open
/// duration.
async fn half_open<S>(grpc: &mut Grpc<S>, handle: &CircuitBreakerHandle)
where
    S: GrpcService<Body>,
    S::Error: Into<BoxError>,
    S::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <S::ResponseBody as http_body::Body>::Error: Into<BoxError>,
{
    let (_, end) = read_all(watch(grpc, "fail").await.unwrap()).await;
    assert!(end.is_err());
    assert_eq!(handle.state(), State::Open);
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(handle.snapshot().state, State::HalfOpen);
}

#[tokio::test]
async fn a_probe_stream_dropped_before_its_end_records_its_head() {
    let (addr, _) = grpc_server().await;
    let breaker = CircuitBreakerLayer::new(
        Config::builder()
            .consecutive_failures(1)
            .open_duration(Duration::from_millis(50))
            .half_open_permits(1)
            .half_open_max_wait(None)
            .build()
            .unwrap(),
    )
    .classify(GrpcResponse::default())
    .end_of_stream();
    let handle = breaker.handle();
    let mut grpc = Grpc::new(
        ServiceBuilder::new()
            .layer(breaker)
            .service(channel(addr).await),
    );
    half_open(&mut grpc, &handle).await;

    // The probe: a stream that never ends, which the caller gives up on after one message.
    let mut probe = watch(&mut grpc, "hang").await.unwrap();
    assert_eq!(probe.message().await.unwrap().unwrap().text, "m1");
    let busy = watch(&mut grpc, "ok").await.unwrap_err();
    assert!(
        busy.message().contains("open"),
        "one probe at a time: {busy:?}"
    );
    assert_eq!(
        handle.snapshot().state,
        State::HalfOpen,
        "the probe waits for its end"
    );
    // Giving up on the stream records what its head said (it answered): the probe succeeded,
    // and the breaker is not left waiting for a probe that will never end.
    drop(probe);
    assert_eq!(handle.state(), State::Closed);
    let (texts, end) = read_all(watch(&mut grpc, "ok").await.unwrap()).await;
    assert_eq!((texts.len(), end.is_ok()), (2, true));
}

#[tokio::test]
async fn a_client_that_drops_its_success_bodies_still_records_them() {
    // Many clients read only the status. A consecutive-failures breaker must see the successes
    // between two failures, or it would open on failures that were never consecutive.
    let (addr, _) = grpc_server().await;
    let breaker =
        CircuitBreakerLayer::new(Config::builder().consecutive_failures(2).build().unwrap())
            .classify(GrpcResponse::default())
            .end_of_stream();
    let handle = breaker.handle();
    let mut grpc = Grpc::new(
        ServiceBuilder::new()
            .layer(breaker)
            .service(channel(addr).await),
    );
    for _ in 0..3 {
        let (_, end) = read_all(watch(&mut grpc, "fail").await.unwrap()).await;
        assert!(end.is_err());
        drop(watch(&mut grpc, "hang").await.unwrap());
    }
    let snapshot = handle.snapshot();
    assert_eq!(snapshot.state, State::Closed, "{snapshot:?}");
    // Consecutive mode: the streak the last (dropped) success ended.
    assert_eq!(snapshot.failures, 0, "{snapshot:?}");
}

#[tokio::test]
async fn retry_does_not_retry_a_stream_that_started_but_the_breaker_counts_its_failure() {
    let (addr, calls) = grpc_server().await;
    let breaker =
        CircuitBreakerLayer::new(Config::builder().consecutive_failures(5).build().unwrap())
            .classify(GrpcResponse::default())
            .end_of_stream();
    let handle = breaker.handle();
    let stack = ServiceBuilder::new()
        .layer(BufferBodyLayer::default())
        .layer(
            RetryLayer::builder()
                .max_attempts(3)
                .backoff(Backoff::constant(Duration::from_millis(1)))
                .build()
                .unwrap()
                .classify(GrpcResponse::default())
                .replay(HttpReplay::any_method()),
        )
        .layer(breaker)
        .map_request(|r: http::Request<tower_rampart::retry::Buffered<Body>>| r.map(Body::new))
        .service(channel(addr).await);
    let mut grpc = Grpc::new(stack);

    let (texts, end) = read_all(watch(&mut grpc, "fail").await.unwrap()).await;
    gone_after_two(&texts, &end);
    assert_eq!(
        calls.load(SeqCst),
        1,
        "a stream that started is not sent again"
    );
    assert_eq!(handle.snapshot().failures, 1);
}

// ---- HTTP ----

/// An axum server whose `/ok` streams two chunks and ends, and whose `/broken` streams one
/// chunk and then fails (hyper cuts the connection); the breaker in `respond_http` mode around
/// the router.
async fn http_server(
    breaker: CircuitBreakerLayer<HttpStatus, EndOfStream<RespondHttp>>,
) -> SocketAddr {
    use axum::{Router, body::Body, routing::get};
    let chunks = |fail: bool| {
        let two = stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"chunk "))]);
        let end = stream::once(async move {
            if fail {
                // Later than the head and first chunk, which hyper then has sent.
                tokio::time::sleep(Duration::from_millis(20)).await;
                Err(std::io::Error::other("the disk went away"))
            } else {
                Ok(Bytes::from_static(b"end"))
            }
        });
        Body::from_stream(two.chain(end))
    };
    let app = Router::new()
        .route("/ok", get(move || async move { chunks(false) }))
        .route("/broken", get(move || async move { chunks(true) }))
        .layer(breaker);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test]
async fn a_server_response_body_failing_after_its_headers_counts_as_a_failure() {
    let breaker = CircuitBreakerLayer::new(
        Config::builder()
            .count_window(10)
            .minimum_calls(1)
            .build()
            .unwrap(),
    )
    .classify(HttpStatus::default())
    .respond_http()
    .end_of_stream();
    let handle = breaker.handle();
    let addr = http_server(breaker).await;
    let client = reqwest::Client::new();

    let ok = client
        .get(format!("http://{addr}/ok"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.bytes().await.unwrap(), "chunk end");
    let broken = client
        .get(format!("http://{addr}/broken"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        broken.status(),
        200,
        "the headers went out before the failure"
    );
    assert!(broken.bytes().await.is_err(), "the body was cut");
    // The server records the outcome when the body fails, which the client may see first.
    let s = wait_for(&handle, |s| s.calls == 2).await;
    assert_eq!(
        (s.calls, s.failures),
        (2, 1),
        "the cut body is the one failure"
    );
}

#[tokio::test]
async fn a_reqwest_client_breaker_counts_a_body_that_fails_after_its_headers() {
    let server = CircuitBreakerLayer::new(Config::builder().build().unwrap())
        .classify(HttpStatus::default())
        .respond_http()
        .end_of_stream();
    let addr = http_server(server).await;
    let breaker = CircuitBreakerLayer::new(
        Config::builder()
            .count_window(10)
            .minimum_calls(1)
            .build()
            .unwrap(),
    )
    .classify(HttpStatus::default())
    .end_of_stream();
    let handle = breaker.handle();
    let client = reqwest::Client::new();
    let mut svc = ServiceBuilder::new()
        .layer(breaker)
        .service_fn(move |req: reqwest::Request| client.execute(req));
    let get = |path: &str| {
        reqwest::Request::new(
            http::Method::GET,
            format!("http://{addr}{path}").parse().unwrap(),
        )
    };

    let ok = tower::ServiceExt::ready(&mut svc)
        .await
        .unwrap()
        .call(get("/ok"))
        .await
        .unwrap();
    assert_eq!(ok.url().path(), "/ok", "the response keeps its URL");
    assert_eq!(handle.snapshot().calls, 0, "counted at the end of the body");
    assert_eq!(ok.bytes().await.unwrap(), "chunk end");
    assert_eq!(handle.snapshot().calls, 1);

    let broken = tower::ServiceExt::ready(&mut svc)
        .await
        .unwrap()
        .call(get("/broken"))
        .await
        .unwrap();
    assert!(broken.bytes().await.is_err());
    let s = handle.snapshot();
    assert_eq!((s.calls, s.failures), (2, 1), "the cut body is a failure");
}

/// Polls the breaker's snapshot until `done` holds (the server side records when hyper polls
/// the body, which may be after the client saw it end); gives up after 5 s.
async fn wait_for(
    handle: &CircuitBreakerHandle,
    done: impl Fn(&tower_rampart::circuit_breaker::Snapshot) -> bool,
) -> tower_rampart::circuit_breaker::Snapshot {
    for _ in 0..500 {
        let s = handle.snapshot();
        if done(&s) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    handle.snapshot()
}

#[tokio::test]
async fn a_cut_body_opens_a_server_breaker_under_a_fallback_and_over_a_timeout() {
    use axum::{Router, routing::get};
    use tower_rampart::{
        fallback::{FallbackLayer, Trigger},
        timeout::TimeoutLayer,
    };
    let breaker = CircuitBreakerLayer::new(
        Config::builder()
            .consecutive_failures(1)
            .open_duration(Duration::from_secs(60))
            .build()
            .unwrap(),
    )
    .classify(HttpStatus::default())
    .respond_http()
    .end_of_stream();
    let handle = breaker.handle();
    let broken = || async {
        let chunk = stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"chunk "))]);
        let cut = stream::once(async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Err(std::io::Error::other("cut"))
        });
        axum::body::Body::from_stream(chunk.chain(cut))
    };
    let app = Router::new()
        .route("/ok", get(|| async { "fine" }))
        .route("/broken", get(broken))
        .layer(
            ServiceBuilder::new()
                .layer(
                    FallbackLayer::json(http::StatusCode::OK, r#"{"cached":true}"#)
                        .on(&[Trigger::CircuitOpen])
                        .recognise_http(),
                )
                .layer(breaker)
                .layer(
                    TimeoutLayer::new(Duration::from_secs(5))
                        .unwrap()
                        .respond_http(),
                ),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = reqwest::Client::new();

    let ok = client
        .get(format!("http://{addr}/ok"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.text().await.unwrap(), "fine");
    let cut = client
        .get(format!("http://{addr}/broken"))
        .send()
        .await
        .unwrap();
    assert!(cut.bytes().await.is_err());
    let s = wait_for(&handle, |s| s.state == State::Open).await;
    assert_eq!(s.state, State::Open, "the cut body opened the breaker");
    let canned = client
        .get(format!("http://{addr}/ok"))
        .send()
        .await
        .unwrap();
    assert_eq!(canned.text().await.unwrap(), r#"{"cached":true}"#);
}
