//! gRPC retries with the gRPC replay rule: a real tonic server and a tonic channel behind
//! `BufferBodyLayer` > retry (`GrpcResponse` + `GrpcReplay`). Every call is a POST, yet
//! UNAVAILABLE is retried; a method marked as not safe to repeat is sent once; the default HTTP
//! rule (which never repeats a POST without a key) sends every call once.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

use common::grpc::{Methods, Ping, ServiceName, channel, incoming, ping};
use tonic::{Code, Status, body::Body, transport::Server};
use tower::ServiceBuilder;
use tower_rampart::{
    backoff::Backoff,
    classify::GrpcResponse,
    replay::{BufferBodyLayer, Buffered, GrpcReplay, HttpReplay, Replay},
    retry::RetryLayer,
};

struct Payments;

impl ServiceName for Payments {
    const NAME: &'static str = "test.Payments";
}

/// `Get` and `Charge` answer UNAVAILABLE to their first two calls each, then OK.
async fn server() -> (std::net::SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let (gets, charges) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let flaky = |count: Arc<AtomicUsize>| {
        move |req: tonic::Request<Ping>| {
            let n = count.fetch_add(1, SeqCst);
            Box::pin(async move {
                if n < 2 {
                    return Err(Status::unavailable("warming up"));
                }
                Ok(tonic::Response::new(req.into_inner()))
            }) as common::grpc::Reply<Ping>
        }
    };
    let service = Methods::<Payments, Ping, Ping>::default()
        .unary("Get", flaky(gets.clone()))
        .unary("Charge", flaky(charges.clone()));
    let (incoming, addr) = incoming().await;
    tokio::spawn(
        Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming),
    );
    (addr, gets, charges)
}

async fn client<R>(
    addr: std::net::SocketAddr,
    replay: R,
) -> tonic::client::Grpc<impl tonic::client::GrpcService<Body, ResponseBody = Body> + use<R>>
where
    R: Replay<http::Request<Buffered<Body>>> + Clone + Send + Sync + 'static,
{
    let retry = RetryLayer::builder()
        .max_attempts(3)
        .backoff(Backoff::constant(Duration::from_millis(5)))
        .build()
        .unwrap()
        .classify(GrpcResponse::default())
        .replay(replay);
    let stack = ServiceBuilder::new()
        .layer(BufferBodyLayer::default())
        .layer(retry)
        .map_request(|r: http::Request<Buffered<Body>>| r.map(Body::new))
        .service(channel(addr).await);
    tonic::client::Grpc::new(stack)
}

#[tokio::test]
async fn unavailable_is_retried_except_for_methods_marked_never() {
    let (addr, gets, charges) = server().await;
    let mut grpc = client(addr, GrpcReplay::default().never("/test.Payments/Charge")).await;

    let reply = ping(&mut grpc, "/test.Payments/Get", "hi")
        .await
        .expect("third attempt");
    assert_eq!(reply.text, "hi");
    assert_eq!(gets.load(SeqCst), 3, "UNAVAILABLE twice, then OK");

    let status = ping(&mut grpc, "/test.Payments/Charge", "hi")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(charges.load(SeqCst), 1, "a non-idempotent RPC is sent once");
}

/// The HTTP rule sees a POST without an Idempotency-Key: one attempt. This is why gRPC has its
/// own rule.
#[tokio::test]
async fn the_http_rule_would_send_grpc_calls_once() {
    let (addr, gets, _) = server().await;
    let mut grpc = client(addr, HttpReplay::default()).await;
    let status = ping(&mut grpc, "/test.Payments/Get", "hi")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(gets.load(SeqCst), 1);
}
