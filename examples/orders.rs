//! The whole design on one page (issue #18): an order is written with its event in one
//! transaction (the outbox), a relay publishes the event to RabbitMQ, and a payment consumer
//! applies it exactly once (the inbox) through a flaky payment service. It runs unattended,
//! prints what happened (every figure from a query or a counter) and removes what it made.
//!
//! ```sh
//! cargo run --example orders --features postgres,rabbitmq,reqwest
//! ```
//!
//! `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`) names the server: the
//! demo works in a database of its own, `rampart_orders_demo_<pid>`, dropped at the end.
//! `AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`) names the broker: the exchange
//! `rampart-orders-demo-<pid>` and its queues are deleted at the end.
//!
//! 1. `POST /orders` (axum, 127.0.0.1, a free port) sits behind the Idempotency-Key layer over
//!    `PostgresStore` in the same database: keys outlive a restart and are shared by every
//!    instance, with nothing more to run. One transaction inserts the order and enqueues
//!    `order.placed` (aggregate: the order id); the answer is 201 with the id.
//! 2. The `Relay` publishes the outbox through retry > breaker > timeout > `RabbitPublisher`
//!    (publisher confirms), until shutdown.
//! 3. `RabbitSource` > `Consumer` (dead letters in `PgDeadLetters`) > `PgInboxLayer` > a handler
//!    that charges a payment service (a quarter of its calls fail, some are too slow) through
//!    retry > breaker > timeout, and writes the payment in the inbox's transaction. An amount it
//!    cannot read is `Poison`: dead-lettered at once.
//! 4. A reqwest client posts 50 orders (one with the amount "12,50"), sends some again with the
//!    same key (one of them concurrently) and waits until every good order is paid; then the
//!    demo prints the table and checks it. Exit 1 if a service is missing or a check fails.

use std::{
    collections::HashMap,
    fmt::Display,
    process::ExitCode,
    str::FromStr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    extract::{State, rejection::JsonRejection},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::post,
};
use futures_util::{StreamExt, TryStreamExt, stream};
use lapin::{ConnectionProperties, ExchangeKind, types::FieldTable};
use serde::{Deserialize, Serialize};
use sqlx::{Connection, Executor, PgConnection, PgPool, postgres::PgConnectOptions};
use tokio::{sync::watch, task::JoinHandle};
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn, util::BoxCloneService};
use tower_rampart::{
    BoxError,
    backoff::Backoff,
    circuit_breaker::{self as cb, CircuitBreakerHandle, CircuitBreakerLayer, Config},
    classify::{ClassifyFn, Outcome},
    idempotency::{IDEMPOTENT_REPLAYED, IdempotencyLayer, PostgresStore},
    message::{
        Message, Poison,
        consumer::{Consumer, RunSummary},
        outbox::{Outbox, OutboxEvent, Relay, RelaySummary},
        postgres::{PgDeadLetters, PgInboxLayer, PgTx, TxMessage},
        rabbitmq::{PublishError, RabbitPublisher, RabbitSource, declare_quorum_queue},
    },
    retry::{self, GiveUp, RetryLayer},
    timeout::TimeoutLayer,
};

const ORDERS: usize = 50;
/// The order whose amount the payment side cannot read.
const POISON: usize = 17;
/// Orders whose answer the client "loses", so it sends them again with the same key.
const RESEND_EVERY: usize = 7;
const MS: Duration = Duration::from_millis(1);

/// What the parts count while they run; the table is made of these and of queries.
#[derive(Default)]
struct Counters {
    handler_runs: AtomicU64,
    posts: AtomicU64,
    /// POSTs sent again with their key, those answered from the record, those with the same id.
    resent: AtomicU64,
    replayed: AtomicU64,
    same_id: AtomicU64,
    pay_calls: AtomicU64,
    pay_errors: AtomicU64,
    pay_slow: AtomicU64,
    pay_retries: AtomicU64,
    pay_gave_up: AtomicU64,
    breaker_opened: AtomicU64,
    /// The payment service's own ledger: order -> (charge id, cents, charge requests).
    charges: Mutex<HashMap<String, (String, i64, u32)>>,
}

#[derive(Clone)]
struct App {
    pool: PgPool,
    outbox: Outbox,
    counters: Arc<Counters>,
}

/// `POST /orders`'s body (without `id`) and the `order.placed` payload.
#[derive(Serialize, Deserialize)]
struct Order {
    #[serde(default)]
    id: String,
    item: String,
    /// A decimal string, as money often travels; the payment side parses it.
    amount: String,
}

