//! The consumer side end to end, against the real brokers and PostgreSQL, under real faults:
//! 2,000 messages (1 % poison) published to RabbitMQ (and, separately, to NATS JetStream) are
//! consumed by a consumer PROCESS behind the transactional PostgreSQL inbox, whose effect is a
//! row in PostgreSQL. Meanwhile the consumer process is killed (SIGKILL) twice while handlers
//! are running, and its broker connection is cut once (a TCP proxy between it and the broker).
//!
//! Asserted on the rows, at the end: every good message's effect exists exactly once (the
//! effects table has no unique constraint: a second run would show as a second row), every
//! poison message is in the dead-letter table once with reason `poison`, and nothing else is.
//!
//! The same schedule with the inbox on Redis (a store outside the effect's transaction) shows
//! what that inbox promises instead: at most once per message while its record lives, subject
//! to the lease. A message runs twice only when a killed process had applied its effect and
//! could not complete its key: every extra effect row comes from a process that was killed.
//!
//! The consumer runs in a child process (this test binary started again on one `#[ignore]`d
//! test, tests/common/child.rs) so that a kill is a real process death: no destructor runs,
//! uncommitted transactions are rolled back by PostgreSQL, unacked deliveries are redelivered
//! by the broker.

mod common;

use std::{collections::HashMap, time::Duration};

use sqlx::{PgPool, postgres::PgPoolOptions};
use tower::{Layer, service_fn};
use tower_rampart::{
    BoxError,
    idempotency::RedisStore,
    message::{
        Message, Poison, Source,
        consumer::Consumer,
        inbox::InboxLayer,
        nats::{JetStreamConfig, JetStreamPublisher, JetStreamSource},
        postgres::{PgDeadLetters, PgInboxLayer, PgTx, TxMessage},
        rabbitmq::{RabbitPublisher, RabbitSource},
    },
};

use common::{
    child::{self, Child},
    postgres::{TestDb, count},
    proxy::FaultProxy,
    rabbitmq::Rabbit,
    redis_server::RedisServer,
};

const MESSAGES: usize = 2_000;

fn is_poison(i: usize) -> bool {
    i % 100 == 37
}

fn message(i: usize) -> Message {
    let payload = if is_poison(i) {
        "not json".to_string()
    } else {
        format!("{{\"order\":{i}}}")
    };
    Message::new(format!("m-{i:05}"), "order.placed", payload)
}

fn good() -> i64 {
    (0..MESSAGES).filter(|i| !is_poison(*i)).count() as i64
}

fn poison_ids() -> Vec<String> {
    (0..MESSAGES)
        .filter(|i| is_poison(*i))
        .map(|i| message(i).id().to_string())
        .collect()
}

/// `effects`: one row per run of the handler that committed (no unique constraint), with the
/// process that ran it. `started`: every run as it begins, outside any transaction.
async fn prepare_db(pool: &PgPool) {
    for table in [
        "CREATE TABLE started (message_id text NOT NULL)",
        "CREATE TABLE effects (message_id text NOT NULL, pid bigint NOT NULL)",
    ] {
        sqlx::query(table).execute(pool).await.unwrap();
    }
    PgInboxLayer::new(pool.clone()).migrate().await.unwrap();
    PgDeadLetters::new(pool.clone()).migrate().await.unwrap();
}

async fn applied(pool: &PgPool) -> i64 {
    count(pool, "SELECT count(DISTINCT message_id) FROM effects").await
}

