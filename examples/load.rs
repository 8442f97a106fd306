//! A load run of the Idempotency-Key layer: two in-process app instances (each with its own
//! layer and, with Redis, its own store connection, as two processes would have), a reqwest client
//! at a fixed concurrency alternating between them, each key sent several times; clients retry
//! 409 and 503. Prints throughput, latency, answers by status and executions per key, and fails
//! if any key ran twice.
//!
//! ```text
//! cargo run --release --example load -- [--requests 100000] [--keys N] [--concurrency 100]
//!     [--redis-url URL | memory] [--work-ms 5] [--fast] [--rounds 1]
//! ```
//!
//! Without `--redis-url` it starts its own `redis-server` on a free loopback port if one is on
//! PATH, else uses the memory store (one `MemoryStore` shared by both instances). `--keys`
//! defaults to a tenth of the requests. `--fast`: a handler that does no work, and the same load
//! against the bare handler without the layer, to show the layer's own cost; `--rounds N`
//! repeats the run (alternating layer and bare) with fresh keys.

use std::{
    collections::HashMap,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::post,
};
use futures_util::{StreamExt, stream};
use tower_rampart::idempotency::{IdempotencyLayer, MemoryStore, RedisStore, Store};

type Runs = Arc<Mutex<HashMap<String, usize>>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Attempts per request: the first and retries after a 409 or 503, 50 ms apart.
const ATTEMPTS: usize = 20;

/// The value after `--name`, parsed, or `default`.
fn arg<T: std::str::FromStr>(name: &str, default: T) -> Result<T, BoxError>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name) {
        Some(i) => Ok(args
            .get(i + 1)
            .ok_or(format!("{name} needs a value"))?
            .parse()?),
        None => Ok(default),
    }
}

/// A redis-server of our own on a free loopback port, killed when dropped.
struct OwnRedis(Child, String);

impl OwnRedis {
    fn start() -> Option<OwnRedis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(OwnRedis(child, format!("redis://127.0.0.1:{port}")))
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn pay(
    State((runs, work)): State<(Runs, Duration)>,
    headers: HeaderMap,
) -> (StatusCode, String) {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    *runs.lock().unwrap().entry(key.to_owned()).or_default() += 1;
    if !work.is_zero() {
        tokio::time::sleep(work).await;
    }
    (StatusCode::CREATED, format!("{{\"id\":\"pay_{key}\"}}"))
}

/// Serves `router` on a free loopback port; its `/payments` URL.
async fn serve(router: Router) -> Result<String, BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(format!("http://{addr}/payments"))
}

async fn instance<St: Store + Clone>(
    store: Option<St>,
    runs: Runs,
    work: Duration,
) -> Result<String, BoxError> {
    let router = Router::new()
        .route("/payments", post(pay))
        .with_state((runs, work));
    match store {
        Some(store) => {
            let layer = IdempotencyLayer::builder()
                .store(store)
                .global_keys()
                .build()?;
            serve(router.layer(layer)).await
        }
        None => serve(router).await,
    }
}

/// One run: its wall time, every HTTP answer's latency, answers by status (0: transport error).
#[derive(Default)]
struct Stats {
    wall: Duration,
    latencies: Vec<Duration>,
    by_status: HashMap<u16, usize>,
}

