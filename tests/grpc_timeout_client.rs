//! gRPC timeouts over a real tonic server (issue #15, item 4): a body-inclusive timeout ends a
//! server stream with DEADLINE_EXCEEDED, and a timeout around a tonic `Channel` sends the time
//! the call has as `grpc-timeout`, which the server reads.

mod common;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use common::grpc::{Echo, Messages, Methods, Ping, Streaming, channel, incoming, ping};
use futures_util::StreamExt;
use http::uri::PathAndQuery;
use tonic::{Code, Status, body::Body, client::Grpc, transport::Server};
use tonic_prost::ProstCodec;
use tower::ServiceBuilder;
use tower_rampart::{
    BoxError,
    timeout::{Deadline, TimeoutLayer, parse_grpc_timeout},
};

const TIMEOUT: Duration = Duration::from_millis(200);

/// `test.Stream/Count`: 5 messages, 100 ms apart (the first after 100 ms).
fn count_messages(_: tonic::Request<Ping>) -> Messages {
    Box::pin(futures_util::stream::unfold(0, |i| async move {
        if i == 5 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        Some((
            Ok(Ping {
                text: i.to_string(),
            }),
            i + 1,
        ))
    }))
}

/// Serves `test.Stream/Count` on 127.0.0.1, behind a 200 ms body-inclusive gRPC timeout if `timed`; its
/// address.
async fn stream_server(timed: bool) -> std::net::SocketAddr {
    let (incoming, addr) = incoming().await;
    if timed {
        let layer = TimeoutLayer::new(TIMEOUT)
            .unwrap()
            .respond_grpc()
            .including_body();
        let server = Server::builder()
            .layer(layer)
            .add_service(Streaming::new(count_messages));
        tokio::spawn(server.serve_with_incoming(incoming));
    } else {
        let server = Server::builder().add_service(Streaming::new(count_messages));
        tokio::spawn(server.serve_with_incoming(incoming));
    }
    addr
}

/// Reads `test.Stream/Count` through `grpc`: the messages, then how it ended.
async fn count<S>(grpc: &mut Grpc<S>) -> (usize, Result<(), Status>)
where
    S: tonic::client::GrpcService<Body>,
    S::Error: Into<BoxError>,
    S::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <S::ResponseBody as http_body::Body>::Error: Into<BoxError>,
{
    grpc.ready().await.map_err(|e| e.into()).unwrap();
    let req = tonic::Request::new(Ping { text: "go".into() });
    let path = PathAndQuery::from_static("/test.Stream/Count");
    let codec = ProstCodec::<Ping, Ping>::default();
    let mut stream = match grpc.server_streaming(req, path, codec).await {
        Ok(res) => res.into_inner(),
        Err(status) => return (0, Err(status)),
    };
    let mut n = 0;
    while let Some(item) = stream.next().await {
        match item {
            Ok(_) => n += 1,
            Err(status) => return (n, Err(status)),
        }
    }
    (n, Ok(()))
}

#[tokio::test]
async fn a_head_only_timeout_lets_a_server_stream_run_past_it() {
    // What the issue saw: the 500 ms stream passes a 200 ms timeout.
    let addr = stream_server(false).await;
    let stack = ServiceBuilder::new()
        .layer(TimeoutLayer::new(TIMEOUT).unwrap().respond_grpc())
        .service(channel(addr).await);
    let (n, end) = count(&mut Grpc::new(stack)).await;
    assert_eq!((n, end.map_err(|s| s.code())), (5, Ok(())));
}

#[tokio::test]
async fn a_body_inclusive_timeout_around_the_channel_ends_the_stream_with_deadline_exceeded() {
    let addr = stream_server(false).await;
    let stack = ServiceBuilder::new()
        .layer(
            TimeoutLayer::new(TIMEOUT)
                .unwrap()
                .respond_grpc()
                .including_body(),
        )
        .service(channel(addr).await);
    let (n, end) = count(&mut Grpc::new(stack)).await;
    let status = end.expect_err("cut off");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(n < 5, "{n} messages");
}

