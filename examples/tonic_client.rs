//! A tonic client channel behind retry + circuit breaker + timeout, classified by gRPC status,
//! against a real tonic server on 127.0.0.1 (hand-written prost message, no protoc).
//!
//! The server's `demo.Echo/Say` answers UNAVAILABLE to its first two calls, then echoes;
//! `demo.Echo/Fail` always answers UNAVAILABLE. The client stack is `BufferBodyLayer` > retry
//! (3 attempts, any method: the gRPC classifier decides what is retryable) > breaker (open after
//! 3 failures in a row, for 1 s) > attempt timeout. Printed as it happens: every server call,
//! retry (with its delay), give-up and breaker transition. It shows:
//!
//! 1. `Say` succeeding on its third attempt;
//! 2. `Fail` opening the breaker, then calls refused without reaching the server;
//! 3. after the open second, a probe closing the breaker again.
//!
//! ```text
//! cargo run --example tonic_client
//! ```

use std::{
    convert::Infallible,
    error::Error as _,
    future::Future,
    pin::Pin,
    sync::{
        Arc, LazyLock,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use http::uri::PathAndQuery;
use tonic::{Status, body::Body, server::NamedService, transport::Server};
use tower::{Service, ServiceBuilder};
use tower_rampart::{
    BoxError,
    backoff::Backoff,
    circuit_breaker::{CircuitBreakerLayer, CircuitOpen, Config, Event, EventKind},
    classify::GrpcResponse,
    retry::{self, BufferBodyLayer, Buffered, GrpcReplay, RetryLayer},
    timeout::TimeoutLayer,
};

static START: LazyLock<Instant> = LazyLock::new(Instant::now);

/// `println!` after the time since the start of the run: `[ 1.23s] ...`.
macro_rules! log {
    ($($arg:tt)*) => {
        println!("[{:5.2}s] {}", START.elapsed().as_secs_f64(), format_args!($($arg)*))
    };
}

#[derive(Clone, PartialEq, prost::Message)]
struct Ping {
    #[prost(string, tag = "1")]
    text: String,
}

type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The server, with its call counts per method.
#[derive(Clone, Default)]
struct Echo {
    say: Arc<AtomicUsize>,
    fail: Arc<AtomicUsize>,
}

impl NamedService for Echo {
    const NAME: &'static str = "demo.Echo";
}

/// A method of [`Echo`]: its call count, its name, and how many calls fail before it echoes.
struct Method(Arc<AtomicUsize>, &'static str, usize);

impl tonic::server::UnaryService<Ping> for Method {
    type Response = Ping;
    type Future = BoxFut<Result<tonic::Response<Ping>, Status>>;

    fn call(&mut self, req: tonic::Request<Ping>) -> Self::Future {
        let n = self.0.fetch_add(1, SeqCst) + 1;
        let (name, fail) = (self.1, n <= self.2);
        let outcome = if fail { "UNAVAILABLE" } else { "OK" };
        log!("server: {name} call {n} -> {outcome}");
        Box::pin(async move {
            if fail {
                return Err(Status::unavailable(format!("{name}: not ready (call {n})")));
            }
            Ok(tonic::Response::new(req.into_inner()))
        })
    }
}

impl<B> Service<http::Request<B>> for Echo
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<BoxError> + Send + 'static,
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
            let method = match req.uri().path() {
                "/demo.Echo/Say" => Method(echo.say, "Say", 2),
                "/demo.Echo/Fail" => Method(echo.fail, "Fail", usize::MAX),
                _ => return Ok(Status::unimplemented("no such method").into_http()),
            };
            Ok(grpc.unary(method, req).await)
        })
    }
}

static RETRIES: AtomicUsize = AtomicUsize::new(0);

/// Prints every retry (the coming attempt's number and delay) and every give-up (and why).
fn on_retry(e: &retry::Event<'_>) {
    let name = e.retry;
    match e.kind {
        retry::EventKind::Retry { attempt, delay, .. } => {
            RETRIES.fetch_add(1, SeqCst);
            let ms = delay.as_secs_f64() * 1e3;
            log!("retry `{name}`: attempt {attempt} after {ms:.1} ms");
        }
        retry::EventKind::GaveUp { attempts, reason } => {
            log!("retry `{name}`: gave up after {attempts} attempt(s): {reason}");
        }
        _ => {}
    }
}

