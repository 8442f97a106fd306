//! The outbox relay against the machine's real services (issue #18 §2), in one run:
//!
//! - throughput: 20,000 rows enqueued through `Outbox::enqueue` (transactions of 100, four
//!   writers on disjoint aggregates; not timed), then `Relay::drain` timed until every row is
//!   published and marked, to RabbitMQ (`RabbitPublisher`, confirms, a direct exchange bound to
//!   a durable classic queue) and to JetStream (`JetStreamPublisher`, file stream); 2,000
//!   aggregates of 10 events each, enqueued round-robin. Three runs per row (median and range),
//!   each on a table, exchange and queue or stream of its own; checked afterwards: nothing left
//!   unpublished and the broker holds exactly the 20,000 messages;
//! - latency: a relay in `run_until` (LISTEN on, default settings) while a writer commits 2,000
//!   events, one per transaction, at 500 per second; a plain consumer (lapin `basic_consume`
//!   without acks; a JetStream pull consumer without acks) notes when each arrives. The commit
//!   time is taken right after `COMMIT` returns, so it cannot travel in the payload (written
//!   before): the payload carries the event's number and the time sits in a table shared by
//!   writer and consumer (one process, one clock).
//!
//! PostgreSQL on 127.0.0.1:5432 (`RAMPART_PG_URL`), RabbitMQ on 127.0.0.1:5672, NATS with
//! JetStream on 127.0.0.1:4222 (`RAMPART_NATS_URL`); the bench makes a database (a schema per
//! run), exchanges, queues and streams of its own and removes them. A service that is not there
//! is skipped with a message. Arguments (`--bench` from cargo) are ignored. One multi-thread
//! tokio runtime (a worker per core), shared by relays, writers and consumers.
//!
//! Throughput rows: batch_size 100 and 500 by concurrency 16 and 64 (100/16: the defaults),
//! and two relays at once (100/16) on RabbitMQ. The whole run takes about 2.5 minutes on a quiet
//! 2-core machine (4 under a load of 10).
//!
//! Run: `cargo bench --all-features --bench outbox`

#[allow(dead_code)]
#[path = "../tests/common/nats.rs"]
mod nats;
#[allow(dead_code)]
#[path = "../tests/common/postgres.rs"]
mod pg;
#[allow(dead_code)]
#[path = "../tests/common/rabbitmq.rs"]
mod rabbit;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use async_nats::jetstream::{self, consumer::AckPolicy, consumer::pull};
use futures_util::{StreamExt, stream::BoxStream};
use lapin::{ExchangeKind, options::BasicConsumeOptions, types::FieldTable};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::{task::JoinSet, time::timeout};
use tower::Service;
use tower_rampart::{
    BoxError,
    message::{
        Message,
        nats::JetStreamPublisher,
        outbox::{Outbox, OutboxEvent, Relay},
        rabbitmq::RabbitPublisher,
    },
};

type Res<T> = Result<T, BoxError>;

const N: usize = 20_000;
const PER_TX: usize = 100;
const WRITERS: usize = 4;
const AGGREGATES: usize = 2_000;
const RUNS: usize = 3;
const LATENCY_EVENTS: usize = 2_000;
const LATENCY_RATE: u64 = 500;
const KIND: &str = "order.placed";
const PAYLOAD: &str = "{\"order\":42,\"amount\":1200}";

#[derive(Clone, Copy, PartialEq)]
enum Broker {
    Rabbit,
    Nats,
}

impl Broker {
    fn name(self) -> &'static str {
        match self {
            Broker::Rabbit => "RabbitMQ",
            Broker::Nats => "JetStream",
        }
    }
}

/// A broker's destination for one run; removed when dropped.
enum Target {
    Rabbit(rabbit::Rabbit, String, RabbitPublisher),
    Nats(nats::TestStream, jetstream::Context, JetStreamPublisher),
}

impl Target {
    async fn new(broker: Broker) -> Res<Target> {
        Ok(match broker {
            Broker::Rabbit => {
                let r = rabbit::Rabbit::new("bench-outbox").await;
                let exchange = r.exchange("events", ExchangeKind::Direct).await;
                let queue = r.classic_queue("events").await;
                r.bind(&queue, &exchange, KIND).await;
                let publisher = RabbitPublisher::builder(rabbit::URL, exchange).build()?;
                Target::Rabbit(r, queue, publisher)
            }
            Broker::Nats => {
                let js = nats::connect().await;
                let stream = nats::TestStream::new(&js, "bench_outbox").await;
                let subject = format!("{}.events", stream.subject);
                let publisher = JetStreamPublisher::new(js.clone(), subject)?;
                Target::Nats(stream, js, publisher)
            }
        })
    }