async fn until_applied(pool: &PgPool, n: i64, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while applied(pool).await < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: fewer than {n} messages applied after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The fault schedule: a consumer process killed at 400 applied messages, the broker
/// connection of the next one cut at 900, that one killed at 1,300; a third runs until every
/// good message is applied and every poison one dead-lettered. Returns the killed processes.
async fn faults(pool: &PgPool, proxy: &FaultProxy, start: impl Fn() -> Child) -> Vec<i64> {
    let mut killed = Vec::new();
    let mut consumer = start();
    until_applied(pool, 400, "first run").await;
    killed.push(i64::from(consumer.pid()));
    consumer.kill(); // mid-handler: 16 handlers are running at any time
    let mut consumer = start();
    until_applied(pool, 900, "after the first kill").await;
    proxy.cut();
    until_applied(pool, 1300, "after the cut").await;
    killed.push(i64::from(consumer.pid()));
    consumer.kill();
    let mut consumer = start();
    let poison = poison_ids().len() as i64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let e = applied(pool).await;
        let d = count(pool, "SELECT count(*) FROM rampart_dead_letters").await;
        if e >= good() && d >= poison {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "after 90 s: {e} of {} applied, {d} of {poison} dead letters",
            good()
        );
        if let Some(status) = consumer.exited() {
            panic!("the consumer process exited on its own: {status}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Anything still to come (a duplicate run) would show now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    consumer.kill();
    // Three consumer processes, plus at least one reconnection after the cut.
    assert!(
        proxy.accepted() >= 4,
        "connections through the proxy: {}",
        proxy.accepted()
    );
    killed
}

/// Runs of each message that committed an effect, by process.
async fn runs(pool: &PgPool) -> HashMap<String, Vec<i64>> {
    let rows: Vec<(String, Vec<i64>)> = sqlx::query_as(
        "SELECT message_id, array_agg(pid ORDER BY pid) FROM effects GROUP BY message_id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter().collect()
}

/// Every poison message is a dead letter once, with reason `poison`; nothing else is.
async fn only_poison_is_dead(pool: &PgPool) {
    let letters: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT message_id, reason, count(*) FROM rampart_dead_letters GROUP BY 1, 2",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let poison = poison_ids();
    assert_eq!(letters.len(), poison.len(), "dead letters: {letters:?}");
    for (id, reason, n) in letters {
        assert!(
            poison.contains(&id),
            "{id} was dead-lettered ({reason}) but is not poison"
        );
        assert_eq!(reason, "poison");
        assert_eq!(n, 1, "{id} was dead-lettered {n} times");
    }
}

/// Transactional inbox: every good message's effect exactly once, and the faults really cut
/// runs off (more runs started than committed).
async fn exactly_once(pool: &PgPool) {
    let runs = runs(pool).await;
    for i in 0..MESSAGES {
        let id = message(i).id().to_string();
        let n = runs.get(&id).map_or(0, Vec::len);
        if is_poison(i) {
            assert_eq!(n, 0, "poison message {id} left an effect");
        } else {
            assert_eq!(n, 1, "message {id}'s effect exists {n} times");
        }
    }
    let started = count(
        pool,
        "SELECT count(*) FROM started WHERE message_id NOT IN \
         (SELECT message_id FROM rampart_dead_letters)",
    )
    .await;
    assert!(
        started > good(),
        "the kills and the cut interrupted no handler ({started} runs started for {} \
         effects): the test proved nothing",
        good()
    );
    only_poison_is_dead(pool).await;
}

/// A RabbitMQ quorum queue holding the 2,000 messages.
async fn rabbit_queue(rabbit: &Rabbit) -> String {
    let queue = rabbit.quorum_queue("orders").await;
    let publisher = RabbitPublisher::builder(common::rabbitmq::URL, "")
        .routing_key(queue.clone())
        .build()
        .unwrap();
    for i in 0..MESSAGES {
        publisher.publish(&message(i)).await.unwrap();
    }
    queue
}

// ---------------------------------------------------------------- the consumer process

/// Records the run, refuses poison, then applies the effect through `exec` and waits a little,
/// so that kills land while runs are in progress.
async fn run_handler<'c>(
    pool: &PgPool,
    message: &Message,
    exec: impl sqlx::PgExecutor<'c>,
) -> Result<(), BoxError> {
    sqlx::query("INSERT INTO started (message_id) VALUES ($1)")
        .bind(message.id())
        .execute(pool)
        .await?;
    if message.payload().as_ref() == b"not json" {
        return Err(Poison::new("payload is not JSON").into());
    }
    sqlx::query("INSERT INTO effects (message_id, pid) VALUES ($1, $2)")
        .bind(message.id())
        .bind(i64::from(std::process::id()))
        .execute(exec)
        .await?;
    tokio::time::sleep(Duration::from_millis(3)).await;
    Ok(())
}

/// The consumer process: a source from the settings (RabbitMQ or JetStream, through the
/// proxy), the inbox the settings name (PostgreSQL, transactional; or Redis), dead letters to
/// PostgreSQL. Runs until killed.
fn consumer_process() {
    let Some(s) = child::settings() else { return };
    child::runtime().block_on(async move {
        let pool = PgPoolOptions::new()
            .max_connections(20)
            .connect(&s["db"])
            .await
            .unwrap();
        if let Some(amqp) = s.get("amqp") {
            let source = RabbitSource::builder(amqp.clone(), s["queue"].clone())
                .prefetch(16)
                .build()
                .unwrap();
            consume(&s, pool, source).await;
        } else {
            let client = async_nats::connect(s["nats"].as_str()).await.unwrap();
            let config = JetStreamConfig::builder(s["stream"].clone(), "e2e")
                .ack_wait(Duration::from_secs(2))
                .concurrency(16)
                .build()
                .unwrap();
            let source = JetStreamSource::bind(async_nats::jetstream::new(client), config)
                .await
                .unwrap();
            consume(&s, pool, source).await;
        }
    });
}

async fn consume(s: &HashMap<String, String>, pool: PgPool, source: impl Source) {
    let consumer = Consumer::builder()
        .concurrency(16)
        .max_attempts(20)
        .dead_letters(PgDeadLetters::new(pool.clone()));
    let forever = std::future::pending::<()>();
    if let Some(redis) = s.get("redis") {
        let inbox = InboxLayer::builder(RedisStore::connect(redis).await.unwrap())
            .lease(Duration::from_secs(2))
            .store_timeout(Duration::from_millis(500))
            .in_flight_delay(Duration::from_millis(200))
            .build()
            .unwrap();
        // The effect outside any transaction the inbox knows of.
        let handler = service_fn(move |message: Message| {
            let pool = pool.clone();
            async move { run_handler(&pool, &message, &pool).await }
        });
        let consumer = consumer.build(source, inbox.layer(handler)).unwrap();
        consumer.run_until(forever).await;
    } else {
        // The effect through the inbox's transaction: it commits with the message's key.
        let p = pool.clone();
        let handler = service_fn(move |TxMessage { message, mut tx }| {
            let pool = p.clone();
            async move {
                run_handler(&pool, &message, &mut *tx).await?;
                Ok::<(PgTx, ()), BoxError>((tx, ()))
            }
        });
        let consumer = consumer
            .build(source, PgInboxLayer::new(pool).layer(handler))
            .unwrap();
        consumer.run_until(forever).await;
    }
}

#[test]
#[ignore = "the consumer process the end-to-end tests start and kill"]
fn consumer_process_entry() {
    consumer_process();
}

fn start(settings: String) -> impl Fn() -> Child {
    move || Child::start("consumer_process_entry", &settings)
}

// ---------------------------------------------------------------- the tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_consumer_killed_twice_and_cut_applies_each_message_once() {
    let db = TestDb::new("e2e_rabbit").await;
    let pool = db.pool(4).await;
    prepare_db(&pool).await;
    let rabbit = Rabbit::new("e2e").await;
    let queue = rabbit_queue(&rabbit).await;
    let proxy = FaultProxy::start("127.0.0.1:5672").await;
    let amqp = format!("amqp://guest:guest@{}/%2f", proxy.addr());
    faults(
        &pool,
        &proxy,
        start(format!("db={};queue={queue};amqp={amqp}", db.url())),
    )
    .await;
    exactly_once(&pool).await;
    assert_eq!(rabbit.count(&queue).await, 0, "messages left in the queue");
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_consumer_killed_twice_and_cut_applies_each_message_once() {
    let db = TestDb::new("e2e_nats").await;
    let pool = db.pool(4).await;
    prepare_db(&pool).await;
    let js = common::nats::connect().await;
    let stream = common::nats::TestStream::new(&js, "e2e").await;
    let publisher =
        JetStreamPublisher::new(js.clone(), format!("{}.orders", stream.subject)).unwrap();
    for i in 0..MESSAGES {
        tower::ServiceExt::oneshot(publisher.clone(), message(i))
            .await
            .unwrap();
    }
    let proxy = FaultProxy::start(common::nats::addr()).await;
    let nats = format!("nats://{}", proxy.addr());
    let s = format!("db={};stream={};nats={nats}", db.url(), stream.name);
    faults(&pool, &proxy, start(s)).await;
    exactly_once(&pool).await;
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_inbox_runs_a_message_twice_only_after_a_kill_between_effect_and_completion() {
    let db = TestDb::new("e2e_redis_inbox").await;
    let pool = db.pool(4).await;
    prepare_db(&pool).await;
    let redis = RedisServer::start();
    let rabbit = Rabbit::new("e2e-redis").await;
    let queue = rabbit_queue(&rabbit).await;
    let proxy = FaultProxy::start("127.0.0.1:5672").await;
    let amqp = format!("amqp://guest:guest@{}/%2f", proxy.addr());
    let s = format!(
        "db={};queue={queue};amqp={amqp};redis={}",
        db.url(),
        redis.url()
    );
    let killed = faults(&pool, &proxy, start(s)).await;

    let runs = runs(&pool).await;
    assert_eq!(
        runs.len() as i64,
        good(),
        "a message's effect is missing, or a poison one ran"
    );
    let mut twice = 0;
    for (id, pids) in &runs {
        if pids.len() > 1 {
            twice += 1;
            // Each killed process may have applied it once before dying; a survivor, once.
            let survivors = pids.iter().filter(|p| !killed.contains(p)).count();
            assert!(
                survivors <= 1 && survivors < pids.len(),
                "{id} ran {} times ({pids:?}; killed processes {killed:?})",
                pids.len()
            );
        }
    }
    eprintln!(
        "redis inbox: {twice} of {} messages ran twice, each after a kill",
        good()
    );
    only_poison_is_dead(&pool).await;
    assert_eq!(rabbit.count(&queue).await, 0, "messages left in the queue");
    pool.close().await;
}
