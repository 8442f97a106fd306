//! gRPC behind the Idempotency-Key layer: a real tonic server (hand-written prost messages, no
//! protoc, as in tonic_grpc.rs) wrapped in `IdempotencyLayer` for POST (every gRPC call is a
//! POST), and a real tonic client that sends `idempotency-key` metadata. A retried call is
//! replayed with its gRPC status, which lives in the trailers (or, for an error, in the
//! trailers-only headers), on the memory store and on a real redis-server.
//! The layer goes straight onto `Server::builder().layer(..)`: tonic's routes take the buffered
//! body it hands on.

mod common;

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    task::{Context, Poll},
};

use common::redis_server::RedisServer;
use http::uri::PathAndQuery;
use tonic::{Code, Status, body::Body, server::NamedService, transport::Server};
use tower::Service;
use tower_rampart::idempotency::{IDEMPOTENT_REPLAYED, IdempotencyLayer, RedisStore, Store};

#[derive(Clone, PartialEq, prost::Message)]
struct Charge {
    #[prost(string, tag = "1")]
    order: String,
    #[prost(uint64, tag = "2")]
    amount: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Receipt {
    #[prost(string, tag = "1")]
    order: String,
    /// Which execution answered: a replay carries the first one's.
    #[prost(uint64, tag = "2")]
    run: u64,
}

type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// `test.Payments/Charge` answers a receipt naming its run; `test.Payments/Refuse` answers
/// FAILED_PRECONDITION. Both count their executions.
#[derive(Clone, Default)]
struct Payments {
    runs: Arc<AtomicUsize>,
}

impl NamedService for Payments {
    const NAME: &'static str = "test.Payments";
}

struct Charging(Payments);

impl tonic::server::UnaryService<Charge> for Charging {
    type Response = Receipt;
    type Future = BoxFut<Result<tonic::Response<Receipt>, Status>>;

    fn call(&mut self, req: tonic::Request<Charge>) -> Self::Future {
        let runs = self.0.runs.clone();
        Box::pin(async move {
            let run = runs.fetch_add(1, SeqCst) as u64 + 1;
            let mut res = tonic::Response::new(Receipt {
                order: req.into_inner().order,
                run,
            });
            res.metadata_mut().insert("x-run", run.into());
            Ok(res)
        })
    }
}

struct Refusing(Payments);

impl tonic::server::UnaryService<Charge> for Refusing {
    type Response = Receipt;
    type Future = BoxFut<Result<tonic::Response<Receipt>, Status>>;

