//! Fault injection against the standard client pipeline, over loopback.
//!
//! An axum server on 127.0.0.1 answers `GET /price` behind two chaos layers: 200 ms of added
//! latency on 30 % of calls, and `503 Service Unavailable` on 30 % of calls (each with its own
//! seed, so every run injects the same number of faults). A reqwest client calls it 300 times,
//! one call every 4 ms and at most eight at a time, through a fallback (a stale price when the breaker refuses) around the
//! standard client pipeline (total timeout > retry > per-host breaker > attempt timeout).
//!
//! The run has three phases, switched through the server's `ChaosHandle`:
//!
//! 1. 120 calls at 30 % 503s: retries absorb the faults, the breaker stays closed;
//! 2. 60 calls during an "outage" (503 on every call): the breaker opens, the fallback answers;
//! 3. back to 30 %, after the breaker's open duration: probes succeed and the breaker closes.
//!
//! It prints every breaker transition as it happens and a closing table.
//!
//! ```text
//! cargo run --example chaos
//! ```

use std::{
    sync::{
        Arc, LazyLock,
        atomic::{AtomicU32, AtomicUsize, Ordering::SeqCst},
    },
    time::{Duration, Instant},
};

use axum::{Router, routing::get};
use futures_util::{StreamExt, stream};
use http::StatusCode;
use tower::{ServiceBuilder, ServiceExt, util::MapRequestLayer};
use tower_rampart::{
    BoxError,
    backoff::Backoff,
    chaos::{ChaosHandle, ChaosLayer, Config, Fault},
    circuit_breaker::{self, Event, EventKind},
    fallback::{FallbackLayer, Trigger},
    pipeline::StandardClientLayer,
    retry::RetryLayer,
};

static START: LazyLock<Instant> = LazyLock::new(Instant::now);

/// `println!` after the time since the start of the run: `[ 1.23s] ...`.
macro_rules! log {
    ($($arg:tt)*) => {
        println!("[{:5.2}s] {}", START.elapsed().as_secs_f64(), format_args!($($arg)*))
    };
}

const CALLS: usize = 300;
const AT_ONCE: usize = 8;
const PACE: Duration = Duration::from_millis(4);

/// The server: `GET /price` behind 30 % latency and 30 % 503s; the handles of both layers.
async fn server() -> Result<(String, ChaosHandle, ChaosHandle), BoxError> {
    let latency = ChaosLayer::new(
        Config::builder()
            .name("latency")
            .fault(Fault::Latency(Duration::from_millis(200)))
            .injection_rate(0.3)
            .enabled(true)
            .seed(1)
            .build()?,
    )
    .respond_http();
    let errors = ChaosLayer::new(
        Config::builder()
            .name("errors")
            .fault(Fault::http(StatusCode::SERVICE_UNAVAILABLE))
            .injection_rate(0.3)
            .enabled(true)
            .seed(2)
            .build()?,
    )
    .respond_http();
    let (slow, failing) = (latency.handle(), errors.handle());
    // The latency layer is outside: some of the 503s are slow too.
    let app = Router::new()
        .route("/price", get(|| async { "42.00" }))
        .layer(errors)
        .layer(latency);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((format!("http://{addr}"), slow, failing))
}

/// Prints every state change of a breaker.
fn on_transition(e: &Event<'_>) {
    if let EventKind::Transition { from, to } = e.kind {
        log!("breaker `{}`: {from} -> {to}", e.breaker);
    }
}