/// A charge of an order, in cents.
#[derive(Clone)]
struct Charge(String, i64);

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `connect`'s connection, or which service is missing and how to start it.
async fn reach<T, E: Display>(
    what: &str,
    url: &str,
    start: &str,
    connect: impl Future<Output = Result<T, E>>,
) -> Result<T, BoxError> {
    let why = match tokio::time::timeout(Duration::from_secs(10), connect).await {
        Ok(Ok(conn)) => return Ok(conn),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "no answer in 10 s".to_owned(),
    };
    Err(format!("{what} is not answering at {url} ({why}); start it with `{start}`").into())
}

async fn run() -> Result<bool, BoxError> {
    let var = |name, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
    let db_url = var(
        "DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/postgres",
    );
    let amqp_url = var("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
    let server = PgConnectOptions::from_str(&db_url)
        .map_err(|e| format!("DATABASE_URL={db_url:?} is not a PostgreSQL URL: {e}"))?;
    let pg_start =
        "pg_ctlcluster --skip-systemctl-redirect \"$(ls /etc/postgresql | tail -1)\" main start";
    let connect = PgConnection::connect_with(&server);
    let mut admin = reach("PostgreSQL", &db_url, pg_start, connect).await?;
    let connect = lapin::Connection::connect(&amqp_url, ConnectionProperties::default());
    let amqp = reach("RabbitMQ", &amqp_url, "rabbitmq-server -detached", connect).await?;

    let db = format!("rampart_orders_demo_{}", std::process::id());
    let exchange = format!("rampart-orders-demo-{}", std::process::id());
    let queue = format!("{exchange}.payments");
    let drop_db = format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)");
    for sql in [drop_db.clone(), format!("CREATE DATABASE {db}")] {
        admin.execute(sql.as_str()).await?;
    }
    let no_args = FieldTable::default;
    let ch = amqp.create_channel().await?;
    let made = async {
        let (x, q) = (exchange.as_str(), queue.as_str());
        let kind = ExchangeKind::Topic;
        ch.exchange_declare(x.into(), kind, Default::default(), no_args())
            .await?;
        declare_quorum_queue(&ch, q, None).await?;
        let key = "order.placed".into();
        ch.queue_bind(q.into(), x.into(), key, Default::default(), no_args())
            .await?;
        Ok::<_, BoxError>(())
    };
    let result = match made.await {
        Ok(()) => demo(server.database(&db), &amqp_url, &exchange, &queue).await,
        Err(e) => Err(e),
    };
    // Whatever happened: the database (and any connection left to it), queues, the exchange.
    let dropped = admin.execute(drop_db.as_str()).await;
    for q in [queue.clone(), format!("{queue}.retry")] {
        let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
    }
    let _ = ch
        .exchange_delete(exchange.as_str().into(), Default::default())
        .await;
    let _ = amqp.close(200, "OK".into()).await;
    match dropped {
        Ok(_) => println!("removed database {db}, exchange {exchange}, queues {queue}(.retry)"),
        Err(e) => eprintln!("could not drop database {db}: {e}"),
    }
    result
}