    fn call(&mut self, _: tonic::Request<Charge>) -> Self::Future {
        let runs = self.0.runs.clone();
        Box::pin(async move {
            let run = runs.fetch_add(1, SeqCst) + 1;
            Err(Status::failed_precondition(format!(
                "insufficient funds (run {run})"
            )))
        })
    }
}

impl<B> Service<http::Request<B>> for Payments
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
        let svc = self.clone();
        Box::pin(async move {
            let mut grpc =
                tonic::server::Grpc::new(tonic_prost::ProstCodec::<Receipt, Charge>::default());
            Ok(match req.uri().path() {
                "/test.Payments/Charge" => grpc.unary(Charging(svc), req).await,
                "/test.Payments/Refuse" => grpc.unary(Refusing(svc), req).await,
                _ => Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

/// A tonic server on 127.0.0.1 behind the idempotency layer on `store`; its address and the
/// executions.
async fn server<St: Store>(store: St) -> (String, Arc<AtomicUsize>) {
    let layer = IdempotencyLayer::builder()
        .store(store)
        .methods(&[http::Method::POST])
        .global_keys()
        .build()
        .unwrap();
    let payments = Payments::default();
    let runs = payments.runs.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        Server::builder()
            .layer(layer)
            .add_service(payments)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
            .unwrap()
    });
    (format!("http://{addr}"), runs)
}

type Client = tonic::client::Grpc<tonic::transport::Channel>;

async fn client(addr: &str) -> Client {
    let channel = tonic::transport::Endpoint::from_shared(addr.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    tonic::client::Grpc::new(channel)
}

/// One unary call with `key` as `idempotency-key` metadata (none when `None`).
async fn call(
    grpc: &mut Client,
    method: &'static str,
    key: Option<&str>,
    charge: Charge,
) -> Result<tonic::Response<Receipt>, Status> {
    grpc.ready().await.unwrap();
    let mut req = tonic::Request::new(charge);
    if let Some(key) = key {
        req.metadata_mut()
            .insert("idempotency-key", key.parse().unwrap());
    }
    grpc.unary(
        req,
        PathAndQuery::from_static(method),
        tonic_prost::ProstCodec::<Charge, Receipt>::default(),
    )
    .await
}

fn charge(amount: u64) -> Charge {
    Charge {
        order: "order-7".into(),
        amount,
    }
}

fn replayed(meta: &tonic::metadata::MetadataMap) -> bool {
    meta.get(IDEMPOTENT_REPLAYED).is_some_and(|v| v == "true")
}

async fn replays_ok_and_error_statuses<St: Store>(store: St) {
    let (addr, runs) = server(store).await;
    let mut grpc = client(&addr).await;

    // The first call runs once and answers OK.
    let first = call(&mut grpc, "/test.Payments/Charge", Some("k-ok"), charge(10))
        .await
        .expect("OK");
    assert!(
        !replayed(first.metadata()),
        "the first answer is not a replay"
    );
    assert_eq!(first.metadata().get("x-run").unwrap(), "1");
    let first = first.into_inner();
    assert_eq!(
        first,
        Receipt {
            order: "order-7".into(),
            run: 1
        }
    );
    assert_eq!(runs.load(SeqCst), 1);

    // The same call again: replayed, decoded by the client as the same message with status OK
    // (grpc-status: 0 is a trailer, so the trailers were replayed too).
    for _ in 0..2 {
        let again = call(&mut grpc, "/test.Payments/Charge", Some("k-ok"), charge(10))
            .await
            .expect("a replay with grpc-status OK");
        assert!(replayed(again.metadata()), "{:?}", again.metadata());
        assert_eq!(again.metadata().get("x-run").unwrap(), "1");
        assert_eq!(again.into_inner(), first);
    }
    assert_eq!(runs.load(SeqCst), 1, "replays do not run the handler");

    // An error status is kept and replayed as the same status.
    let refused = call(
        &mut grpc,
        "/test.Payments/Refuse",
        Some("k-err"),
        charge(10),
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert_eq!(refused.message(), "insufficient funds (run 2)");
    assert!(!replayed(refused.metadata()));
    assert_eq!(runs.load(SeqCst), 2);
    let again = call(
        &mut grpc,
        "/test.Payments/Refuse",
        Some("k-err"),
        charge(10),
    )
    .await
    .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");
    assert_eq!(again.message(), refused.message());
    assert!(replayed(again.metadata()), "{:?}", again.metadata());
    assert_eq!(
        runs.load(SeqCst),
        2,
        "the error was replayed, not run again"
    );

    // Another request under a used key is refused (422 problem+json: to a gRPC client, an
    // HTTP error, not a gRPC status) and not run.
    let other = call(&mut grpc, "/test.Payments/Charge", Some("k-ok"), charge(11))
        .await
        .unwrap_err();
    assert_ne!(other.code(), Code::Ok);
    assert!(other.message().contains("422"), "{other:?}");
    // And a call without a key is refused (the key is required by default), not run.
    let keyless = call(&mut grpc, "/test.Payments/Charge", None, charge(12))
        .await
        .unwrap_err();
    assert!(keyless.message().contains("400"), "{keyless:?}");
    assert_eq!(runs.load(SeqCst), 2);
}

#[tokio::test]
async fn grpc_calls_are_replayed_with_their_status_from_memory() {
    replays_ok_and_error_statuses(tower_rampart::idempotency::MemoryStore::new()).await;
}

#[tokio::test]
async fn grpc_calls_are_replayed_with_their_status_from_redis() {
    let redis = RedisServer::start();
    let store = RedisStore::connect(&redis.url()).await.unwrap();
    replays_ok_and_error_statuses(store).await;
}
