//! The inbox's cost per message, every message a new id (as in production), side by side in
//! one criterion group, `inbox_per_message`:
//!
//! - `bare`: the handler alone (a `service_fn` answering `Ok` at once), called with `oneshot`;
//! - `memory`: [`InboxLayer`] over a [`MemoryStore`] around the same handler;
//! - `redis`: [`InboxLayer`] over a [`RedisStore`] on a redis-server the bench starts itself on
//!   a free port (`--save '' --appendonly no`) and kills at the end;
//! - `postgres_store`: [`InboxLayer`] over a [`PostgresStore`] (keys outside the effect's
//!   transaction, as with Redis);
//! - `postgres_tx`: [`PgInboxLayer`] (the transactional inbox) around a handler that hands its
//!   transaction back untouched; `postgres_bare_tx`: that handler's own cost without the inbox
//!   but with a transaction of its own (`BEGIN; COMMIT` through the same pool), so the
//!   inbox's extra is the difference; `postgres_tx_write` and `postgres_bare_write`: the same
//!   pair around a handler that inserts one row (then both commits flush the WAL, and the
//!   difference is the inbox's own statements). All on a database the bench creates on
//!   127.0.0.1:5432 (user postgres, trust; `RAMPART_PG_URL` points elsewhere) and drops at
//!   the end;
//! - `consumer_memory`: messages through [`Consumer`] (default concurrency, 16) from a
//!   [`memory::channel`] into the memory inbox, timed from the first pull to the last ack:
//!   `consumer_memory - memory` is the runner's cost per message.
//!
//! One current-thread tokio runtime: every figure is one thread's work per message, as in the
//! Idempotency-Key bench (benches/idempotency.rs), and the machine's other core is left to
//! redis-server and PostgreSQL; a multi-thread runtime would add cross-thread wake-ups to each
//! round trip, which are the scheduler's cost, not the inbox's. Messages are made before the
//! clock starts; every 32 messages (and at the end) the clocked loop yields to the runtime
//! (every row, `bare` included), so that the tasks messages leave behind (the inbox's aborted
//! lease renewals) are torn down on their own row's clock rather than piling up for a later
//! row (a memory inbox future never waits, so nothing else would run them). A backend whose
//! server is not there is skipped with a printed message.
//!
//! Run: `cargo bench --all-features --bench inbox` (needs `redis-server` on PATH and
//! PostgreSQL on 127.0.0.1:5432 for the Redis and PostgreSQL rows).

use std::{
    fmt::Debug,
    hint::black_box,
    net::TcpListener,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::{Duration, Instant},
};

use criterion::{
    BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main, measurement::WallTime,
};
use sqlx::{Connection, Executor, PgConnection, PgPool, postgres::PgPoolOptions};
use tokio::runtime::Runtime;
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_rampart::{
    BoxError,
    idempotency::{MemoryStore, PostgresStore, RedisStore, Store},
    message::{
        Message,
        consumer::Consumer,
        inbox::{InboxLayer, Inboxed},
        memory,
        postgres::{PgInboxLayer, TxMessage},
    },
};

static NEXT: AtomicU64 = AtomicU64::new(0);

/// `n` messages, each with an id never used before in this run.
fn messages(n: u64) -> Vec<Message> {
    (0..n)
        .map(|_| {
            let id = format!("m-{}", NEXT.fetch_add(1, Relaxed));
            Message::new(id, "order.placed", "{\"order\":42,\"amount\":1200}")
        })
        .collect()
}

