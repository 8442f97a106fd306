//! The transactional outbox's core promises against the machine's real PostgreSQL (each test
//! its own database): an event exists only if its business transaction commits; rows of one
//! aggregate are published in order, within and across batches and around failures; writers of
//! one aggregate serialize; a running relay is woken by NOTIFY alone; bad or duplicate events
//! are refused; purge keeps pending rows; a schema-qualified table works end to end.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use sqlx::{PgPool, Row};
use tokio::sync::oneshot;
use tower::service_fn;
use tower_rampart::{
    BoxError,
    health::{Readiness, Status},
    message::{
        Message,
        outbox::{Outbox, OutboxCheck, OutboxError, OutboxEvent, Relay},
    },
};

mod common;

use common::postgres::{TestDb, count};

/// Generous: a condition not met within this fails the test.
const PATIENCE: Duration = Duration::from_secs(15);

async fn setup(prefix: &str, table: Option<&str>) -> (TestDb, PgPool, Outbox) {
    let db = TestDb::new(prefix).await;
    let pool = db.pool(8).await;
    let mut b = Outbox::builder(pool.clone());
    if let Some(t) = table {
        b = b.table(t);
    }
    let outbox = b.build().unwrap();
    outbox.migrate().await.unwrap();
    sqlx::raw_sql("CREATE TABLE orders (id text PRIMARY KEY)")
        .execute(&pool)
        .await
        .unwrap();
    (db, pool, outbox)
}

/// An order and its event in one business transaction.
async fn place(pool: &PgPool, outbox: &Outbox, aggregate: &str, id: &str) -> i64 {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO orders (id) VALUES ($1)")
        .bind(id)
        .execute(&mut *tx)
        .await
        .unwrap();
    let ev = OutboxEvent::new(aggregate, Message::new(id, "order.placed", id.to_owned()));
    let row = outbox.enqueue(&mut tx, ev).await.unwrap();
    tx.commit().await.unwrap();
    row
}

/// Message ids in publication order (successful publications only).
type Log = Arc<Mutex<Vec<String>>>;

/// A publisher that logs what it published, yields (so aggregates interleave), and fails the
/// first attempt of the ids in `fail_once`.
fn recorder(
    log: Log,
    fail_once: &[&str],
) -> impl tower::Service<Message, Response = (), Error = BoxError, Future: Send> + Clone + Send + 'static
{
    let failed: Arc<Mutex<Vec<String>>> = Arc::default();
    let fail_once: Arc<Vec<String>> = Arc::new(fail_once.iter().map(|s| s.to_string()).collect());
    service_fn(move |m: Message| {
        let (log, failed, fail_once) = (log.clone(), failed.clone(), fail_once.clone());
        async move {
            tokio::task::yield_now().await;
            let id = m.id().to_owned();
            if fail_once.contains(&id) && !failed.lock().unwrap().contains(&id) {
                failed.lock().unwrap().push(id);
                return Err::<(), BoxError>("broker refused".into());
            }
            log.lock().unwrap().push(id);
            Ok(())
        }
    })
}

async fn wait_for(what: &str, mut ok: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !ok().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_event_exists_only_if_its_transaction_commits() {
    let (_db, pool, outbox) = setup("outbox_commit", None).await;
    // Committed.
    place(&pool, &outbox, "order-1", "evt-1").await;
    // Rolled back: neither the order nor the event.
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO orders (id) VALUES ('evt-2')")
        .execute(&mut *tx)
        .await
        .unwrap();
    let ev = OutboxEvent::new("order-2", Message::new("evt-2", "order.placed", "{}"));
    outbox.enqueue(&mut tx, ev).await.unwrap();
    tx.rollback().await.unwrap();
    // Enqueue is Send: it can run in a spawned task.
    let (p, o) = (pool.clone(), outbox.clone());
    tokio::spawn(async move { place(&p, &o, "order-3", "evt-3").await })
        .await
        .unwrap();

    let log = Log::default();
    let mut relay = Relay::builder(outbox.clone())
        .build(recorder(log.clone(), &[]))
        .unwrap();
    let s = relay.drain().await.unwrap();
    assert_eq!(s.published, 2);
    // (Aggregates are published concurrently: no order between them.)
    let mut published = log.lock().unwrap().clone();
    published.sort();
    assert_eq!(published, ["evt-1", "evt-3"]);
    // The published message is the enqueued one.
    let b = outbox.backlog().await.unwrap();
    assert_eq!((b.pending, b.failing, b.oldest_age), (0, 0, None));
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM rampart_outbox WHERE published_at IS NOT NULL AND attempts = 1"
        )
        .await,
        2
    );
    // Nothing left: another batch claims nothing.
    assert_eq!(relay.run_once().await.unwrap().claimed, 0);
}

