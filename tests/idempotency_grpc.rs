//! gRPC behind the Idempotency-Key layer: a real tonic server (hand-written prost messages, no
//! protoc, as in tonic_grpc.rs) wrapped in `IdempotencyLayer` for POST (every gRPC call is a
//! POST), and a real tonic client that sends `idempotency-key` metadata. A retried call is
//! replayed with its gRPC status, which lives in the trailers (or, for an error, in the
//! trailers-only headers), on the memory store and on a real redis-server.
//! The layer goes straight onto `Server::builder().layer(..)`: tonic's routes take the buffered
//! body it hands on.

mod common;

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering::SeqCst},
};

use common::{
    grpc::{Methods, ServiceName, channel, incoming, unary},
    redis_server::RedisServer,
};
use tonic::{Code, Status, transport::Server};
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

struct Payments;

impl ServiceName for Payments {
    const NAME: &'static str = "test.Payments";
}

/// A tonic server on 127.0.0.1 behind the idempotency layer on `store`; its address and the
/// executions. `test.Payments/Charge` answers a receipt naming its run; `test.Payments/Refuse`
/// answers FAILED_PRECONDITION. Both count their executions.
async fn server<St: Store>(store: St) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let layer = IdempotencyLayer::builder()
        .store(store)
        .methods(&[http::Method::POST])
        .global_keys()
        .build()
        .unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let (charging, refusing) = (runs.clone(), runs.clone());
    let payments = Methods::<Payments, Charge, Receipt>::default()
        .unary("Charge", move |req| {
            let run = charging.fetch_add(1, SeqCst) as u64 + 1;
            let order = req.into_inner().order;
            let mut res = tonic::Response::new(Receipt { order, run });
            res.metadata_mut().insert("x-run", run.into());
            Box::pin(async move { Ok(res) })
        })
        .unary("Refuse", move |_| {
            let run = refusing.fetch_add(1, SeqCst) + 1;
            let status = Status::failed_precondition(format!("insufficient funds (run {run})"));
            Box::pin(async move { Err(status) })
        });
    let (incoming, addr) = incoming().await;
    let server = Server::builder()
        .layer(layer)
        .add_service(payments)
        .serve_with_incoming(incoming);
    tokio::spawn(server);
    (addr, runs)
}

type Client = tonic::client::Grpc<tonic::transport::Channel>;

/// One unary call with `key` as `idempotency-key` metadata (none when `None`).
async fn call(
    grpc: &mut Client,
    method: &'static str,
    key: Option<&str>,
    charge: Charge,
) -> Result<tonic::Response<Receipt>, Status> {
    let mut req = tonic::Request::new(charge);
    if let Some(key) = key {
        req.metadata_mut()
            .insert("idempotency-key", key.parse().unwrap());
    }
    unary(grpc, method, req).await
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
    let mut grpc = Client::new(channel(addr).await);

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

    // An error status is kept and replayed as the same status: the first call runs, the second
    // is a replay.
    for replay in [false, true] {
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
        assert_eq!(
            replayed(refused.metadata()),
            replay,
            "{:?}",
            refused.metadata()
        );
        assert_eq!(
            runs.load(SeqCst),
            2,
            "the error was replayed, not run again"
        );
    }

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