/// Sends `order` (key numbers), `concurrency` at a time, alternating between `urls`.
async fn load(
    client: &reqwest::Client,
    urls: &[String; 2],
    prefix: &str,
    order: &[usize],
    concurrency: usize,
) -> Stats {
    let start = Instant::now();
    let answers: Vec<Vec<(u16, Duration)>> = stream::iter(order.iter().enumerate())
        .map(|(i, key)| async move {
            let mut seen = Vec::new();
            for attempt in 0..ATTEMPTS {
                let t = Instant::now();
                let res = client
                    .post(&urls[(i + attempt) % 2])
                    .header("idempotency-key", format!("{prefix}-{key}"))
                    .header("content-type", "application/json")
                    .body(format!("{{\"amount\":{key}}}"))
                    .send()
                    .await;
                let status = match res {
                    Ok(r) => (r.status().as_u16(), r.bytes().await).0,
                    Err(_) => 0,
                };
                seen.push((status, t.elapsed()));
                if !matches!(status, 0 | 409 | 503) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            seen
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut stats = Stats {
        wall: start.elapsed(),
        ..Stats::default()
    };
    for (status, took) in answers.into_iter().flatten() {
        stats.latencies.push(took);
        *stats.by_status.entry(status).or_default() += 1;
    }
    stats.latencies.sort();
    stats
}

fn report(name: &str, requests: usize, s: &Stats) -> f64 {
    let pct =
        |p: f64| s.latencies[((s.latencies.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3;
    let mut statuses: Vec<_> = s.by_status.iter().collect();
    statuses.sort();
    let throughput = requests as f64 / s.wall.as_secs_f64();
    println!(
        "{name}: {requests} requests in {:.2} s = {throughput:.0} req/s ({} HTTP answers); \
         per answer p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; by status {statuses:?}",
        s.wall.as_secs_f64(),
        s.latencies.len(),
        pct(0.50),
        pct(0.99),
        pct(1.0),
    );
    throughput
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let requests = arg("--requests", 100_000usize)?;
    let keys = arg("--keys", (requests / 10).max(1))?;
    let c = arg("--concurrency", 100usize)?;
    let fast = std::env::args().any(|a| a == "--fast");
    let w = Duration::from_millis(if fast { 0 } else { arg("--work-ms", 5)? });
    let rounds = arg("--rounds", 1usize)?.max(1);
    let mut own_redis = None;
    let url = match arg("--redis-url", String::new())?.as_str() {
        "memory" => None,
        "" => {
            own_redis = OwnRedis::start();
            own_redis.as_ref().map(|r| r.1.clone())
        }
        url => Some(url.to_owned()),
    };
    let (runs, bare_runs): (Runs, Runs) = (Arc::default(), Arc::default());
    let r = &runs;
    let urls = match &url {
        Some(url) => {
            let (s1, s2) = (
                RedisStore::connect(url).await?,
                RedisStore::connect(url).await?,
            );
            s1.ready().await?;
            [
                instance(Some(s1), r.clone(), w).await?,
                instance(Some(s2), r.clone(), w).await?,
            ]
        }
        None => {
            let s = MemoryStore::new();
            [
                instance(Some(s.clone()), r.clone(), w).await?,
                instance(Some(s), r.clone(), w).await?,
            ]
        }
    };
    let (none, b) = (None::<MemoryStore>, bare_runs);
    let bare = [
        instance(none.clone(), b.clone(), w).await?,
        instance(none, b, w).await?,
    ];
    let store = url
        .as_deref()
        .map_or("memory (one store, both instances)".into(), |u| {
            format!("Redis at {u}")
        });
    println!(
        "store: {store}; {} requests over {} keys, {} concurrent, handler work {w:?}, {} round(s); \
         {} cores",
        requests,
        keys,
        c,
        rounds,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(c)
        .timeout(Duration::from_secs(10))
        .build()?;
    // Every key requests/keys times, shuffled with a fixed seed.
    let mut order: Vec<usize> = (0..requests).map(|i| i % keys).collect();
    fastrand::Rng::with_seed(0x5eed).shuffle(&mut order);
    let run_id = fastrand::u64(..);
    let warm: Vec<usize> = (0..c * 10).collect();
    let warm_keys = format!("warm{run_id}");
    let _ = load(&client, &urls, &warm_keys, &warm, c).await;
    if fast {
        let _ = load(&client, &bare, &warm_keys, &warm, c).await;
    }

    // With --fast, rounds alternate layer and bare, so a slow phase of the VM hits both.
    let mut ratios = Vec::new();
    for round in 0..rounds {
        let prefix = format!("k{run_id}r{round}");
        let layered = load(&client, &urls, &prefix, &order, c).await;
        let thr = report(
            &format!("round {round}, with the layer"),
            requests,
            &layered,
        );
        if fast {
            let b = load(&client, &bare, &prefix, &order, c).await;
            let bare_thr = report(&format!("round {round}, bare handler"), requests, &b);
            let p50 = |s: &Stats| s.latencies[(s.latencies.len() - 1) / 2].as_secs_f64() * 1e6;
            println!(
                "round {round}, layer cost: throughput x{:.2} of bare, {:+.1} µs of wall time per \
                 request at full load (1/throughput), p50 {:+.0} µs",
                thr / bare_thr,
                (1.0 / thr - 1.0 / bare_thr) * 1e6,
                p50(&layered) - p50(&b),
            );
            ratios.push(thr / bare_thr);
        }
    }
    if !ratios.is_empty() {
        ratios.sort_by(f64::total_cmp);
        println!(
            "median throughput with the layer / bare: x{:.2}",
            ratios[ratios.len() / 2]
        );
    }

    let runs = runs.lock().unwrap().clone();
    let mut hist = std::collections::BTreeMap::<usize, usize>::new();
    for n in runs
        .iter()
        .filter(|(k, _)| k.starts_with('k'))
        .map(|(_, n)| *n)
    {
        *hist.entry(n).or_default() += 1;
    }
    let ran: usize = hist.values().sum();
    let keys = keys * rounds;
    println!(
        "executions per key (executions, keys): {hist:?}; {} of {keys} keys never ran",
        keys - ran
    );
    drop(own_redis);
    let twice = runs.values().filter(|n| **n > 1).count();
    if twice > 0 {
        return Err(format!("{twice} keys executed more than once").into());
    }
    println!("no key executed more than once");
    Ok(())
}