#[tokio::test]
async fn messages_arrive_whole() {
    let (_db, pool, outbox) = setup("outbox_whole", None).await;
    let sent = Message::new("evt-h", "order.paid", &b"\x00\xffbytes"[..])
        .with_header("tenant", "acme")
        .with_header("trace", "00-ab-cd-01")
        .with_correlation_id("checkout-9");
    let mut tx = pool.begin().await.unwrap();
    outbox.enqueue(&mut tx, sent.clone()).await.unwrap();
    tx.commit().await.unwrap();
    let got: Arc<Mutex<Vec<Message>>> = Arc::default();
    let g = got.clone();
    let mut relay = Relay::builder(outbox)
        .build(service_fn(move |m: Message| {
            g.lock().unwrap().push(m);
            async { Ok::<_, BoxError>(()) }
        }))
        .unwrap();
    relay.drain().await.unwrap();
    assert_eq!(*got.lock().unwrap(), [sent]);
}

#[tokio::test]
async fn rows_of_an_aggregate_are_published_in_order_within_and_across_batches() {
    let (_db, pool, outbox) = setup("outbox_order", None).await;
    let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for i in 0..60 {
        let agg = format!("agg-{}", i % 4);
        let id = format!("evt-{i:03}");
        place(&pool, &outbox, &agg, &id).await;
        expected.entry(agg).or_default().push(id);
    }
    let log = Log::default();
    // evt-009 (agg-1) fails once: agg-1's later rows wait, the others go on.
    let mut relay = Relay::builder(outbox.clone())
        .batch_size(7)
        .concurrency(4)
        .retry_backoff(Duration::from_millis(1), Duration::from_millis(2))
        .build(recorder(log.clone(), &["evt-009"]))
        .unwrap();
    let mut deferred = 0;
    let mut failed = 0;
    for _ in 0..200 {
        let r = relay.run_once().await.unwrap();
        deferred += r.deferred;
        failed += r.failed;
        if count(
            &pool,
            "SELECT count(*) FROM rampart_outbox WHERE published_at IS NULL",
        )
        .await
            == 0
        {
            break;
        }
        if r.claimed == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert_eq!(failed, 1);
    assert!(
        deferred > 0,
        "agg-1's rows after evt-009 in its batch were deferred"
    );
    let log = log.lock().unwrap().clone();
    assert_eq!(log.len(), 60, "each row published once: {log:?}");
    for (agg, ids) in &expected {
        let got: Vec<&String> = log.iter().filter(|m| ids.contains(m)).collect();
        assert_eq!(got, ids.iter().collect::<Vec<_>>(), "order of {agg}");
    }
    let row =
        sqlx::query("SELECT attempts, last_error FROM rampart_outbox WHERE message_id = 'evt-009'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(row.get::<i32, _>("attempts"), 2);
    assert!(
        row.get::<String, _>("last_error")
            .contains("broker refused")
    );
}

#[tokio::test]
async fn a_failed_row_waits_for_its_backoff_and_holds_back_only_its_aggregate() {
    let (_db, pool, outbox) = setup("outbox_backoff", None).await;
    place(&pool, &outbox, "a", "a1").await;
    place(&pool, &outbox, "a", "a2").await;
    place(&pool, &outbox, "b", "b1").await;
    let log = Log::default();
    let mut relay = Relay::builder(outbox.clone())
        .retry_backoff(Duration::from_secs(3600), Duration::from_secs(3600))
        .build(recorder(log.clone(), &["a1"]))
        .unwrap();
    let r = relay.run_once().await.unwrap();
    assert_eq!((r.claimed, r.published, r.failed, r.deferred), (3, 1, 1, 1));
    assert_eq!(*log.lock().unwrap(), ["b1"]);
    // Not due for an hour: neither a1 nor a2 (behind it) is claimed.
    assert_eq!(relay.run_once().await.unwrap().claimed, 0);
    let wait: f64 = sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM next_attempt_at - now())::float8 FROM rampart_outbox \
         WHERE message_id = 'a1'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!((2800.0..=3600.0).contains(&wait), "{wait}");
    let b = outbox.backlog().await.unwrap();
    assert_eq!((b.pending, b.failing), (2, 1));
    assert!(b.oldest_age.is_some());
    // Due again: a1 then a2.
    sqlx::query("UPDATE rampart_outbox SET next_attempt_at = now()")
        .execute(&pool)
        .await
        .unwrap();
    let s = relay.drain().await.unwrap();
    assert_eq!(s.published, 2);
    assert_eq!(*log.lock().unwrap(), ["b1", "a1", "a2"]);
}

#[tokio::test]
async fn writers_of_one_aggregate_wait_for_each_other_until_commit() {
    let (_db, pool, outbox) = setup("outbox_lock", None).await;
    let mut first = pool.begin().await.unwrap();
    let id1 = outbox
        .enqueue(
            &mut first,
            OutboxEvent::new("acct", Message::new("e1", "k", "")),
        )
        .await
        .unwrap();
    // Another aggregate does not wait.
    place(&pool, &outbox, "other", "o1").await;
    // The same aggregate waits for `first`'s commit.
    let (p, o) = (pool.clone(), outbox.clone());
    let (done_tx, mut done_rx) = oneshot::channel();
    let second = tokio::spawn(async move {
        let id = place(&p, &o, "acct", "e2").await;
        let _ = done_tx.send(());
        id
    });
    wait_for(
        "the second writer waits on the aggregate's lock",
        async || {
            count(
                &pool,
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
            )
            .await
                == 1
        },
    )
    .await;
    assert!(done_rx.try_recv().is_err(), "the second writer went ahead");
    first.commit().await.unwrap();
    let id2 = tokio::time::timeout(PATIENCE, second)
        .await
        .unwrap()
        .unwrap();
    assert!(id1 < id2, "ids follow commit order: {id1} < {id2}");
}

#[tokio::test]
async fn a_running_relay_is_woken_by_notify() {
    let (_db, pool, outbox) = setup("outbox_notify", None).await;
    place(&pool, &outbox, "a", "before-start").await;
    let log = Log::default();
    // Polls once an hour: only a notification can wake it after its first batches.
    let relay = Relay::builder(outbox.clone())
        .poll_interval(Duration::from_secs(3600))
        .build(recorder(log.clone(), &[]))
        .unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(relay.run_until(async {
        let _ = stopped.await;
    }));
    // One at a time, each after the previous was published: the start-up batch and the one
    // after LISTEN is set up can take at most two of them.
    let ids = ["before-start", "n1", "n2", "n3"];
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            place(&pool, &outbox, &format!("agg-{i}"), id).await;
        }
        wait_for(&format!("{id} published"), async || {
            log.lock().unwrap().len() > i
        })
        .await;
    }
    stop.send(()).unwrap();
    let summary = tokio::time::timeout(PATIENCE, running)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(summary.published, 4);
    assert_eq!(summary.database_errors, 0);
    assert_eq!(*log.lock().unwrap(), ids);
}

