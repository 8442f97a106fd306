//! gRPC end to end: a real tonic server on 127.0.0.1 (hand-written prost messages, no protoc)
//! and a tonic client channel wrapped in retry + breaker + timeout with gRPC classification.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    task::{Context, Poll},
    time::Duration,
};

use http::uri::PathAndQuery;
use tonic::{Code, Status, body::Body, server::NamedService, transport::Server};
use tower::{Service, ServiceBuilder};
use tower_rampart::{
    backoff::Backoff,
    circuit_breaker::{CircuitBreakerLayer, Config, State},
    classify::GrpcResponse,
    retry::{BufferBodyLayer, HttpReplay, RetryLayer},
    timeout::TimeoutLayer,
};

#[derive(Clone, PartialEq, prost::Message)]
struct Ping {
    #[prost(string, tag = "1")]
    text: String,
}

type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// `test.Echo/Say` answers UNAVAILABLE for its first `fail_first` calls, then echoes;
/// `test.Echo/Slow` takes ten seconds.
#[derive(Clone)]
struct Echo {
    calls: Arc<AtomicUsize>,
    fail_first: usize,
}

impl NamedService for Echo {
    const NAME: &'static str = "test.Echo";
}

struct Say(Echo);

impl tonic::server::UnaryService<Ping> for Say {
    type Response = Ping;
    type Future = BoxFut<Result<tonic::Response<Ping>, Status>>;

    fn call(&mut self, req: tonic::Request<Ping>) -> Self::Future {
        let echo = self.0.clone();
        Box::pin(async move {
            let n = echo.calls.fetch_add(1, SeqCst);
            if n < echo.fail_first {
                return Err(Status::unavailable(format!("warming up ({n})")));
            }
            Ok(tonic::Response::new(req.into_inner()))
        })
    }
}

struct Slow;

impl tonic::server::UnaryService<Ping> for Slow {
    type Response = Ping;
    type Future = BoxFut<Result<tonic::Response<Ping>, Status>>;

    fn call(&mut self, req: tonic::Request<Ping>) -> Self::Future {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok(tonic::Response::new(req.into_inner()))
        })
    }
}

impl<B> Service<http::Request<B>> for Echo
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<tower_rampart::BoxError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFut<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let echo = self.clone();
        Box::pin(async move {
            let mut grpc =
                tonic::server::Grpc::new(tonic_prost::ProstCodec::<Ping, Ping>::default());
            Ok(match req.uri().path() {
                "/test.Echo/Say" => grpc.unary(Say(echo), req).await,
                "/test.Echo/Slow" => grpc.unary(Slow, req).await,
                _ => Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

/// Starts the server (with a 200 ms gRPC-mode timeout) and returns its address and call count.
async fn server(fail_first: usize) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let echo = Echo {
        calls: calls.clone(),
        fail_first,
    };
    tokio::spawn(async move {
        Server::builder()
            .layer(TimeoutLayer::new(Duration::from_millis(200)).respond_grpc())
            .add_service(echo)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
            .unwrap()
    });
    (addr, calls)
}

async fn call(
    grpc: &mut tonic::client::Grpc<
        impl tonic::client::GrpcService<
            Body,
            ResponseBody = impl http_body::Body<
                Data = bytes::Bytes,
                Error = impl Into<tower_rampart::BoxError>,
            > + Send
                           + 'static,
        >,
    >,
    method: &'static str,
) -> Result<Ping, Status> {
    grpc.ready()
        .await
        .map_err(|e| Status::unknown(e.into().to_string()))?;
    grpc.unary(
        tonic::Request::new(Ping {
            text: "hello".into(),
        }),
        PathAndQuery::from_static(method),
        tonic_prost::ProstCodec::<Ping, Ping>::default(),
    )
    .await
    .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn retry_breaker_and_timeout_around_a_tonic_channel() {
    let (addr, calls) = server(2).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
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
        .layer(TimeoutLayer::new(Duration::from_secs(5)))
        .service(channel);
    let mut grpc = tonic::client::Grpc::new(stack);

    let reply = call(&mut grpc, "/test.Echo/Say")
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
    let status = call(&mut grpc, "/test.Echo/Slow").await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
}

#[tokio::test]
async fn the_breaker_opens_on_unavailable_and_refuses_without_calling() {
    let (addr, calls) = server(usize::MAX).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
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
        let status = call(&mut grpc, "/test.Echo/Say").await.unwrap_err();
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