/// Prints every state change of a breaker.
fn on_transition(e: &Event<'_>) {
    if let EventKind::Transition { from, to } = e.kind {
        log!("breaker `{}`: {from} -> {to}", e.breaker);
    }
}

/// Calls `demo.Echo/{method}` and prints the outcome; returns whether the breaker refused the
/// call (a refusal comes back as a `Status` whose source is the `CircuitOpen`).
async fn call<S>(grpc: &mut tonic::client::Grpc<S>, method: &str) -> Result<bool, BoxError>
where
    S: tonic::client::GrpcService<Body>,
    S::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <S::ResponseBody as http_body::Body>::Error: Into<BoxError>,
{
    let sent = Instant::now();
    grpc.ready().await.map_err(Into::into)?;
    let path = PathAndQuery::try_from(format!("/demo.Echo/{method}"))?;
    let req = tonic::Request::new(Ping {
        text: "hello".into(),
    });
    let codec = tonic_prost::ProstCodec::<Ping, Ping>::default();
    let out = grpc.unary(req, path, codec).await;
    let ms = sent.elapsed().as_secs_f64() * 1e3;
    match out {
        Ok(reply) => log!(
            "client: {method} -> OK {:?} in {ms:.1} ms",
            reply.get_ref().text
        ),
        Err(status) => {
            let refusal = status
                .source()
                .and_then(|e| e.downcast_ref::<CircuitOpen>());
            if let Some(open) = refusal {
                log!("client: {method} -> refused in {ms:.2} ms: {open}");
                return Ok(true);
            }
            let (code, message) = (status.code(), status.message());
            log!("client: {method} -> {code:?} {message:?} in {ms:.1} ms");
        }
    }
    Ok(false)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    LazyLock::force(&START);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let echo = Echo::default();
    let server = Server::builder()
        .add_service(echo.clone())
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
    tokio::spawn(server);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    log!("server: demo.Echo on http://{addr}");

    // Retry: 3 attempts, exponential backoff from 50 ms with full jitter.
    let retry = RetryLayer::builder()
        .name("echo")
        .max_attempts(3)
        .backoff(Backoff::exponential(Duration::from_millis(50)))
        .on_event(on_retry)
        .build()?
        .classify(GrpcResponse::default())
        // gRPC calls are POSTs: gRPC's own rule sends any call again (the classifier picks the
        // codes worth it); a method that must not run twice would be marked `.never(..)`.
        .replay(GrpcReplay::default());
    // Breaker: open after 3 failures in a row, for 1 s; then one probe decides.
    let config = Config::builder()
        .name("echo")
        .consecutive_failures(3)
        .open_duration(Duration::from_secs(1))
        .half_open_permits(1)
        .on_event(on_transition)
        .build()?;
    let breaker = CircuitBreakerLayer::new(config).classify(GrpcResponse::default());
    let handle = breaker.handle();
    let stack = ServiceBuilder::new()
        .layer(BufferBodyLayer::default())
        .layer(retry)
        .layer(breaker)
        .map_request(|r: http::Request<Buffered<Body>>| r.map(Body::new))
        .layer(TimeoutLayer::new(Duration::from_secs(2))?)
        .service(channel);
    let mut grpc = tonic::client::Grpc::new(stack);
    let mut refused = 0;

    println!("\n1. Say: UNAVAILABLE twice, then OK");
    call(&mut grpc, "Say").await?;
    log!("server-side Say calls: {}", echo.say.load(SeqCst));

    println!("\n2. Fail: always UNAVAILABLE; the breaker opens and refuses every method");
    for method in ["Fail", "Fail", "Fail", "Say"] {
        refused += usize::from(call(&mut grpc, method).await?);
    }
    let (say, fail) = (echo.say.load(SeqCst), echo.fail.load(SeqCst));
    log!("server-side calls: Fail {fail}, Say {say} (refused calls never arrived)");

    println!("\n3. after the open second, Say probes");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    call(&mut grpc, "Say").await?;

    let (say, fail) = (echo.say.load(SeqCst), echo.fail.load(SeqCst));
    let snap = handle.snapshot();
    println!("\nsummary after {:.2}s", START.elapsed().as_secs_f64());
    println!("  retries made:                 {}", RETRIES.load(SeqCst));
    println!("  server-side calls:            Say {say}, Fail {fail}");
    println!("  calls refused by the breaker: {refused}");
    let (name, state, total) = (handle.name(), snap.state, snap.not_permitted);
    println!("  breaker `{name}`: {state}, {total} refused in total");
    Ok(())
}
