//! The Idempotency-Key layer in-process: an axum `Router` driven with `oneshot` (no sockets), a
//! bare handler vs the layer on the new-key path and on the replay path, with the memory store
//! and with a local redis-server (started by the bench on a free port), next to one plain
//! Redis `GET` round trip.
//!
//! Run: `cargo bench --bench idempotency` (needs `redis-server` on PATH).

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::{Duration, Instant},
};

use axum::{Router, body::Body, http::Request, http::StatusCode, routing::post};
use criterion::{Criterion, criterion_group, criterion_main};
use tokio::runtime::Runtime;
use tower::ServiceExt;
use tower_rampart::idempotency::{
    Claim, Completion, Fingerprint, IdempotencyLayer, MemoryStore, OwnerToken, RedisStore, Store,
};

static NEXT: AtomicU64 = AtomicU64::new(0);

fn router(layer: Option<IdempotencyLayer<impl Store + Clone>>) -> Router {
    let route = post(|| async { (StatusCode::CREATED, "{\"id\":\"p1\"}") });
    let route = match layer {
        Some(l) => route.route_layer(l),
        None => route,
    };
    Router::new().route("/payments", route)
}

fn request(key: &str) -> Request<Body> {
    Request::post("/payments")
        .header("idempotency-key", key)
        .header("content-type", "application/json")
        .body(Body::from("{\"amount\":1200,\"currency\":\"EUR\"}"))
        .unwrap()
}

async fn call(app: &Router, key: &str) {
    let res = app.clone().oneshot(request(key)).await.unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
}

fn bench_store(c: &mut Criterion, rt: &Runtime, name: &str, store: impl Store + Clone) {
    let layer = IdempotencyLayer::builder()
        .store(store)
        .global_keys()
        .build()
        .unwrap();
    let app = router(Some(layer));
    let mut g = c.benchmark_group(format!("idempotency_{name}"));
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    g.bench_function("new_key", |b| {
        b.to_async(rt).iter_custom(|iters| {
            let app = app.clone();
            async move {
                let keys: Vec<String> = (0..iters)
                    .map(|_| format!("new-{}", NEXT.fetch_add(1, Relaxed)))
                    .collect();
                let start = Instant::now();
                for k in &keys {
                    call(&app, k).await;
                }
                start.elapsed()
            }
        })
    });
    rt.block_on(call(&app, "replayed"));
    g.bench_function("replay", |b| b.to_async(rt).iter(|| call(&app, "replayed")));
    g.finish();
}

fn bare(c: &mut Criterion, rt: &Runtime) {
    let app = router(None::<IdempotencyLayer<MemoryStore>>);
    let mut g = c.benchmark_group("idempotency_bare");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    g.bench_function("handler", |b| b.to_async(rt).iter(|| call(&app, "unused")));
    g.finish();
}

struct Redis(Child, u16);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis_server() -> Redis {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server on PATH");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Redis(child, port)
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    bare(c, &rt);
    bench_store(c, &rt, "memory", MemoryStore::with_max_bytes(4 << 30));

    let redis = redis_server();
    let url = format!("redis://127.0.0.1:{}", redis.1);
    let store = rt.block_on(RedisStore::connect(&url)).unwrap();
    bench_store(c, &rt, "redis", store.clone());

    let client = redis::Client::open(url.as_str()).unwrap();
    let conn = rt
        .block_on(client.get_multiplexed_async_connection())
        .unwrap();
    let mut g = c.benchmark_group("redis_round_trip");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    g.bench_function("get", |b| {
        b.to_async(&rt).iter(|| {
            let mut conn = conn.clone();
            async move {
                let _: Option<String> = redis::cmd("GET")
                    .arg("missing")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
            }
        })
    });
    // The store's own claim on a completed key, without the HTTP layer: separates the Redis
    // client path (EVALSHA through a ConnectionManager) from the layer's work.
    let fp = Fingerprint::from_bytes([1; 32]);
    rt.block_on(async {
        let t = OwnerToken::new();
        if let Claim::New = store
            .claim("bench", &fp, t, Duration::from_secs(10))
            .await
            .unwrap()
        {
            let done = Completion::NotReplayable {
                status: StatusCode::OK,
            };
            store
                .complete("bench", &fp, t, &done, Duration::from_secs(600))
                .await
                .unwrap();
        }
    });
    g.bench_function("store_claim_completed", |b| {
        b.to_async(&rt).iter(|| async {
            let claim = store
                .claim("bench", &fp, OwnerToken::new(), Duration::from_secs(10))
                .await
                .unwrap();
            assert!(matches!(claim, Claim::Completed(_)));
        })
    });
    g.finish();
}

criterion_group!(idempotency, benches);
criterion_main!(idempotency);