    /// A consumer without acks (subscribed now), as payloads.
    async fn payloads(&self) -> Res<BoxStream<'static, Res<Vec<u8>>>> {
        Ok(match self {
            Target::Rabbit(r, queue, _) => {
                let ch = r.conn.create_channel().await?;
                let opts = BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                };
                let args = FieldTable::default();
                ch.basic_consume(queue.as_str().into(), "bench".into(), opts, args)
                    .await?
                    .map(|d| d.map(|d| d.data).map_err(Into::into))
                    .boxed()
            }
            Target::Nats(s, js, _) => {
                let config = pull::Config {
                    ack_policy: AckPolicy::None,
                    ..Default::default()
                };
                let stream = js.get_stream(&s.name).await?;
                let consumer = stream.create_consumer(config).await?;
                consumer
                    .messages()
                    .await?
                    .map(|m| m.map(|m| m.message.payload.to_vec()).map_err(Into::into))
                    .boxed()
            }
        })
    }

    /// Messages the broker holds.
    async fn stored(&self) -> Res<u64> {
        Ok(match self {
            Target::Rabbit(r, queue, _) => r.count(queue).await.into(),
            Target::Nats(s, js, _) => js.get_stream(&s.name).await?.info().await?.state.messages,
        })
    }
}

/// An outbox table in a schema of its own.
async fn fresh_outbox(pool: &PgPool) -> Res<(Outbox, String)> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let schema = format!("run{}", NEXT.fetch_add(1, Relaxed));
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(pool)
        .await?;
    let outbox = Outbox::builder(pool.clone())
        .table(format!("{schema}.outbox"))
        .build()?;
    outbox.migrate().await?;
    Ok((outbox, schema))
}

async fn drop_schema(pool: &PgPool, schema: &str) -> Res<()> {
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(pool)
        .await?;
    Ok(())
}

/// Enqueues `N` events, `PER_TX` per transaction. Writer `w` takes transactions `t` with
/// `t % WRITERS == w`, whose aggregates no other writer touches (no lock waits between them).
async fn fill(outbox: &Outbox) -> Res<Duration> {
    let start = Instant::now();
    let mut writers = JoinSet::new();
    for w in 0..WRITERS {
        let outbox = outbox.clone();
        writers.spawn(async move {
            for t in (w..N / PER_TX).step_by(WRITERS) {
                let mut tx = outbox.pool().begin().await?;
                for i in t * PER_TX..(t + 1) * PER_TX {
                    let msg = Message::new(format!("evt-{i}"), KIND, PAYLOAD);
                    let aggregate = format!("order-{}", i % AGGREGATES);
                    outbox
                        .enqueue(&mut tx, OutboxEvent::new(aggregate, msg))
                        .await?;
                }
                tx.commit().await?;
            }
            Ok::<_, BoxError>(())
        });
    }
    while let Some(done) = writers.join_next().await {
        done??;
    }
    Ok(start.elapsed())
}

/// One row of the throughput table.
#[derive(Clone, Copy)]
struct Case {
    broker: Broker,
    relays: usize,
    batch: u32,
    concurrency: usize,
}

/// `relays` relays drain the outbox at once; the time until the last one is done.
async fn drain<S>(outbox: &Outbox, publisher: S, case: Case) -> Res<Duration>
where
    // Sync: the relay's future holds `&S` across an await (a spawned drain must be Send).
    S: Service<Message> + Clone + Send + Sync + 'static,
    S::Future: Send,
    S::Response: Send,
    S::Error: Into<BoxError>,
{
    let mut relays = Vec::new();
    for n in 0..case.relays {
        let relay = Relay::builder(outbox.clone())
            .name(format!("bench-{n}"))
            .batch_size(case.batch)
            .concurrency(case.concurrency)
            .build(publisher.clone())?;
        relays.push(relay);
    }
    let start = Instant::now();
    let mut running = JoinSet::new();
    for mut relay in relays {
        running.spawn(async move { relay.drain().await });
    }
    let mut published = 0;
    while let Some(done) = running.join_next().await {
        published += done??.published;
    }
    let took = start.elapsed();
    if published != N as u64 {
        return Err(format!("relays published {published} rows, not {N}").into());
    }
    Ok(took)
}