async fn demo(db: PgConnectOptions, amqp: &str, x: &str, queue: &str) -> Result<bool, BoxError> {
    let started = Instant::now();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(24)
        .connect_with(db)
        .await?;
    // No unique key on payments.order_id: a message applied twice would show as two rows.
    pool.execute(
        "CREATE TABLE orders (id text PRIMARY KEY, item text NOT NULL, amount text NOT NULL);
         CREATE TABLE payments (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
             order_id text NOT NULL REFERENCES orders (id), amount_cents bigint NOT NULL,
             charge_id text NOT NULL)",
    )
    .await?;
    let outbox = Outbox::new(pool.clone());
    outbox.migrate().await?;
    let store = PostgresStore::new(pool.clone());
    store.migrate().await?;
    PgInboxLayer::new(pool.clone()).migrate().await?;
    PgDeadLetters::new(pool.clone()).migrate().await?;

    // Every part runs until `stop` says so, or is dropped (an early return).
    let (stop, stopped) = watch::channel(false);
    let until = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let counters = Arc::new(Counters::default());
    let relay = start_relay(outbox.clone(), amqp, x, until(stopped.clone()))?;
    let c = counters.clone();
    let (consumer, breaker) = start_consumer(pool.clone(), amqp, queue, c, until(stopped.clone()))?;
    let idempotency = IdempotencyLayer::builder()
        .store(store)
        .global_keys() // one client, whose keys are UUIDs
        .wait_for_in_flight(Duration::from_secs(5)) // a concurrent duplicate gets the replay
        .keep_response_if(|parts| parts.status == StatusCode::CREATED) // else the key is freed
        .build()?;
    let app = App {
        pool: pool.clone(),
        outbox: outbox.clone(),
        counters: counters.clone(),
    };
    let router = Router::new()
        .route("/orders", post(place).route_layer(idempotency))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/orders", listener.local_addr()?);
    let serve = axum::serve(listener, router).with_graceful_shutdown(until(stopped.clone()));
    let server = tokio::spawn(async move { serve.await });

    client(&url, &counters).await?;
    let good = (ORDERS - 1) as i64;
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let paid = scalar(&pool, "SELECT count(DISTINCT order_id) FROM payments").await?;
        let dead = scalar(&pool, "SELECT count(*) FROM rampart_dead_letters").await?;
        let pending = outbox.backlog().await?.pending;
        if paid >= good && dead >= 1 && pending == 0 {
            break;
        }
        if Instant::now() > deadline {
            let state =
                format!("{paid} of {good} paid, {dead} dead letters, {pending} unpublished");
            return Err(format!("not settled after 45 s: {state}").into());
        }
        tokio::time::sleep(100 * MS).await;
    }
    let settled = started.elapsed();
    let _ = stop.send(true);
    let (relay, consumer) = (relay.await?, consumer.await?);
    server.await??;
    let done = Done {
        relay,
        consumer,
        breaker,
        settled,
    };
    report(&pool, &outbox, &counters, &done).await
}

/// `POST /orders`: the order and its event commit together, or neither exists.
async fn place(State(app): State<App>, body: Result<Json<Order>, JsonRejection>) -> Response {
    let valid = |o: &Order| (1..=100).contains(&o.item.len()) && (1..=32).contains(&o.amount.len());
    let Some(Json(mut order)) = body.ok().filter(|Json(o)| valid(o)) else {
        let refusal = "expected {\"item\": \"..\", \"amount\": \"..\"}";
        return (StatusCode::UNPROCESSABLE_ENTITY, refusal).into_response();
    };
    app.counters.handler_runs.fetch_add(1, Relaxed);
    order.id = format!("ord_{}", uuid::Uuid::new_v4().simple());
    let id = order.id.clone();
    let placed = async {
        let mut tx = app.pool.begin().await?;
        let sql = "INSERT INTO orders (id, item, amount) VALUES ($1, $2, $3)";
        let insert = sqlx::query(sql)
            .bind(&id)
            .bind(&order.item)
            .bind(&order.amount);
        insert.execute(&mut *tx).await?;
        let event = Message::new(
            format!("{id}.placed"),
            "order.placed",
            serde_json::to_vec(&order)?,
        );
        let event = OutboxEvent::new(&id, event.with_correlation_id(&id));
        app.outbox.enqueue(&mut tx, event).await?;
        tx.commit().await?;
        Ok::<_, BoxError>(())
    };
    match placed.await {
        Ok(()) => (StatusCode::CREATED, Json(serde_json::json!({ "id": id }))).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not placed: {e}")).into_response(),
    }
}