#[tokio::test]
async fn duplicate_ids_and_invalid_events_are_refused() {
    let (_db, pool, outbox) = setup("outbox_refuse", None).await;
    place(&pool, &outbox, "a", "dup").await;
    let mut tx = pool.begin().await.unwrap();
    // Refused before anything is sent: the transaction goes on.
    for (agg, m) in [
        ("", Message::new("x", "k", "")),
        ("a", Message::new("", "k", "")),
        ("a", Message::new("x".repeat(256), "k", "")),
        ("a", Message::new("x", "k\0", "")),
        ("a", Message::new("x", "k", "").with_header("h", "\0")),
    ] {
        let err = outbox
            .enqueue(&mut tx, OutboxEvent::new(agg, m))
            .await
            .unwrap_err();
        assert!(matches!(err, OutboxError::InvalidEvent(_)), "{err}");
    }
    outbox
        .enqueue(
            &mut tx,
            OutboxEvent::new("a", Message::new("fine", "k", "")),
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // A duplicate id: refused, and the transaction is aborted (as by any failed statement).
    let mut tx = pool.begin().await.unwrap();
    let err = outbox
        .enqueue(&mut tx, OutboxEvent::new("b", Message::new("dup", "k", "")))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, OutboxError::DuplicateId(id) if id == "dup"),
        "{err}"
    );
    assert!(sqlx::query("SELECT 1").execute(&mut *tx).await.is_err());
    drop(tx);
    assert_eq!(count(&pool, "SELECT count(*) FROM rampart_outbox").await, 2);
}