/// One timed drain on fresh tables and broker objects: (relayed/s, enqueued/s).
async fn throughput_run(pool: &PgPool, case: Case) -> Res<(f64, f64)> {
    let (outbox, schema) = fresh_outbox(pool).await?;
    let filled = fill(&outbox).await?;
    let target = Target::new(case.broker).await?;
    let took = match &target {
        Target::Rabbit(_, _, p) => drain(&outbox, p.clone(), case).await?,
        Target::Nats(_, _, p) => drain(&outbox, p.clone(), case).await?,
    };
    let left = outbox.backlog().await?.pending;
    let stored = target.stored().await?;
    drop(target);
    drop_schema(pool, &schema).await?;
    if left != 0 || stored != N as u64 {
        return Err(format!("{left} rows left unpublished, {stored} messages stored").into());
    }
    Ok((
        N as f64 / took.as_secs_f64(),
        N as f64 / filled.as_secs_f64(),
    ))
}

async fn throughput_row(pool: &PgPool, case: Case) -> String {
    let mut rates = Vec::new();
    let mut enqueue = Vec::new();
    for _ in 0..RUNS {
        match throughput_run(pool, case).await {
            Ok((r, e)) => {
                rates.push(r);
                enqueue.push(e);
            }
            Err(e) => return format!("| {} | failed: {e} |", case.broker.name()),
        }
    }
    rates.sort_by(f64::total_cmp);
    enqueue.sort_by(f64::total_cmp);
    format!(
        "| {} | {} | {} | {} | **{:.0}** | {:.0}–{:.0} | {:.0} |",
        case.broker.name(),
        case.relays,
        case.batch,
        case.concurrency,
        rates[RUNS / 2],
        rates[0],
        rates[RUNS - 1],
        enqueue[RUNS / 2],
    )
}

/// Nanoseconds since `start`.
fn since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// The event number a payload carries.
fn seq(payload: &[u8]) -> Option<usize> {
    std::str::from_utf8(payload).ok()?.parse().ok()
}

/// Notes the arrival of each event number into `arrived` until all are in.
async fn consume(
    mut stream: BoxStream<'static, Res<Vec<u8>>>,
    start: Instant,
    arrived: Arc<Vec<AtomicU64>>,
) -> Res<()> {
    let mut left = arrived.len();
    while left > 0 {
        let payload = stream.next().await.ok_or("consumer stream ended")?;
        let at = since(start);
        let i = seq(&payload?).ok_or("not an event number")?;
        let slot = arrived.get(i).ok_or("event number out of range")?;
        // The first arrival counts (at-least-once: a second copy is no news).
        if slot.compare_exchange(0, at, Relaxed, Relaxed).is_ok() {
            left -= 1;
        }
    }
    Ok(())
}

/// Publish-to-consume latencies (commit to arrival), sorted, in nanoseconds.
async fn latency_run(pool: &PgPool, broker: Broker) -> Res<Vec<u64>> {
    let (outbox, schema) = fresh_outbox(pool).await?;
    let target = Target::new(broker).await?;
    let start = Instant::now();
    let slots = || Arc::new((0..LATENCY_EVENTS).map(|_| AtomicU64::new(0)).collect());
    let (arrived, committed): (Arc<Vec<AtomicU64>>, Arc<Vec<AtomicU64>>) = (slots(), slots());
    let consumer = tokio::spawn(consume(target.payloads().await?, start, arrived.clone()));
    // Dropped or sent: the relay stops.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        let _ = stopped.await;
    };
    let relay = Relay::builder(outbox.clone()).name("bench-latency");
    let relay = match &target {
        Target::Rabbit(_, _, p) => tokio::spawn(relay.build(p.clone())?.run_until(shutdown)),
        Target::Nats(_, _, p) => tokio::spawn(relay.build(p.clone())?.run_until(shutdown)),
    };
    // One transaction per event, started on a steady clock (a slow commit does not delay the
    // next event: each is a task of its own).
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / LATENCY_RATE));
    let mut writers = JoinSet::new();
    for i in 0..LATENCY_EVENTS {
        tick.tick().await;
        let (outbox, committed) = (outbox.clone(), committed.clone());
        writers.spawn(async move {
            let mut tx = outbox.pool().begin().await?;
            let msg = Message::new(format!("lat-{i}"), KIND, i.to_string());
            outbox
                .enqueue(&mut tx, OutboxEvent::new(format!("order-{i}"), msg))
                .await?;
            tx.commit().await?;
            committed[i].store(since(start), Relaxed);
            Ok::<_, BoxError>(())
        });
    }
    while let Some(done) = writers.join_next().await {
        done??;
    }
    let consumed = timeout(Duration::from_secs(30), consumer).await;
    let _ = stop.send(());
    let summary = relay.await?;
    drop(target);
    drop_schema(pool, &schema).await?;
    consumed.map_err(|_| "not every event arrived within 30 s")???;
    if summary.published != LATENCY_EVENTS as u64 {
        return Err(format!("relay published {} events", summary.published).into());
    }
    let mut lat: Vec<u64> = (0..LATENCY_EVENTS)
        .map(|i| {
            arrived[i]
                .load(Relaxed)
                .saturating_sub(committed[i].load(Relaxed))
        })
        .collect();
    lat.sort_unstable();
    Ok(lat)
}

