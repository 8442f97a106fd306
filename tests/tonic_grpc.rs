//! gRPC end to end: a real tonic server on 127.0.0.1 (hand-written prost messages, no protoc)
//! and a tonic client channel wrapped in retry + breaker + timeout with gRPC classification.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

use common::grpc::{Echo, Methods, Ping, channel, incoming, ping};
use tonic::{Code, Status, body::Body, transport::Server};
use tower::ServiceBuilder;
use tower_rampart::{
    backoff::Backoff,
    circuit_breaker::{CircuitBreakerLayer, Config, State},
    classify::GrpcResponse,
    retry::{BufferBodyLayer, HttpReplay, RetryLayer},
    timeout::TimeoutLayer,
};

/// Starts the server (with a 200 ms gRPC-mode timeout) and returns its address and call count:
/// `test.Echo/Say` answers UNAVAILABLE for its first `fail_first` calls, then echoes;
/// `test.Echo/Slow` takes ten seconds.
async fn server(fail_first: usize) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let echo = Methods::<Echo, Ping, Ping>::default()
        .unary("Say", move |req| {
            let n = seen.fetch_add(1, SeqCst);
            Box::pin(async move {
                if n < fail_first {
                    return Err(Status::unavailable(format!("warming up ({n})")));
                }
                Ok(tonic::Response::new(req.into_inner()))
            })
        })
        .unary("Slow", |req| {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_secs(10)).await;
                Ok(tonic::Response::new(req.into_inner()))
            })
        });
    let (incoming, addr) = incoming().await;
    let server = Server::builder()
        .layer(
            TimeoutLayer::new(Duration::from_millis(200))
                .unwrap()
                .respond_grpc(),
        )
        .add_service(echo)
        .serve_with_incoming(incoming);
    tokio::spawn(server);
    (addr, calls)
}

#[tokio::test]
async fn retry_breaker_and_timeout_around_a_tonic_channel() {
    let (addr, calls) = server(2).await;
    let channel = channel(addr).await;
    let breaker = CircuitBreakerLayer::new(
        Config::builder()
            .name("echo")
            .consecutive_failures(5)
            .build()
            .unwrap(),
    )
    .classify(GrpcResponse::default());
    let handle = breaker.handle();
    let stack = ServiceBuilder::new()
        .layer(BufferBodyLayer::default())
        .layer(
            RetryLayer::builder()
                .max_attempts(3)
                .backoff(Backoff::constant(Duration::from_millis(10)))
                .build()
                .unwrap()
                .classify(GrpcResponse::default())
                // gRPC calls are POSTs: which codes are safe to retry is the classifier's call.
                .replay(HttpReplay::any_method()),
        )
        .layer(breaker)
        .map_request(|r: http::Request<tower_rampart::retry::Buffered<Body>>| r.map(Body::new))
        .layer(TimeoutLayer::new(Duration::from_secs(5)).unwrap())
        .service(channel);
    let mut grpc = tonic::client::Grpc::new(stack);

    let reply = ping(&mut grpc, "/test.Echo/Say", "hello")
        .await
        .expect("third attempt succeeds");
    assert_eq!(reply.text, "hello");
    assert_eq!(calls.load(SeqCst), 3, "UNAVAILABLE twice, then OK");
    let s = handle.snapshot();
    assert_eq!(
        (s.state, s.calls),
        (State::Closed, 0),
        "the success ended the run of failures"
    );

    // The server's timeout answers DEADLINE_EXCEEDED as a real gRPC status.
    let status = ping(&mut grpc, "/test.Echo/Slow", "hello")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
}

#[tokio::test]
async fn the_breaker_opens_on_unavailable_and_refuses_without_calling() {
    let (addr, calls) = server(usize::MAX).await;
    let channel = channel(addr).await;
    let breaker = CircuitBreakerLayer::new(
        Config::builder()
            .consecutive_failures(3)
            .open_duration(Duration::from_secs(60))
            .build()
            .unwrap(),
    )
    .classify(GrpcResponse::default());
    let handle = breaker.handle();
    let stack = ServiceBuilder::new().layer(breaker).service(channel);
    let mut grpc = tonic::client::Grpc::new(stack);
    for _ in 0..5 {
        let status = ping(&mut grpc, "/test.Echo/Say", "hello")
            .await
            .unwrap_err();
        assert!(
            matches!(status.code(), Code::Unavailable | Code::Unknown),
            "{status:?}"
        );
    }
    assert_eq!(handle.state(), State::Open);
    assert_eq!(
        calls.load(SeqCst),
        3,
        "refused calls never reach the server"
    );
}