/// Times `iters` new messages through `svc`, one after another; `ran` checks each answer (an
/// inbox that skipped a new id would make the figure meaningless).
fn per_message<S>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    name: &str,
    svc: S,
    ran: fn(&S::Response) -> bool,
) where
    S: Service<Message> + Clone,
    S::Error: Debug,
{
    g.bench_function(name, |b| {
        b.to_async(rt).iter_custom(|iters| {
            let svc = svc.clone();
            async move {
                let msgs = messages(iters);
                let start = Instant::now();
                for (i, m) in msgs.into_iter().enumerate() {
                    let r = svc.clone().oneshot(m).await.expect("handled");
                    assert!(ran(&r), "a new id must run the handler");
                    black_box(r);
                    // Lets the runtime tear down what messages left behind (the inbox's
                    // aborted renewal tasks): a future that never waits would pile those up
                    // for a later row to pay. Every 32 messages: a yield costs a driver poll.
                    if i % 32 == 31 {
                        tokio::task::yield_now().await;
                    }
                }
                tokio::task::yield_now().await;
                start.elapsed()
            }
        })
    });
}

fn ran<R>(r: &Inboxed<R>) -> bool {
    matches!(r, Inboxed::Ran(_))
}

type Handler = tower::util::ServiceFn<fn(Message) -> std::future::Ready<Result<(), BoxError>>>;

/// The handler every row shares: answers `Ok` at once.
fn handler() -> Handler {
    service_fn(|_: Message| std::future::ready(Ok(())))
}

/// One message through `svc` before measuring: a store that does not answer is skipped.
fn probe<S>(rt: &Runtime, svc: &S) -> Result<(), String>
where
    S: Service<Message> + Clone,
    S::Error: Debug,
{
    let mut last = String::new();
    // A few tries: a server just started may still be busy.
    for _ in 0..3 {
        let m = messages(1).pop().expect("one message");
        match rt.block_on(svc.clone().oneshot(m)) {
            Ok(_) => return Ok(()),
            Err(e) => last = format!("{e:?}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(last)
}

fn inbox_over<St: Store + Clone>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    name: &str,
    store: St,
) {
    row(g, rt, name, InboxLayer::new(store).layer(handler()), ran);
}

/// Messages through the consumer runner into the memory inbox, `iters` per run.
fn consumer_memory(g: &mut BenchmarkGroup<'_, WallTime>, rt: &Runtime) {
    let layer = InboxLayer::new(MemoryStore::with_max_bytes(4 << 30));
    g.bench_function("consumer_memory", |b| {
        b.to_async(rt).iter_custom(|iters| {
            let svc = layer.layer(handler());
            async move {
                let (publisher, source) = memory::channel(usize::try_from(iters).unwrap_or(1));
                for m in messages(iters) {
                    publisher.publish(m).await;
                }
                publisher.close();
                let consumer = Consumer::builder()
                    .dead_letters_to_broker()
                    .build(source, svc)
                    .expect("valid consumer");
                let start = Instant::now();
                let summary = consumer.run_until(std::future::pending::<()>()).await;
                let took = start.elapsed();
                assert_eq!(summary.acked, iters, "every message acked: {summary:?}");
                took
            }
        })
    });
}

/// A redis-server of the bench's own, killed when dropped.
struct Redis(Child, u16);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis_server() -> Result<Redis, String> {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port: {e}"))?
        .port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("redis-server not started ({e}); is it on PATH?"))?;
    let server = Redis(child, port);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err("redis-server did not listen within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(server)
}

fn redis(g: &mut BenchmarkGroup<'_, WallTime>, rt: &Runtime) {
    let server = match redis_server() {
        Ok(s) => s,
        Err(e) => return println!("inbox_per_message/redis: skipped: {e}"),
    };
    let url = format!("redis://127.0.0.1:{}", server.1);
    match rt.block_on(RedisStore::connect(&url)) {
        Ok(store) => inbox_over(g, rt, "redis", store),
        Err(e) => println!("inbox_per_message/redis: skipped, no connection: {e}"),
    }
    drop(server);
}

fn pg_server() -> String {
    std::env::var("RAMPART_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A database of the bench's own, dropped (with its connections) when this is dropped.
struct Db {
    name: String,
}

impl Db {
    async fn create() -> Result<(Db, PgPool), sqlx::Error> {
        let name = format!("rampart_bench_inbox_{}", std::process::id());
        let mut admin = PgConnection::connect(&format!("{}/postgres", pg_server())).await?;
        admin
            .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
            .await?;
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await?;
        let db = Db { name };
        // Calls are one at a time: two connections cover a call and a renewal.
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .connect(&format!("{}/{}", pg_server(), db.name))
            .await?;
        Ok((db, pool))
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        // Dropped from sync code: a runtime of its own on a thread of its own.
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut admin = PgConnection::connect(&format!("{}/postgres", pg_server()))
                    .await
                    .ok()?;
                admin.execute(sql.as_str()).await.ok()
            })
        })
        .join();
    }
}