fn ms(nanos: u64) -> String {
    format!("{:.1} ms", nanos as f64 / 1e6)
}

async fn latency_row(pool: &PgPool, broker: Broker) -> String {
    match latency_run(pool, broker).await {
        Ok(lat) => {
            // Nearest rank.
            let pct = |p: usize| lat[(lat.len() * p).div_ceil(100).saturating_sub(1)];
            format!(
                "| {} | {LATENCY_EVENTS} | {LATENCY_RATE}/s | **{}** | {} | {} |",
                broker.name(),
                ms(pct(50)),
                ms(pct(99)),
                ms(lat[lat.len() - 1]),
            )
        }
        Err(e) => format!("| {} | failed: {e} |", broker.name()),
    }
}

/// Why a service cannot be used, if it cannot (3 s to answer).
async fn missing(broker: Option<Broker>) -> Option<String> {
    let probe = async {
        match broker {
            None => {
                let url = format!("{}/postgres", pg::server_url());
                PgConnection::connect(&url).await?.close().await?
            }
            Some(Broker::Rabbit) => {
                let props = lapin::ConnectionProperties::default();
                let conn = lapin::Connection::connect(rabbit::URL, props).await?;
                conn.close(200, "OK".into()).await?
            }
            // Listing streams fails when JetStream is off (no responders).
            Some(Broker::Nats) => {
                let js = jetstream::new(async_nats::connect(nats::url()).await?);
                if let Some(Err(e)) = js.stream_names().next().await {
                    return Err(e.into());
                }
            }
        }
        Ok::<_, BoxError>(())
    };
    match timeout(Duration::from_secs(3), probe).await {
        Ok(answer) => answer.err().map(|e| e.to_string()),
        Err(_) => Some("no answer within 3 s".into()),
    }
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

async fn run() {
    let began = Instant::now();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("outbox bench: {cpus} CPUs, load {} at start", load());
    if let Some(e) = missing(None).await {
        return println!(
            "skipped: PostgreSQL at {} is not there: {e}",
            pg::server_url()
        );
    }
    let mut brokers = Vec::new();
    for b in [Broker::Rabbit, Broker::Nats] {
        match missing(Some(b)).await {
            None => brokers.push(b),
            Some(e) => println!("{}: skipped, not there: {e}", b.name()),
        }
    }
    let db = pg::TestDb::new("bench_outbox").await;
    let pool = db.pool(16).await;

    // batch_size 100 and 500 by concurrency 16 and 64 (100/16: the defaults).
    let grid = [(100, 16), (500, 16), (100, 64), (500, 64)];
    let case = |broker, relays, (batch, concurrency)| Case {
        broker,
        relays,
        batch,
        concurrency,
    };
    let mut cases = Vec::new();
    for &broker in &brokers {
        cases.extend(grid.iter().map(|&g| case(broker, 1, g)));
        if broker == Broker::Rabbit {
            cases.push(case(broker, 2, (100, 16)));
        }
    }
    let mut throughput = Vec::new();
    for case in cases {
        let row = throughput_row(&pool, case).await;
        eprintln!("{row}");
        throughput.push(row);
    }
    let mut latency = Vec::new();
    for &broker in &brokers {
        latency.push(latency_row(&pool, broker).await);
    }
    pool.close().await;
    drop(db);

    println!("\n### Relay throughput ({N} rows, {AGGREGATES} aggregates, {RUNS} runs each)\n");
    println!(
        "| broker | relays | batch_size | concurrency | relayed msg/s (median) | range | enqueue msg/s |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    throughput.iter().for_each(|r| println!("{r}"));
    println!("\n### Publish-to-consume latency (commit to arrival)\n");
    println!("| broker | events | rate | p50 | p99 | max |");
    println!("|---|---:|---:|---:|---:|---:|");
    latency.iter().for_each(|r| println!("{r}"));
    println!(
        "\nwhole run {:.0} s, load {} at end",
        began.elapsed().as_secs_f64(),
        load()
    );
}

fn main() {
    match tokio::runtime::Runtime::new() {
        Ok(rt) => rt.block_on(run()),
        Err(e) => println!("skipped: no tokio runtime: {e}"),
    }
}