/// The relay, publishing through retry > breaker > timeout > a confirmed RabbitMQ publisher.
fn start_relay(
    outbox: Outbox,
    amqp: &str,
    exchange: &str,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<JoinHandle<RelaySummary>, BoxError> {
    // Unroutable or unreadable fails the same way every time: left to the relay's backoff.
    let classify = ClassifyFn::new(|r: Result<&(), &BoxError>| match r {
        Ok(()) => Outcome::Success,
        Err(e)
            if e.downcast_ref::<PublishError>()
                .is_some_and(|p| !p.is_retryable()) =>
        {
            Outcome::Ignore
        }
        Err(_) => Outcome::FAILURE,
    });
    let backoff = Backoff::exponential(50 * MS).max_delay(Duration::from_secs(1));
    let retry = RetryLayer::builder()
        .name("broker")
        .max_attempts(3)
        .backoff(backoff)
        .build()?;
    let breaker = CircuitBreakerLayer::new(Config::builder().name("broker").build()?);
    let stack = ServiceBuilder::new()
        .layer(retry.classify(classify))
        .layer(breaker)
        .layer(TimeoutLayer::new(Duration::from_secs(5))?)
        .service(RabbitPublisher::builder(amqp, exchange).build()?);
    let relay = Relay::builder(outbox)
        .name("orders")
        .poll_interval(250 * MS)
        .retry_backoff(100 * MS, Duration::from_secs(2))
        .build(stack)?;
    Ok(tokio::spawn(relay.run_until(stop)))
}

/// The payment service: a quarter of its calls fail, some are slow; idempotent by order.
fn payment_service(
    c: Arc<Counters>,
) -> impl Service<Charge, Response = String, Error = BoxError, Future: Send> + Clone {
    service_fn(move |charge: Charge| {
        let c = c.clone();
        async move {
            c.pay_calls.fetch_add(1, Relaxed);
            let roll = fastrand::u32(0..100);
            if roll < 25 {
                c.pay_errors.fetch_add(1, Relaxed);
                return Err("payment gateway answered 503".into());
            }
            let slow = roll < 33;
            c.pay_slow.fetch_add(u64::from(slow), Relaxed);
            let pause = if slow { 500 } else { fastrand::u32(1..15) };
            tokio::time::sleep(pause * MS).await;
            // Reached only while the caller waits: a call the timeout cut off charged nothing.
            let mut ledger = c.charges.lock().expect("not poisoned");
            let Charge(order, cents) = charge;
            let new = || (format!("ch_{:016x}", fastrand::u64(..)), cents, 0);
            let entry = ledger.entry(order).or_insert_with(new);
            entry.2 += 1;
            Ok(entry.0.clone())
        }
    })
}

/// The payment consumer, and its breaker's handle for the report.
fn start_consumer(
    pool: PgPool,
    amqp: &str,
    queue: &str,
    c: Arc<Counters>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(JoinHandle<RunSummary>, CircuitBreakerHandle), BoxError> {
    let (retried, opened) = (c.clone(), c.clone());
    let retry = RetryLayer::builder()
        .name("payments")
        .max_attempts(3)
        .backoff(Backoff::exponential(20 * MS).max_delay(200 * MS))
        .on_event(move |e: &retry::Event<'_>| match e.kind {
            retry::EventKind::Retry { .. } => drop(retried.pay_retries.fetch_add(1, Relaxed)),
            retry::EventKind::GaveUp {
                reason: GiveUp::Attempts,
                ..
            } => drop(retried.pay_gave_up.fetch_add(1, Relaxed)),
            _ => {}
        })
        .build()?;
    let config = Config::builder()
        .name("payments")
        .count_window(20)
        .minimum_calls(10)
        .failure_rate(0.5)
        .open_duration(300 * MS)
        .half_open_permits(4)
        .on_event(move |e: &cb::Event<'_>| {
            if let cb::EventKind::Transition { to, .. } = e.kind {
                opened
                    .breaker_opened
                    .fetch_add(u64::from(to == cb::State::Open), Relaxed);
            }
        });
    let breaker = CircuitBreakerLayer::new(config.build()?);
    let handle = breaker.handle();
    // The breaker's refusal is not retried: the consumer redelivers the message later. (Boxed:
    // the handler's future must be provably `Send`.)
    let pay = ServiceBuilder::new()
        .layer(BoxCloneService::layer())
        .layer(retry)
        .layer(breaker)
        .layer(TimeoutLayer::new(150 * MS)?)
        .service(payment_service(c));
    let handler = service_fn(move |TxMessage { message, mut tx }| {
        let pay = pay.clone();
        async move {
            let order: Order = serde_json::from_slice(message.payload())
                .map_err(|e| Poison::new(format!("not an order.placed event: {e}")))?;
            let amount = &order.amount;
            let cents = cents(amount)
                .ok_or_else(|| Poison::new(format!("amount {amount:?} is not a decimal")))?;
            let charge_id = pay.oneshot(Charge(order.id.clone(), cents)).await?;
            let sql =
                "INSERT INTO payments (order_id, amount_cents, charge_id) VALUES ($1, $2, $3)";
            let insert = sqlx::query(sql).bind(order.id).bind(cents).bind(charge_id);
            insert.execute(&mut *tx).await?; // the inbox's transaction: commits with its key
            Ok::<(PgTx, ()), BoxError>((tx, ()))
        }
    });
    let consumer = Consumer::builder()
        .name("payments")
        .concurrency(8)
        .max_attempts(25) // the breaker's refusals count as deliveries too
        .redelivery_backoff(Backoff::exponential(100 * MS).max_delay(Duration::from_secs(1)))
        .shutdown_grace(Duration::from_secs(5))
        .dead_letters(PgDeadLetters::new(pool.clone()))
        .build(
            RabbitSource::builder(amqp, queue).prefetch(8).build()?,
            PgInboxLayer::new(pool).layer(handler),
        )?;
    Ok((tokio::spawn(consumer.run_until(stop)), handle))
}