#[tokio::test]
async fn a_body_inclusive_timeout_on_the_server_ends_the_stream_with_deadline_exceeded() {
    let addr = stream_server(true).await;
    let (n, end) = count(&mut Grpc::new(channel(addr).await)).await;
    let status = end.expect_err("cut off");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(n < 5, "{n} messages");
}

/// Serves `test.Echo/Say`, which records the `grpc-timeout` each call arrived with.
async fn recording_server() -> (std::net::SocketAddr, Arc<Mutex<Vec<Option<Duration>>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let echo = Methods::<Echo, Ping, Ping>::default().unary("Say", move |req| {
        let sent = req.metadata().get("grpc-timeout").and_then(|v| {
            parse_grpc_timeout(&http::HeaderValue::from_bytes(v.as_bytes()).unwrap())
        });
        log.lock().unwrap().push(sent);
        Box::pin(async move { Ok(tonic::Response::new(req.into_inner())) })
    });
    let (incoming, addr) = incoming().await;
    let server = Server::builder()
        .add_service(echo)
        .serve_with_incoming(incoming);
    tokio::spawn(server);
    (addr, seen)
}

#[tokio::test]
async fn a_timeout_around_a_channel_sends_grpc_timeout() {
    let (addr, seen) = recording_server().await;
    let stack = ServiceBuilder::new()
        .layer(TimeoutLayer::new(TIMEOUT).unwrap().respond_grpc())
        .service(channel(addr).await);
    let mut grpc = Grpc::new(stack);
    ping(&mut grpc, "/test.Echo/Say", "hi").await.unwrap();
    let sent = seen.lock().unwrap()[0].expect("grpc-timeout sent");
    assert!(sent <= TIMEOUT && sent > TIMEOUT / 2, "{sent:?}");

    // A deadline outside that is earlier is what is sent.
    let soon = Deadline::at(tokio::time::Instant::now() + Duration::from_millis(80));
    let mut grpc2 = grpc.clone();
    soon.scope_call(|| async move { ping(&mut grpc2, "/test.Echo/Say", "hi").await })
        .await
        .unwrap();
    let sent = seen.lock().unwrap()[1].expect("grpc-timeout sent");
    assert!(sent <= Duration::from_millis(80), "{sent:?}");

    // A request with a shorter timeout of its own keeps it.
    let mut req = tonic::Request::new(Ping { text: "hi".into() });
    req.set_timeout(Duration::from_millis(50));
    common::grpc::unary::<_, Ping, Ping>(&mut grpc, "/test.Echo/Say", req)
        .await
        .unwrap();
    assert_eq!(seen.lock().unwrap()[2], Some(Duration::from_millis(50)));

    // One with a longer one is given ours.
    let mut req = tonic::Request::new(Ping { text: "hi".into() });
    req.set_timeout(Duration::from_secs(60));
    common::grpc::unary::<_, Ping, Ping>(&mut grpc, "/test.Echo/Say", req)
        .await
        .unwrap();
    assert!(seen.lock().unwrap()[3].expect("sent") <= TIMEOUT);
}

#[tokio::test]
async fn the_client_pipeline_sends_the_attempt_time_as_grpc_timeout() {
    use http_body_util::{BodyExt, Full};
    use prost::Message;
    use tower::ServiceExt;
    use tower_rampart::pipeline::StandardClientLayer;

    let (addr, seen) = recording_server().await;
    // A plain HTTP/2 client of `http::Request`s, speaking gRPC by hand.
    let hyper = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<bytes::Bytes>>();
    let layer = StandardClientLayer::builder()
        .total_timeout(Duration::from_secs(5))
        .attempt_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let svc = ServiceBuilder::new().layer(layer).service(hyper);
    let message = Ping { text: "hi".into() }.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(&message);
    let req = http::Request::post(format!("http://{addr}/test.Echo/Say"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(bytes::Bytes::from(frame)))
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let trailers = res.into_body().collect().await.unwrap().trailers().cloned();
    assert_eq!(trailers.unwrap()["grpc-status"], "0");
    let sent = seen.lock().unwrap()[0].expect("grpc-timeout sent");
    assert!(
        sent <= Duration::from_millis(500) && sent > Duration::from_millis(250),
        "{sent:?}"
    );
}