#[tokio::test]
async fn purge_deletes_published_rows_only() {
    let (_db, pool, outbox) = setup("outbox_purge", None).await;
    for i in 0..3 {
        place(&pool, &outbox, "a", &format!("p{i}")).await;
    }
    let mut relay = Relay::builder(outbox.clone())
        .build(recorder(Log::default(), &[]))
        .unwrap();
    relay.drain().await.unwrap();
    place(&pool, &outbox, "a", "pending").await;
    // Not old enough.
    assert_eq!(
        outbox.purge(Duration::from_secs(3600), 100).await.unwrap(),
        0
    );
    assert_eq!(outbox.purge(Duration::ZERO, 2).await.unwrap(), 2);
    assert_eq!(outbox.purge(Duration::ZERO, 100).await.unwrap(), 1);
    assert_eq!(outbox.purge(Duration::ZERO, 100).await.unwrap(), 0);
    let left: Vec<String> = sqlx::query_scalar("SELECT message_id FROM rampart_outbox")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(left, ["pending"]);
    for (older, limit) in [(Duration::ZERO, 0), (Duration::from_secs(400 * 86_400), 1)] {
        let err = outbox.purge(older, limit).await.unwrap_err();
        assert!(matches!(err, OutboxError::Config(_)), "{err}");
    }
}

#[tokio::test]
async fn a_table_in_a_schema_works_end_to_end() {
    let (_db, pool, outbox) = setup("outbox_schema", Some("app.events")).await;
    // Migrating again, from several instances at once, is harmless.
    let (a, b) = tokio::join!(outbox.migrate(), outbox.migrate());
    a.unwrap();
    b.unwrap();
    assert_eq!(outbox.channel(), "app.events");
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM information_schema.tables \
             WHERE table_schema = 'app' AND table_name = 'events'"
        )
        .await,
        1
    );
    let log = Log::default();
    let relay = Relay::builder(outbox.clone())
        .poll_interval(Duration::from_secs(3600))
        .build(recorder(log.clone(), &[]))
        .unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(relay.run_until(async {
        let _ = stopped.await;
    }));
    for (i, id) in ["s1", "s2", "s3"].iter().enumerate() {
        place(&pool, &outbox, "a", id).await;
        wait_for(id, async || log.lock().unwrap().len() > i).await;
    }
    stop.send(()).unwrap();
    tokio::time::timeout(PATIENCE, running)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM app.events WHERE published_at IS NOT NULL"
        )
        .await,
        3
    );
}

#[tokio::test]
async fn readiness_follows_the_backlog_age() {
    let (_db, pool, outbox) = setup("outbox_ready", None).await;
    let readiness =
        Readiness::new().outbox(OutboxCheck::new(outbox.clone(), Duration::from_secs(60)));
    let status = async |r: &Readiness| {
        let report = r.report().await;
        let c = report
            .get("rampart_outbox:backlogAge")
            .next()
            .unwrap()
            .clone();
        (report.status, c.status)
    };
    assert_eq!(status(&readiness).await, (Status::Pass, Status::Pass));
    place(&pool, &outbox, "a", "old").await;
    let age = |secs: i32| {
        sqlx::query("UPDATE rampart_outbox SET created_at = now() - $1 * interval '1 second'")
            .bind(secs)
            .execute(&pool)
    };
    age(45).await.unwrap();
    assert_eq!(status(&readiness).await.1, Status::Warn);
    age(90).await.unwrap();
    assert_eq!(status(&readiness).await, (Status::Fail, Status::Fail));
    let report = readiness.report().await;
    let c = report.get("rampart_outbox:backlogAge").next().unwrap();
    assert_eq!(
        (c.component_type, c.observed_unit),
        ("component", Some("s"))
    );
    assert!(
        c.output.as_deref().unwrap().contains("90."),
        "{:?}",
        c.output
    );
    // Published: passes again.
    let mut relay = Relay::builder(outbox.clone())
        .build(recorder(Log::default(), &[]))
        .unwrap();
    relay.drain().await.unwrap();
    assert_eq!(status(&readiness).await.1, Status::Pass);
    // PostgreSQL not answering: fails.
    pool.close().await;
    assert_eq!(status(&readiness).await.1, Status::Fail);
}