/// How one call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    FirstTime,
    AfterRetries,
    Failed,
    Fallback,
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    LazyLock::force(&START);
    let (base, slow, failing) = server().await?;
    log!("server on {base}: 30 % of calls +200 ms, 30 % of calls 503");

    let pipeline = StandardClientLayer::builder()
        .name("prices")
        .total_timeout(Duration::from_secs(5))
        .attempt_timeout(Duration::from_secs(1))
        .replace_retry(
            RetryLayer::builder()
                .max_attempts(3)
                .backoff(Backoff::exponential(Duration::from_millis(20))),
        )
        .replace_circuit_breaker(
            circuit_breaker::Config::builder()
                .count_window(20)
                .minimum_calls(10)
                .failure_rate(0.8)
                .open_duration(Duration::from_millis(500))
                .half_open_permits(2)
                .on_event(on_transition),
        )
        .build()?;
    // Attempts that reached the network, per call (each request carries its call number).
    let attempts: Arc<Vec<AtomicU32>> = Arc::new((0..CALLS).map(|_| AtomicU32::new(0)).collect());
    let count = attempts.clone();
    let short_circuited = Arc::new(AtomicUsize::new(0));
    let refused = short_circuited.clone();
    let http = reqwest::Client::builder().no_proxy().build()?;
    let client = ServiceBuilder::new()
        // The breaker's refusals get a stale price, marked `x-fallback`.
        .layer(
            FallbackLayer::from_fn(move |_cause| {
                refused.fetch_add(1, SeqCst);
                let res = http::Response::builder()
                    .header("x-fallback", "stale")
                    .body("41.80")
                    .expect("a valid response");
                reqwest::Response::from(res)
            })
            .on(&[Trigger::CircuitOpen]),
        )
        .layer(pipeline)
        .layer(MapRequestLayer::new(move |req: reqwest::Request| {
            let call = req.headers()["x-call"]
                .to_str()
                .ok()
                .and_then(|c| c.parse().ok());
            count[call.unwrap_or(0usize)].fetch_add(1, SeqCst);
            req
        }))
        .service(http.clone());

    // A steady stream: one call every 4 ms, at most eight in flight.
    let run = async |calls: std::ops::Range<usize>| -> Vec<(Ending, Duration)> {
        let (start, first) = (tokio::time::Instant::now(), calls.start);
        stream::iter(calls)
            .map(|i| {
                let (client, attempts) = (client.clone(), attempts.clone());
                let req = http
                    .get(format!("{base}/price"))
                    .header("x-call", i.to_string());
                let at = start + PACE * u32::try_from(i - first).unwrap_or(u32::MAX);
                async move {
                    tokio::time::sleep_until(at).await;
                    let sent = Instant::now();
                    let out = client.oneshot(req.build().expect("a valid request")).await;
                    let took = sent.elapsed();
                    let ending = match out {
                        Ok(res) if res.headers().contains_key("x-fallback") => Ending::Fallback,
                        Ok(res) if res.status().is_success() => match attempts[i].load(SeqCst) {
                            1 => Ending::FirstTime,
                            _ => Ending::AfterRetries,
                        },
                        _ => Ending::Failed,
                    };
                    (ending, took)
                }
            })
            .buffer_unordered(AT_ONCE)
            .collect()
            .await
    };

    println!("\n1. calls 1-120: 30 % 503s, 30 % +200 ms");
    let mut results = run(0..120).await;
    log!("done: {}", tally(&results));

    println!("\n2. calls 121-180: outage, every call 503");
    failing.set_injection_rate(1.0)?;
    let outage = run(120..180).await;
    log!("done: {}", tally(&outage));
    results.extend(outage);
    failing.set_injection_rate(0.3)?;
    log!("outage over: back to 30 % 503s; waiting out the breaker's open duration");
    tokio::time::sleep(Duration::from_millis(600)).await;

    println!("\n3. calls 181-300: 30 % 503s again");
    let after = run(180..CALLS).await;
    log!("done: {}", tally(&after));
    results.extend(after);

    let count = |e: Ending| results.iter().filter(|(x, _)| *x == e).count();
    let retried = attempts.iter().filter(|a| a.load(SeqCst) > 1).count();
    let mut times: Vec<Duration> = results.iter().map(|(_, t)| *t).collect();
    times.sort_unstable();
    let pct = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let sent: u32 = attempts.iter().map(|a| a.load(SeqCst)).sum();

    println!("\nsummary after {:.2}s", START.elapsed().as_secs_f64());
    println!(
        "  | calls                          | {:>9} |",
        results.len()
    );
    println!(
        "  | succeeded first time           | {:>9} |",
        count(Ending::FirstTime)
    );
    println!("  | retried                        | {retried:>9} |");
    println!(
        "  |   of which succeeded           | {:>9} |",
        count(Ending::AfterRetries)
    );
    println!(
        "  | failed (503 after retries)     | {:>9} |",
        count(Ending::Failed)
    );
    println!(
        "  | short-circuited by the breaker | {:>9} |",
        short_circuited.load(SeqCst)
    );
    println!(
        "  | answered by fallback           | {:>9} |",
        count(Ending::Fallback)
    );
    println!(
        "  | latency p50                    | {:>6.1} ms |",
        ms(pct(0.5))
    );
    println!(
        "  | latency p99                    | {:>6.1} ms |",
        ms(pct(0.99))
    );
    println!(
        "  attempts sent: {sent}; the server injected {} 503s and {} delays",
        failing.injected(),
        slow.injected()
    );
    Ok(())
}

fn tally(results: &[(Ending, Duration)]) -> String {
    let c = |e| results.iter().filter(|(x, _)| *x == e).count();
    format!(
        "{} first time, {} after retries, {} failed, {} fallback",
        c(Ending::FirstTime),
        c(Ending::AfterRetries),
        c(Ending::Failed),
        c(Ending::Fallback)
    )
}