/// Probes `svc`, then measures it, or says why not.
fn row<S>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    name: &str,
    svc: S,
    ran: fn(&S::Response) -> bool,
) where
    S: Service<Message> + Clone,
    S::Error: Debug,
{
    match probe(rt, &svc) {
        Ok(()) => per_message(g, rt, name, svc, ran),
        Err(e) => println!("inbox_per_message/{name}: skipped: {e}"),
    }
}

/// The effect of the `_write` rows: one row per message.
const EFFECT: &str = "INSERT INTO bench_effects (id) VALUES ($1)";

fn postgres(g: &mut BenchmarkGroup<'_, WallTime>, rt: &Runtime) {
    let (db, pool) = match rt.block_on(Db::create()) {
        Ok(made) => made,
        Err(e) => {
            return println!(
                "inbox_per_message/postgres_*: skipped, PostgreSQL at {} failed: {e}",
                pg_server()
            );
        }
    };
    let setup = async {
        let store = PostgresStore::new(pool.clone());
        store.migrate().await.map_err(|e| e.to_string())?;
        let layer = PgInboxLayer::new(pool.clone());
        layer.migrate().await.map_err(|e| e.to_string())?;
        sqlx::query("CREATE TABLE bench_effects (id text PRIMARY KEY)")
            .execute(&pool)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((store, layer))
    };
    let (store, layer) = match rt.block_on(setup) {
        Ok(made) => made,
        Err(e) => return println!("inbox_per_message/postgres_*: skipped, set-up failed: {e}"),
    };
    inbox_over(g, rt, "postgres_store", store);

    let untouched = service_fn(|m: TxMessage| async move { Ok::<_, BoxError>((m.tx, ())) });
    row(g, rt, "postgres_tx", layer.layer(untouched), ran);
    let p = pool.clone();
    let bare_tx = service_fn(move |_: Message| {
        let pool = p.clone();
        async move {
            pool.begin().await?.commit().await?;
            Ok::<_, BoxError>(())
        }
    });
    row(g, rt, "postgres_bare_tx", bare_tx, |_| true);

    // The same pair around a handler that writes one row: both commits now flush the WAL.
    let writes = service_fn(|TxMessage { message, mut tx }| async move {
        sqlx::query(EFFECT)
            .bind(message.id())
            .execute(&mut *tx)
            .await?;
        Ok::<_, BoxError>((tx, ()))
    });
    row(g, rt, "postgres_tx_write", layer.layer(writes), ran);
    let p = pool.clone();
    let bare_write = service_fn(move |m: Message| {
        let pool = p.clone();
        async move {
            let mut tx = pool.begin().await?;
            sqlx::query(EFFECT).bind(m.id()).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok::<_, BoxError>(())
        }
    });
    row(g, rt, "postgres_bare_write", bare_write, |_| true);

    rt.block_on(pool.close());
    drop(db);
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let mut g = c.benchmark_group("inbox_per_message");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20)
        .throughput(Throughput::Elements(1));

    per_message(&mut g, &rt, "bare", handler(), |_| true);
    // Bounded far above what a run stores: no eviction in the figure.
    inbox_over(&mut g, &rt, "memory", MemoryStore::with_max_bytes(4 << 30));
    redis(&mut g, &rt);
    postgres(&mut g, &rt);
    consumer_memory(&mut g, &rt);
    g.finish();
}

criterion_group!(inbox, benches);
criterion_main!(inbox);