#[test]
fn published_and_failed_are_counted_and_gauges_refreshed() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let (_db, pool, outbox) = setup("outbox_metrics", None).await;
            place(&pool, &outbox, "a", "m1").await;
            place(&pool, &outbox, "a", "m2").await;
            place(&pool, &outbox, "b", "m3").await;
            let mut relay = Relay::builder(outbox.clone())
                .name("orders")
                .metrics_interval(Duration::from_millis(100))
                .retry_backoff(Duration::from_secs(3600), Duration::from_secs(3600))
                .build(super_recorder(&["m1"]))
                .unwrap();
            relay.run_once().await.unwrap();
            // The gauges: run_until refreshes them at start; stop it right after.
            let relay = Relay::builder(outbox)
                .name("orders")
                .listen(false)
                .build(super_recorder(&[]))
                .unwrap();
            relay
                .run_until(tokio::time::sleep(Duration::from_millis(300)))
                .await;
        })
    });
    let got: BTreeMap<String, f64> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(k, ..)| {
            k.key()
                .labels()
                .any(|l| l.key() == "outbox" && l.value() == "orders")
        })
        .map(|(k, _, _, v)| {
            let v = match v {
                DebugValue::Counter(c) => c as f64,
                DebugValue::Gauge(g) => g.into_inner(),
                DebugValue::Histogram(h) => h.len() as f64,
            };
            (k.key().name().to_owned(), v)
        })
        .collect();
    assert_eq!(got["rampart_outbox_published_total"], 1.0, "{got:?}");
    assert_eq!(got["rampart_outbox_failed_total"], 1.0, "{got:?}");
    // m1 (failed, not due for an hour) and m2 behind it.
    assert_eq!(got["rampart_outbox_backlog"], 2.0, "{got:?}");
    assert!(got["rampart_outbox_oldest_age_seconds"] >= 0.0, "{got:?}");
}

fn super_recorder(
    fail_once: &[&str],
) -> impl tower::Service<Message, Response = (), Error = BoxError, Future: Send> + Clone + Send + 'static
{
    recorder(Log::default(), fail_once)
}

/// A publisher that waits for `go` before answering each message, telling `started` first.
fn gated(
    started: Arc<tokio::sync::Notify>,
    go: Arc<tokio::sync::Semaphore>,
    log: Log,
) -> impl tower::Service<Message, Response = (), Error = BoxError, Future: Send> + Clone + Send + 'static
{
    service_fn(move |m: Message| {
        let (started, go, log) = (started.clone(), go.clone(), log.clone());
        async move {
            started.notify_one();
            go.acquire().await.unwrap().forget();
            log.lock().unwrap().push(m.id().to_owned());
            Ok::<_, BoxError>(())
        }
    })
}

#[tokio::test]
async fn a_dropped_batch_rolls_back_and_a_shutdown_finishes_its_batch() {
    let (_db, pool, outbox) = setup("outbox_stop", None).await;
    place(&pool, &outbox, "a", "s1").await;
    let (started, go, log) = (
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(tokio::sync::Semaphore::new(0)),
        Log::default(),
    );
    let mut relay = Relay::builder(outbox.clone())
        .build(gated(started.clone(), go.clone(), log.clone()))
        .unwrap();
    // Dropped while publishing: nothing marked, the row unlocked.
    {
        let batch = relay.run_once();
        tokio::pin!(batch);
        tokio::select! {
            _ = &mut batch => panic!("the batch ended without an answer"),
            _ = started.notified() => {}
        }
    }
    wait_for("the dropped batch's locks released", async || {
        count(
            &pool,
            "SELECT count(*) FROM rampart_outbox WHERE published_at IS NULL AND attempts = 0",
        )
        .await
            == 1
            && count(
                &pool,
                "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
                 WHERE c.relname = 'rampart_outbox' AND l.mode = 'RowShareLock'",
            )
            .await
                == 0
    })
    .await;
    // Shutdown while a batch publishes: the batch is finished and committed.
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(relay.run_until(async {
        let _ = stopped.await;
    }));
    tokio::time::timeout(PATIENCE, started.notified())
        .await
        .unwrap();
    stop.send(()).unwrap();
    go.add_permits(1);
    let summary = tokio::time::timeout(PATIENCE, running)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((summary.batches, summary.published), (1, 1));
    assert_eq!(*log.lock().unwrap(), ["s1"]);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM rampart_outbox WHERE published_at IS NOT NULL"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn a_lost_listen_connection_is_replaced() {
    let (_db, pool, outbox) = setup("outbox_relisten", None).await;
    let log = Log::default();
    let relay = Relay::builder(outbox.clone())
        .poll_interval(Duration::from_secs(3600))
        .error_delay(Duration::from_millis(50))
        .build(recorder(log.clone(), &[]))
        .unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(relay.run_until(async {
        let _ = stopped.await;
    }));
    let listener = async || -> Option<i32> {
        sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
             AND query LIKE 'LISTEN%'",
        )
        .fetch_optional(&pool)
        .await
        .unwrap()
    };
    wait_for("the relay listens", async || listener().await.is_some()).await;
    let first = listener().await.unwrap();
    let _: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(first)
        .fetch_one(&pool)
        .await
        .unwrap();
    wait_for("the relay listens again", async || {
        listener().await.is_some_and(|p| p != first)
    })
    .await;
    // Two events one after the other: the batch after reconnecting can take only the first.
    for (i, id) in ["r1", "r2"].iter().enumerate() {
        place(&pool, &outbox, "a", id).await;
        wait_for(id, async || log.lock().unwrap().len() > i).await;
    }
    stop.send(()).unwrap();
    let summary = tokio::time::timeout(PATIENCE, running)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(summary.published, 2);
}

