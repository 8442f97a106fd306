//! The servers `benches/http/run.sh` loads with wrk: one handler answering 201 at once, served
//! bare, behind the standard server pipeline, and behind the Idempotency-Key layer.
//!
//! ```text
//! cargo run --release --example http_bench -- bare 127.0.0.1:8081
//! cargo run --release --example http_bench -- pipeline 127.0.0.1:8082
//! cargo run --release --example http_bench -- memory 127.0.0.1:8083
//! cargo run --release --example http_bench -- redis 127.0.0.1:8084 redis://127.0.0.1:6379
//! cargo run --release --example http_bench -- store-limit 32 redis://127.0.0.1:6379
//! ```
//!
//! Each server runs on a 2-worker tokio runtime and prints `listening on <addr>` once bound.
//! `calls <bare|pipeline|memory> <n> [fill]` sends `n` POSTs with new keys through the variant's
//! router in process (no sockets, one thread), for callgrind: run it with `n` and `2n` and
//! subtract. With `fill`, the memory store first gets that many completed records (as a long wrk
//! run leaves it); only `measured` runs the requests, so `--toggle-collect=*measured*` counts
//! them alone. With `held` too (`calls memory <n> <fill> <held>`), the clock is paused and moves
//! on as the requests go (see `pace_for`), after `held` unmeasured requests: every measured key's
//! renewal entry is made, comes due, and is found done (or renewed) inside the window, with
//! `held` keys waiting at any time, as under wrk (rate x lease/3).
//! `store-limit <connections> <url>` is the Redis store's own limit for the same work: that many
//! tasks each claiming a new key and completing it with the handler's answer, as fast as the
//! store answers, for 8 s; it prints the keys per second.

use std::{
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Router, http::StatusCode, routing::post};
use tower_rampart::{
    circuit_breaker,
    idempotency::{
        Completion, Fingerprint, IdempotencyLayer, MemoryStore, OwnerToken, RedisStore, Store,
        StoredResponse,
    },
    pipeline::StandardServerLayer,
};

async fn created() -> (StatusCode, &'static str) {
    (StatusCode::CREATED, "{\"id\":1}")
}

fn app() -> Router {
    Router::new().route("/payments", post(created))
}

