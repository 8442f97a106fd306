//! A `reqwest::Client` behind the standard client pipeline, against a real flaky axum server.
//!
//! The example serves one axum app on two ports of 127.0.0.1 (two "hosts", since breakers are
//! kept per `host:port`) and calls it through `SetIdempotencyKeyLayer` > `StandardClientLayer`
//! (total timeout > retry > per-host breaker > attempt timeout). It shows, printing each retry,
//! give-up and breaker transition as it happens:
//!
//! 1. a GET retried after two 503s until it succeeds;
//! 2. a 503 with `Retry-After: 1` honoured: the next attempt comes about one second later;
//! 3. a POST given an `Idempotency-Key` once, retried, every attempt carrying the same key;
//! 4. a host that always answers 500 opening its breaker, later calls failing fast with
//!    `CircuitOpen` while the other host's breaker stays closed.
//!
//! ```text
//! cargo run --example reqwest_client
//! ```

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{
        Arc, LazyLock, Mutex,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::State as Shared,
    http::{HeaderMap, StatusCode, header::RETRY_AFTER},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_rampart::{
    BoxError,
    backoff::Backoff,
    circuit_breaker::{CircuitOpen, Config, Event, EventKind},
    pipeline::StandardClientLayer,
    retry::{self, IDEMPOTENCY_KEY, SetIdempotencyKeyLayer},
};

static START: LazyLock<Instant> = LazyLock::new(Instant::now);

/// `println!` after the time since the start of the run: `[ 1.23s] ...`.
macro_rules! log {
    ($($arg:tt)*) => {
        println!("[{:5.2}s] {}", START.elapsed().as_secs_f64(), format_args!($($arg)*))
    };
}

/// What the server saw, per route.
#[derive(Clone, Default)]
struct Downstream {
    flaky: Arc<AtomicUsize>,
    busy: Arc<Mutex<Vec<Instant>>>,
    orders: Arc<Mutex<Vec<String>>>,
    broken: Arc<AtomicUsize>,
}

/// 503 for the first `fail` hits, then `ok`.
fn status(hit: usize, fail: usize, ok: StatusCode) -> StatusCode {
    if hit <= fail {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        ok
    }
}

/// `GET /flaky`: 503 for the first two hits, then 200.
async fn flaky(Shared(down): Shared<Downstream>) -> (StatusCode, String) {
    let hit = down.flaky.fetch_add(1, SeqCst) + 1;
    let status = status(hit, 2, StatusCode::OK);
    log!("server: GET /flaky hit {hit} -> {}", status.as_u16());
    (status, format!("hit {hit}"))
}

/// `GET /busy`: the first hit answers 503 with `Retry-After: 1`, later ones 200.
async fn busy(Shared(down): Shared<Downstream>) -> Response {
    let mut times = down.busy.lock().unwrap();
    times.push(Instant::now());
    if times.len() == 1 {
        log!("server: GET /busy hit 1 -> 503, Retry-After: 1");
        let busy = StatusCode::SERVICE_UNAVAILABLE;
        (busy, [(RETRY_AFTER, "1")], "busy").into_response()
    } else {
        log!("server: GET /busy hit {} -> 200", times.len());
        (StatusCode::OK, "done").into_response()
    }
}

/// `POST /orders`: 503 for the first two attempts, then 201; logs each `Idempotency-Key`.
async fn orders(Shared(down): Shared<Downstream>, headers: HeaderMap) -> StatusCode {
    let key = headers
        .get(IDEMPOTENCY_KEY)
        .map(|v| v.to_str().unwrap_or("?"));
    let key = key.unwrap_or("(none)").to_owned();
    let mut keys = down.orders.lock().unwrap();
    keys.push(key.clone());
    let (n, status) = (keys.len(), status(keys.len(), 2, StatusCode::CREATED));
    log!(
        "server: POST /orders attempt {n}, Idempotency-Key: {key} -> {}",
        status.as_u16()
    );
    status
}

/// `GET /broken`: always 500.
async fn broken(Shared(down): Shared<Downstream>) -> StatusCode {
    let hit = down.broken.fetch_add(1, SeqCst) + 1;
    log!("server: GET /broken hit {hit} -> 500");
    StatusCode::INTERNAL_SERVER_ERROR
}

async fn serve(app: Router) -> Result<SocketAddr, BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
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

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    LazyLock::force(&START);
    let down = Downstream::default();
    let app = Router::new()
        .route("/flaky", get(flaky))
        .route("/busy", get(busy))
        .route("/orders", post(orders))
        .route("/broken", get(broken))
        .with_state(down.clone());
    let (api, legacy) = (serve(app.clone()).await?, serve(app).await?);
    log!("servers: api on http://{api}, legacy on http://{legacy} (same routes)");

    let layer = StandardClientLayer::builder()
        .name("shop")
        .total_timeout(Duration::from_secs(5))
        .attempt_timeout(Duration::from_secs(1))
        // 3 attempts, exponential backoff from 100 ms with full jitter, `Retry-After` honoured.
        // Only what differs from the pipeline's defaults (which keep its retry budget).
        .retry(|defaults| {
            defaults
                .backoff(Backoff::exponential(Duration::from_millis(100)))
                .on_event(on_retry)
        })
        // One breaker per host: open after 3 failures in a row, for 30 s.
        .replace_circuit_breaker(
            Config::builder()
                .consecutive_failures(3)
                .open_duration(Duration::from_secs(30))
                .on_event(on_transition),
        )
        .build()?;
    let breakers = layer.breakers();
    let http = reqwest::Client::builder().no_proxy().build()?;
    // The key is made outside the retry stage, so every attempt of one POST repeats it.
    let mut client = ServiceBuilder::new()
        .layer(SetIdempotencyKeyLayer::new())
        .layer(layer)
        .service(http.clone());

    println!("\n1. GET /flaky: 503, 503, then 200");
    let req = http.get(format!("http://{api}/flaky")).build()?;
    let res = client.ready().await?.call(req).await?;
    let (status, hits) = (res.status(), down.flaky.load(SeqCst));
    log!(
        "client: {status} {:?}; server hits: {hits}",
        res.text().await?
    );

    println!("\n2. GET /busy: 503 with Retry-After: 1, then 200");
    let req = http.get(format!("http://{api}/busy")).build()?;
    let status = client.ready().await?.call(req).await?.status();
    let times = down.busy.lock().unwrap().clone();
    let gap = (times[1] - times[0]).as_secs_f64();
    log!("client: {status}; measured gap between the attempts: {gap:.3} s");

    println!("\n3. POST /orders, no key given: 503, 503, then 201");
    let req = http.post(format!("http://{api}/orders"));
    let req = req.body(r#"{"sku":"A-1"}"#).build()?;
    let status = client.ready().await?.call(req).await?.status();
    let keys = down.orders.lock().unwrap().clone();
    let (attempts, distinct) = (keys.len(), keys.iter().collect::<HashSet<_>>().len());
    log!("client: {status}; the server saw {attempts} attempts, {distinct} distinct key(s)");

    println!("\n4. GET /broken on the legacy host: always 500");
    let mut refused = 0;
    for i in 1..=4 {
        let sent = Instant::now();
        let req = http.get(format!("http://{legacy}/broken")).build()?;
        let out = client.ready().await?.call(req).await;
        let ms = sent.elapsed().as_secs_f64() * 1e3;
        match out {
            Ok(res) => log!("client: call {i}: {} after {ms:.1} ms", res.status()),
            Err(e) => match e.downcast_ref::<CircuitOpen>() {
                Some(open) => {
                    refused += 1;
                    log!("client: call {i}: refused in {ms:.2} ms: {open}");
                }
                None => log!("client: call {i}: error after {ms:.1} ms: {e}"),
            },
        }
    }
    let req = http.get(format!("http://{api}/flaky")).build()?;
    let status = client.ready().await?.call(req).await?.status();
    log!("client: the api host still answers: GET /flaky -> {status}");

    let (flaky, broken) = (down.flaky.load(SeqCst), down.broken.load(SeqCst));
    println!("\nsummary after {:.2}s", START.elapsed().as_secs_f64());
    println!("  retries made:                  {}", RETRIES.load(SeqCst));
    println!("  GET /flaky server hits:        {flaky}");
    println!("  GET /busy Retry-After gap:     {gap:.3} s");
    println!("  POST /orders attempts / keys:  {attempts} / {distinct}");
    println!("  GET /broken server hits:       {broken}");
    println!("  calls refused by the breaker:  {refused}");
    let mut hosts = breakers.keys();
    hosts.sort_by_key(ToString::to_string);
    for b in hosts.iter().filter_map(|host| breakers.get(host)) {
        let (name, snap) = (b.name(), b.snapshot());
        let (state, refused) = (snap.state, snap.not_permitted);
        println!("  breaker `{name}`: {state}, {refused} refused");
    }
    Ok(())
}