/// `"12"`, `"12.5"` or `"12.50"` in cents; `None` otherwise (and from a trillion up).
fn cents(amount: &str) -> Option<i64> {
    let (units, frac) = amount.split_once('.').unwrap_or((amount, "0"));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(units) || !digits(frac) || units.len() > 12 || frac.len() > 2 {
        return None;
    }
    let (units, frac): (i64, i64) = (units.parse().ok()?, format!("{frac:0<2}").parse().ok()?);
    units.checked_mul(100)?.checked_add(frac)
}

/// 50 orders, 8 at a time; the first sent twice at once; every 7th sent again afterwards.
async fn client(url: &str, c: &Counters) -> Result<(), BoxError> {
    let http = reqwest::Client::builder().no_proxy().build()?;
    let orders: Vec<(String, String)> = (0..ORDERS)
        .map(|i| {
            let amount = match i {
                POISON => "12,50".to_owned(),
                _ => format!("{}.{:02}", 10 + i, i * 7 % 100),
            };
            let body = serde_json::json!({ "item": format!("item-{i}"), "amount": amount });
            (uuid::Uuid::new_v4().to_string(), body.to_string())
        })
        .collect();
    let send = |(key, body): &(String, String)| {
        c.posts.fetch_add(1, Relaxed);
        let req = http.post(url).header("idempotency-key", key);
        let req = req.header("content-type", "application/json");
        let (req, key) = (req.body(body.clone()).send(), key.clone());
        async move {
            let res = req.await?;
            let replayed = res.headers().contains_key(IDEMPOTENT_REPLAYED);
            let status = res.status();
            let text = res.text().await?;
            if status != reqwest::StatusCode::CREATED {
                return Err::<_, BoxError>(format!("POST /orders: {status} {text}").into());
            }
            let answer: serde_json::Value = serde_json::from_str(&text)?;
            let id = answer["id"].as_str().map(String::from);
            Ok((key, id.ok_or("no order id in the answer")?, replayed))
        }
    };
    let (a, b) = tokio::join!(send(&orders[0]), send(&orders[0]));
    let (a, b) = (a?, b?);
    let tally = |replayed: bool, same_id: bool| {
        c.resent.fetch_add(1, Relaxed);
        c.replayed.fetch_add(u64::from(replayed), Relaxed);
        c.same_id.fetch_add(u64::from(same_id), Relaxed);
    };
    // Whichever of the two came second was answered from the record.
    tally(a.2 || b.2, a.1 == b.1);
    let mut first = HashMap::from([(a.0, a.1)]);
    let rest = stream::iter(&orders[1..]).map(send).buffer_unordered(8);
    let rest: Vec<_> = rest.try_collect().await?;
    first.extend(rest.into_iter().map(|(key, id, _)| (key, id)));
    for order in orders.iter().step_by(RESEND_EVERY) {
        let (key, id, replayed) = send(order).await?;
        tally(replayed, first.get(&key) == Some(&id));
    }
    Ok(())
}

async fn scalar(pool: &PgPool, sql: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(sql).fetch_one(pool).await
}

/// How the run ended.
struct Done {
    relay: RelaySummary,
    consumer: RunSummary,
    breaker: CircuitBreakerHandle,
    settled: Duration,
}

/// What the database says: orders, outbox rows, payments, orders paid, orders paid more than
/// once, cents paid, inbox keys, idempotency keys.
const COUNTS: &str = "SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM rampart_outbox),
    (SELECT count(*) FROM payments), (SELECT count(DISTINCT order_id) FROM payments),
    (SELECT count(*) FROM (SELECT FROM payments GROUP BY order_id HAVING count(*) > 1) t),
    (SELECT coalesce(sum(amount_cents), 0)::bigint FROM payments),
    (SELECT count(*) FROM rampart_inbox), (SELECT count(*) FROM rampart_idempotency)";