async fn serve(variant: &str, addr: &str, redis: Option<&str>) -> Result<(), String> {
    let app = router(variant, redis).await?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    println!(
        "listening on {}",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    axum::serve(listener, app).await.map_err(|e| e.to_string())
}

/// `n` POSTs with new keys (`{prefix}-{i}`) through `app`, in process. With `pace`, the clock
/// (paused) moves on by `pace` per request, 64 requests at a time, and the runtime gets a turn
/// then: the layer's renewal watcher sees its keys come due, as under a steady load.
async fn calls(app: &Router, n: u64, prefix: &str, pace: Option<Duration>) -> Result<(), String> {
    use tower::ServiceExt;
    for i in 0..n {
        if let Some(step) = pace
            && i % 64 == 63
        {
            tokio::time::advance(step * 64).await;
        }
        let req = http::Request::post("/payments")
            .header("idempotency-key", format!("{prefix}-{i}"))
            .header("content-type", "application/json")
            .body(axum::body::Body::from("{\"amount\":1}"))
            .map_err(|e| e.to_string())?;
        let res = app.clone().oneshot(req).await.map_err(|e| e.to_string())?;
        if res.status() != StatusCode::CREATED {
            return Err(format!("call {i}: {}", res.status()));
        }
        axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The requests callgrind counts (`--toggle-collect=*measured*`): kept out of line so that its
/// name stays in the profile. The router (and its store) outlives it: dropping them is not a
/// request's cost.
#[inline(never)]
fn measured(
    rt: &tokio::runtime::Runtime,
    app: &Router,
    n: u64,
    pace: Option<Duration>,
) -> Result<(), String> {
    rt.block_on(calls(app, n, "key", pace))
}

/// The pace at which `held` keys wait for their first renewal at once (a third of the bench
/// layer's lease, the default 10 s, over `held`): what a steady load of `held * 3 / 10`
/// new keys per second leaves in the renewal queue.
fn pace_for(held: u64) -> Option<Duration> {
    let held = u32::try_from(held).ok().filter(|h| *h > 0)?;
    Some(Duration::from_secs(10) / 3 / held)
}

/// `n` completed records in `store`, as the layer stores the handler's answer (key
/// `0::fill-{i}`, a 201 with its `content-type` and body), straight through the store.
async fn fill(store: &MemoryStore, n: u64) -> Result<(), String> {
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    let completion = Completion::Response(StoredResponse {
        status: StatusCode::CREATED,
        headers,
        body: bytes::Bytes::from_static(b"{\"id\":1}"),
        trailers: None,
    });
    let (lease, ttl) = (Duration::from_secs(10), Duration::from_secs(24 * 3600));
    for i in 0..n {
        let key = format!("0::fill-{i}");
        let mut bytes = [7; 32];
        bytes[..8].copy_from_slice(&i.to_le_bytes());
        let fingerprint = Fingerprint::from_bytes(bytes);
        let token = OwnerToken::new();
        store
            .claim(&key, &fingerprint, token, lease)
            .await
            .map_err(|e| e.to_string())?;
        let stored = store
            .complete(&key, &fingerprint, token, &completion, ttl)
            .await
            .map_err(|e| e.to_string())?;
        if !stored {
            return Err(format!("fill {i}: not stored"));
        }
    }
    Ok(())
}

/// The memory variant's store: it holds every key of a whole run (charged about 1 KiB each); the
/// default 64 MiB would fill within seconds at wrk's rates and answer 503, which measures
/// refusals, not new keys.
fn bench_store() -> MemoryStore {
    MemoryStore::with_max_bytes(4 << 30)
}

fn memory_router(store: MemoryStore) -> Result<Router, String> {
    // One tenant: wrk sends no caller identity to scope keys by.
    Ok(app().layer(
        IdempotencyLayer::builder()
            .store(store)
            .global_keys()
            .build()
            .map_err(|e| e.to_string())?,
    ))
}

async fn router(variant: &str, redis: Option<&str>) -> Result<Router, String> {
    Ok(match variant {
        "bare" => app(),
        "pipeline" => {
            let layer = StandardServerLayer::builder()
                .timeout(Duration::from_secs(5))
                .circuit_breaker(|defaults: circuit_breaker::Builder| defaults.name("bench"))
                .build()
                .map_err(|e| e.to_string())?;
            app().layer(layer)
        }
        "memory" => memory_router(bench_store())?,
        "redis" => {
            let url = redis.ok_or("the redis variant needs a Redis URL")?;
            let store = RedisStore::connect(url).await.map_err(|e| e.to_string())?;
            let layer = IdempotencyLayer::builder()
                .store(store)
                .global_keys()
                .build()
                .map_err(|e| e.to_string())?;
            app().layer(layer)
        }
        other => {
            return Err(format!(
                "unknown variant {other:?}: bare, pipeline, memory or redis"
            ));
        }
    })
}

/// Claims and completes new keys from `tasks` tasks for 8 s; returns keys per second.
async fn store_limit(tasks: usize, url: &str) -> Result<f64, String> {
    let store = RedisStore::connect(url).await.map_err(|e| e.to_string())?;
    let done = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs(8);
    let completion = Completion::Response(StoredResponse {
        status: StatusCode::CREATED,
        headers: http::HeaderMap::new(),
        body: bytes::Bytes::from_static(b"{\"id\":1}"),
        trailers: None,
    });
    let run = |store: RedisStore, done: Arc<AtomicU64>, completion: Completion| async move {
        let fingerprint = Fingerprint::from_bytes([7; 32]);
        let (lease, ttl) = (Duration::from_secs(30), Duration::from_secs(600));
        while Instant::now() < end {
            let key = uuid::Uuid::new_v4().to_string();
            let token = OwnerToken::new();
            store.claim(&key, &fingerprint, token, lease).await?;
            store
                .complete(&key, &fingerprint, token, &completion, ttl)
                .await?;
            done.fetch_add(1, Ordering::Relaxed);
        }
        Ok::<_, tower_rampart::idempotency::StoreError>(())
    };
    let started = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|_| tokio::spawn(run(store.clone(), done.clone(), completion.clone())))
        .collect();
    for handle in handles {
        handle
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(variant), Some(addr)) = (args.first(), args.get(1)) else {
        eprintln!("usage: http_bench <bare|pipeline|memory|redis> <addr> [redis-url]");
        return ExitCode::from(2);
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    if variant == "calls" {
        let n = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(1000);
        let filled = args.get(3).and_then(|n| n.parse().ok()).unwrap_or(0);
        let held = args.get(4).and_then(|n| n.parse().ok()).unwrap_or(0);
        let pace = pace_for(held);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(pace.is_some())
            .build()
            .expect("a tokio runtime");
        let app = rt.block_on(async {
            let app = if addr != "memory" || filled == 0 {
                router(addr, None).await?
            } else {
                let store = bench_store();
                fill(&store, filled).await?;
                memory_router(store)?
            };
            if pace.is_some() {
                // The steady state first: `held` keys waiting in the renewal queue.
                calls(&app, held, "warm", pace).await?;
            }
            Ok(app)
        });
        return match app.and_then(|app| measured(&rt, &app, n, pace)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("http_bench: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if variant == "store-limit" {
        let tasks = addr.parse().unwrap_or(32);
        let Some(url) = args.get(2) else {
            eprintln!("usage: http_bench store-limit <tasks> <redis-url>");
            return ExitCode::from(2);
        };
        return match runtime.block_on(store_limit(tasks, url)) {
            Ok(rate) => {
                println!("store-limit {rate:.0} keys/s");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("http_bench: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match runtime.block_on(serve(variant, addr, args.get(2).map(String::as_str))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("http_bench: {e}");
            ExitCode::FAILURE
        }
    }
}