/// A batch looks for heads among the first pending rows only (so a long backlog is not scanned
/// whole); a long run of one aggregate waiting for its backoff must not hide the heads of
/// other aggregates behind it.
#[tokio::test]
async fn a_long_blocked_aggregate_does_not_hide_the_heads_behind_it() {
    let (_db, pool, outbox) = setup("outbox_hidden_heads", None).await;
    let mut tx = pool.begin().await.unwrap();
    for i in 0..1_100 {
        let msg = Message::new(format!("a{i}"), "order.placed", "{}");
        outbox
            .enqueue(&mut tx, OutboxEvent::new("a", msg))
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    place(&pool, &outbox, "b", "b1").await;
    // a's head waits for its next attempt: the 1,100 rows before b1 hold no due head.
    sqlx::query(
        "UPDATE rampart_outbox SET next_attempt_at = now() + interval '1 hour', attempts = 1 \
         WHERE message_id = 'a0'",
    )
    .execute(&pool)
    .await
    .unwrap();
    let log = Log::default();
    let mut relay = Relay::builder(outbox.clone())
        .batch_size(10)
        .build(recorder(log.clone(), &[]))
        .unwrap();
    let r = relay.run_once().await.unwrap();
    assert_eq!((r.claimed, r.published), (1, 1));
    assert_eq!(*log.lock().unwrap(), ["b1"]);
    // And once a's head is due, its rows go in order, a batch at a time.
    sqlx::query("UPDATE rampart_outbox SET next_attempt_at = now()")
        .execute(&pool)
        .await
        .unwrap();
    let r = relay.run_once().await.unwrap();
    assert_eq!(r.published, 10);
    assert_eq!(log.lock().unwrap()[1..4], ["a0", "a1", "a2"]);
}

/// A publisher that is `Send` but not `Sync` (a `Cell` inside): the relay's futures must still
/// be `Send`, so that they can be spawned.
#[tokio::test]
async fn relay_futures_are_send_for_a_publisher_that_is_not_sync() {
    #[derive(Clone)]
    struct NotSync(std::cell::Cell<u32>);
    impl tower::Service<Message> for NotSync {
        type Response = ();
        type Error = BoxError;
        type Future = std::future::Ready<Result<(), BoxError>>;
        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), BoxError>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: Message) -> Self::Future {
            self.0.set(self.0.get() + 1);
            std::future::ready(Ok(()))
        }
    }
    fn spawnable<T: Send>(_: T) {}
    let pool = sqlx::postgres::PgPoolOptions::new()
        .connect_lazy("postgres://postgres@127.0.0.1:5432/postgres")
        .unwrap();
    let mut relay = Relay::builder(Outbox::new(pool))
        .build(NotSync(std::cell::Cell::new(0)))
        .unwrap();
    spawnable(relay.run_once());
    spawnable(relay.drain());
    spawnable(relay.run_until(async {}));
}