/// Prints the table (queries and counters) and says whether every check holds.
async fn report(pool: &PgPool, outbox: &Outbox, c: &Counters, d: &Done) -> Result<bool, BoxError> {
    let (orders, events, payments, paid, twice, paid_cents, inbox, keys) =
        sqlx::query_as::<_, (i64, i64, i64, i64, i64, i64, i64, i64)>(COUNTS)
            .fetch_one(pool)
            .await?;
    let pending = i64::try_from(outbox.backlog().await?.pending)?;
    let sql =
        "SELECT message_id, reason, attempts, last_error FROM rampart_dead_letters ORDER BY id";
    let letters: Vec<(String, String, i64, String)> = sqlx::query_as(sql).fetch_all(pool).await?;
    let ledger = c.charges.lock().expect("not poisoned").clone();
    let charged = ledger.len() as i64;
    let charged_cents: i64 = ledger.values().map(|e| e.1).sum();
    let repeats: u32 = ledger.values().map(|e| e.2 - 1).sum();
    let n = |counter: &AtomicU64| counter.load(Relaxed);
    let (posts, runs) = (n(&c.posts), n(&c.handler_runs));
    let (calls, errors, slow) = (n(&c.pay_calls), n(&c.pay_errors), n(&c.pay_slow));
    let (retries, gave_up, opened) = (n(&c.pay_retries), n(&c.pay_gave_up), n(&c.breaker_opened));
    let RelaySummary {
        published: relayed,
        failed: relay_failed,
        batches,
        ..
    } = d.relay;
    let RunSummary {
        received,
        acked,
        redelivered,
        dead_lettered,
        ..
    } = d.consumer;
    let (resent, replayed, same_id) = (n(&c.resent), n(&c.replayed), n(&c.same_id));
    let (state, refused) = (d.breaker.state(), d.breaker.snapshot().not_permitted);
    let (published, secs) = (events - pending, d.settled.as_secs_f64());
    println!("\norder flow, settled in {secs:.1} s");
    println!("  HTTP                {posts} POSTs; the handler ran {runs} times");
    println!("  POST retries        {resent} sent again with their key (1 concurrently):");
    println!(
        "                      {replayed} answered from the record, {same_id} with the first id"
    );
    println!("  idempotency keys    {keys} in PostgresStore");
    println!("  orders              {orders}");
    println!("  outbox events       {events}: {published} published, {pending} pending");
    println!("  relay               {relayed} published, {relay_failed} failed, {batches} batches");
    println!("  payments applied    {payments} for {paid} orders; paid more than once: {twice}");
    println!("  inbox keys          {inbox}");
    println!(
        "  payment service     {calls} calls: {errors} failed, {slow} too slow (cut at 150 ms)"
    );
    println!(
        "                      charged {charged} orders, {charged_cents} cents ({repeats} repeats)"
    );
    println!(
        "  absorbed by retry   {retries} failed calls retried at once; {gave_up} failed 3 times (redelivered)"
    );
    println!(
        "  consumer            {received} received, {acked} acked, {redelivered} redelivered later"
    );
    println!("  breaker payments    {state}; opened {opened} times, {refused} calls refused");
    println!(
        "  dead letters        {dead_lettered} by the consumer, {} stored:",
        letters.len()
    );
    for (id, reason, attempts, error) in &letters {
        println!("                      {id}: {reason} ({attempts} delivery): {error}");
    }
    let poison = letters.iter().filter(|l| l.1 == "poison").count();
    let once = orders == ORDERS as i64 && runs == ORDERS as u64;
    let replays = replayed == resent && same_id == resent;
    let relayed_all = events == orders && pending == 0;
    let paid_once = paid == orders - 1 && twice == 0 && payments == paid;
    let charges_match = charged == paid && charged_cents == paid_cents;
    let poison_only = letters.len() == 1 && poison == 1;
    let checks = [
        (once, "one order per key, made once"),
        (replays, "every resent POST replayed with its id"),
        (relayed_all, "one event per order, all published"),
        (paid_once, "every good order paid exactly once"),
        (charges_match, "the charges match the payments"),
        (poison_only, "only the poison order dead-lettered"),
    ];
    let failed: Vec<_> = checks.iter().filter(|c| !c.0).map(|c| c.1).collect();
    match failed.is_empty() {
        true => println!("all {} checks hold", checks.len()),
        false => println!("FAILED: {}", failed.join("; ")),
    }
    Ok(failed.is_empty())
}
