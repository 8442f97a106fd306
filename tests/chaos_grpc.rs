//! Fault injection on a real tonic server: the chaos layer in gRPC mode answers statuses a tonic
//! client reads as real gRPC errors.

mod common;

use common::grpc::{Echo, Methods, Ping, channel, incoming, ping};
use http::StatusCode;
use tonic::{Code, transport::Server};
use tower_rampart::{
    chaos::{ChaosLayer, Config, Fault},
    classify::GrpcCode,
};

#[tokio::test]
async fn grpc_mode_answers_real_grpc_statuses() {
    let chaos = ChaosLayer::new(
        Config::builder()
            .fault(Fault::grpc(GrpcCode::Unavailable, "injected outage: 100%"))
            .injection_rate(1.0)
            .enabled(true)
            .seed(1)
            .build()
            .unwrap(),
    )
    .respond_grpc()
    .when(|req: &http::Request<tonic::body::Body>| req.uri().path() != "/test.Echo/Safe");
    let handle = chaos.handle();
    let echo = Methods::<Echo, Ping, Ping>::default()
        .unary("Say", |req| {
            Box::pin(async move { Ok(tonic::Response::new(req.into_inner())) })
        })
        .unary("Safe", |req| {
            Box::pin(async move { Ok(tonic::Response::new(req.into_inner())) })
        });
    let (incoming, addr) = incoming().await;
    let server = Server::builder()
        .layer(chaos)
        .add_service(echo)
        .serve_with_incoming(incoming);
    tokio::spawn(server);

    let mut grpc = tonic::client::Grpc::new(channel(addr).await);
    let say = async |grpc: &mut tonic::client::Grpc<_>| ping(grpc, "/test.Echo/Say", "hello").await;

    let status = say(&mut grpc).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.message(), "injected outage: 100%");
    // The predicate spares the other method.
    let res = ping(&mut grpc, "/test.Echo/Safe", "hello").await;
    assert_eq!(res.unwrap().text, "hello");

    handle
        .set_fault(Fault::grpc(GrpcCode::ResourceExhausted, "slow down"))
        .unwrap();
    assert_eq!(
        say(&mut grpc).await.unwrap_err().code(),
        Code::ResourceExhausted
    );
    handle.set_fault(Fault::Error).unwrap();
    assert_eq!(say(&mut grpc).await.unwrap_err().code(), Code::Internal);
    // An HTTP status reaches a gRPC client as the code gRPC maps it to.
    handle
        .set_fault(Fault::http(StatusCode::SERVICE_UNAVAILABLE))
        .unwrap();
    assert_eq!(say(&mut grpc).await.unwrap_err().code(), Code::Unavailable);

    handle.disable();
    assert_eq!(say(&mut grpc).await.unwrap().text, "hello");
    assert_eq!(handle.injected(), 4);
}
