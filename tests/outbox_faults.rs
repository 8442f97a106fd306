//! The outbox relay under faults, against the machine's real PostgreSQL (each test its own
//! database): four relays racing over one table, a failing, a hung and a panicking publisher,
//! the database cut mid-batch and under the listener (TCP fault proxy), a cancelled batch, bad
//! input and settings, readiness and metrics.
//!
//! The publisher is a scripted `Service<Message>` over a recorder that notes, per message id,
//! the calls, the successful publications (in one global sequence) and any second call made
//! while one was still in flight (a concurrent publication: a violation).

mod common;

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    hash::{DefaultHasher, Hash, Hasher},
    pin::Pin,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use common::{
    postgres::{TestDb, count},
    proxy::FaultProxy,
};
use http_body_util::BodyExt;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sqlx::PgPool;
use tokio::sync::watch;
use tower_rampart::{
    BoxError,
    health::Readiness,
    message::{
        MAX_ID_LEN, Message,
        outbox::{Outbox, OutboxCheck, OutboxError, OutboxEvent, Relay, metric_names},
    },
};
use tower_service::Service;

// ---------------------------------------------------------------------------------------------
// The recorder and the scripted publisher.

#[derive(Default)]
struct Ledger {
    calls: HashMap<String, u32>,
    /// Calls in flight per id (more than one: a violation).
    in_flight: HashMap<String, u32>,
    published: HashMap<String, u32>,
    /// Successful publications, in the order the publisher answered Ok.
    order: Vec<String>,
    /// Ids called while a call for the same id was in flight.
    violations: Vec<String>,
}

#[derive(Clone)]
struct Recorder(Arc<(Mutex<Ledger>, watch::Sender<bool>)>);

impl Recorder {
    fn new() -> Self {
        Recorder(Arc::new((Mutex::default(), watch::channel(false).0)))
    }
    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.0.0.lock().unwrap()
    }
    /// A call for `id` begins: its number (1-based) and the guard that ends it.
    fn begin(&self, id: &str) -> (Flight, u32) {
        let mut l = self.ledger();
        let flying = l.in_flight.entry(id.to_owned()).or_default();
        *flying += 1;
        if *flying > 1 {
            l.violations.push(id.to_owned());
        }
        let n = l.calls.entry(id.to_owned()).or_default();
        *n += 1;
        let flight = Flight {
            rec: self.clone(),
            id: id.to_owned(),
            ok: false,
        };
        (flight, *n)
    }
    fn published(&self, id: &str) -> u32 {
        self.ledger().published.get(id).copied().unwrap_or(0)
    }
    fn total(&self) -> usize {
        self.ledger().order.len()
    }
    fn in_flight(&self) -> HashSet<String> {
        self.ledger().in_flight.keys().cloned().collect()
    }
    /// Lets every `Act::Gate` call through, now and later.
    fn open_gate(&self) {
        self.0.1.send_replace(true);
    }
}

/// One call in flight; dropped when it answers, fails, panics or is cancelled.
struct Flight {
    rec: Recorder,
    id: String,
    ok: bool,
}

impl Drop for Flight {
    fn drop(&mut self) {
        let mut l = self.rec.ledger();
        if let Some(n) = l.in_flight.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                l.in_flight.remove(&self.id);
            }
        }
        if self.ok {
            *l.published.entry(self.id.clone()).or_default() += 1;
            l.order.push(self.id.clone());
        }
    }
}

/// What the publisher does with one call.
#[derive(Clone, Copy, PartialEq)]
enum Act {
    /// Answers Ok after 0-2 ms.
    Ok,
    Fail,
    /// Never answers.
    Hang,
    /// Panics in `call` itself.
    PanicNow,
    /// Panics in the returned future.
    PanicLater,
    /// Answers Ok once the recorder's gate is open.
    Gate,
}

type Script = Arc<dyn Fn(&str, u32) -> Act + Send + Sync>;

#[derive(Clone)]
struct Pub {
    rec: Recorder,
    script: Script,
}

fn publisher(rec: &Recorder, script: impl Fn(&str, u32) -> Act + Send + Sync + 'static) -> Pub {
    Pub {
        rec: rec.clone(),
        script: Arc::new(script),
    }
}

const REFUSAL: &str = "refused by the test publisher";

impl Service<Message> for Pub {
    type Response = ();
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, m: Message) -> Self::Future {
        let (flight, n) = self.rec.begin(m.id());
        let act = (self.script)(m.id(), n);
        if act == Act::PanicNow {
            panic!("boom-sync on {}", m.id());
        }
        let mut gate = self.rec.0.1.subscribe();
        Box::pin(async move {
            let mut flight = flight; // the whole guard, not just its field, lives in the future
            match act {
                Act::Ok | Act::PanicNow => {
                    let mut h = DefaultHasher::new();
                    (m.id(), n).hash(&mut h);
                    tokio::time::sleep(Duration::from_micros(h.finish() % 2_000)).await;
                }
                Act::Fail => return Err(format!("{REFUSAL}: {} call {n}", m.id()).into()),
                Act::Hang => std::future::pending::<()>().await,
                Act::PanicLater => panic!("boom-async on {}", m.id()),
                Act::Gate => drop(gate.wait_for(|open| *open).await),
            }
            flight.ok = true;
            Ok(())
        })
    }
}

/// Per aggregate, the ids published out of row order (`rows`: message id -> (aggregate, row id)).
fn order_violations(order: &[String], rows: &HashMap<String, (String, i64)>) -> Vec<String> {
    let mut last: HashMap<&str, i64> = HashMap::new();
    let mut bad = Vec::new();
    for id in order {
        let (agg, row) = &rows[id];
        if let Some(prev) = last.insert(agg, *row)
            && prev >= *row
        {
            bad.push(format!("{agg}: row {row} ({id}) after row {prev}"));
        }
    }
    bad
}

#[tokio::test]
async fn the_recorder_flags_overlapping_calls_and_order_breaks() {
    let rec = Recorder::new();
    let (mut a, _) = rec.begin("x");
    let (b, n) = rec.begin("x"); // a second call while the first is in flight
    assert_eq!(n, 2);
    a.ok = true;
    drop(a);
    let (c, _) = rec.begin("x"); // overlaps `b`, still in flight
    drop((b, c));
    assert_eq!(rec.ledger().violations, ["x", "x"]);
    for _ in 0..2 {
        let (mut f, _) = rec.begin("y"); // one after the other: no violation
        f.ok = true;
    }
    assert_eq!(rec.ledger().violations, ["x", "x"]);
    assert_eq!((rec.published("x"), rec.published("y")), (1, 2));
    let rows: HashMap<String, (String, i64)> = [("p", 1), ("q", 2), ("r", 3)]
        .into_iter()
        .map(|(id, row)| (id.to_owned(), ("A".to_owned(), row)))
        .collect();
    let order = |ids: &[&str]| ids.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(order_violations(&order(&["p", "q", "r"]), &rows).is_empty());
    assert_eq!(order_violations(&order(&["p", "r", "q"]), &rows).len(), 1);
    assert_eq!(order_violations(&order(&["p", "p"]), &rows).len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Database helpers.

async fn setup(prefix: &str) -> (TestDb, PgPool, Outbox) {
    let db = TestDb::new(prefix).await;
    let pool = db.pool(6).await;
    let outbox = Outbox::new(pool.clone());
    outbox.migrate().await.unwrap();
    sqlx::raw_sql("CREATE TABLE business (note text NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    (db, pool, outbox)
}

/// A pool of up to `max` connections to `db` through `proxy`.
async fn pool_via(proxy: &FaultProxy, db: &TestDb, max: u32) -> PgPool {
    db.pool_through(proxy.addr(), max, Duration::from_secs(3))
        .await
}

/// One business transaction: a business row and `ids` as events of `aggregate`; the row ids.
async fn enqueue(
    pool: &PgPool,
    outbox: &Outbox,
    aggregate: &str,
    ids: &[impl AsRef<str>],
) -> Vec<i64> {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO business (note) VALUES ($1)")
        .bind(aggregate)
        .execute(&mut *tx)
        .await
        .unwrap();
    let mut rows = Vec::new();
    for id in ids {
        let ev = OutboxEvent::new(aggregate, Message::new(id.as_ref(), "test.event", "{}"));
        rows.push(outbox.enqueue(&mut tx, ev).await.unwrap());
    }
    tx.commit().await.unwrap();
    rows
}

async fn unpublished(pool: &PgPool) -> i64 {
    count(
        pool,
        "SELECT count(*) FROM rampart_outbox WHERE published_at IS NULL",
    )
    .await
}

/// (attempts, last_error, published) of the row of message `id`.
async fn row(pool: &PgPool, id: &str) -> (i32, Option<String>, bool) {
    sqlx::query_as(
        "SELECT attempts, last_error, published_at IS NOT NULL FROM rampart_outbox \
         WHERE message_id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Waits for `check` with a generous timeout that fails the test.
async fn eventually(what: &str, secs: u64, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const MS: fn(u64) -> Duration = Duration::from_millis;

// ---------------------------------------------------------------------------------------------
// 1. Four relays never publish one row concurrently.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_relays_never_publish_a_row_concurrently() {
    let (db, pool, outbox) = setup("outbox_four").await;
    // Transactions of 1-3 events of one aggregate, 3,000 events on 60 aggregates.
    let mut txs: Vec<(String, Vec<String>)> = Vec::new();
    let mut k = 0;
    while k < 3_000 {
        let n = (1 + txs.len() % 3).min(3_000 - k);
        let ids = (k..k + n).map(|i| format!("ev-{i:05}")).collect();
        txs.push((format!("agg-{:02}", (txs.len() * 7) % 60), ids));
        k += n;
    }
    let half = txs.len() / 2;
    let later = txs.split_off(half);
    let produce = |txs: Vec<(String, Vec<String>)>| {
        let (pool, outbox) = (pool.clone(), outbox.clone());
        async move {
            let mut tasks = Vec::new();
            for p in 0..4 {
                let mine: Vec<_> = txs.iter().skip(p).step_by(4).cloned().collect();
                let (pool, outbox) = (pool.clone(), outbox.clone());
                tasks.push(tokio::spawn(async move {
                    let mut rows = Vec::new();
                    for (agg, ids) in mine {
                        let r = enqueue(&pool, &outbox, &agg, &ids).await;
                        rows.extend(ids.into_iter().zip(r).map(|(id, r)| (id, (agg.clone(), r))));
                    }
                    rows
                }));
            }
            let mut rows = Vec::new();
            for t in tasks {
                rows.extend(t.await.unwrap());
            }
            rows
        }
    };
    let mut rows: HashMap<String, (String, i64)> = produce(txs).await.into_iter().collect();

    let rec = Recorder::new();
    let (stop, stopped) = watch::channel(false);
    let mut relays = Vec::new();
    for r in 0..4 {
        let relay = Relay::builder(Outbox::new(db.pool(3).await))
            .name(format!("r{r}"))
            .batch_size(50)
            .concurrency(8)
            .poll_interval(MS(100))
            .build(publisher(&rec, |_, _| Act::Ok))
            .unwrap();
        let mut stopped = stopped.clone();
        relays.push(tokio::spawn(relay.run_until(async move {
            let _ = stopped.wait_for(|s| *s).await;
        })));
    }
    rows.extend(produce(later).await); // while the relays run
    assert_eq!(rows.len(), 3_000);
    eventually("3,000 publications", 45, async || rec.total() >= 3_000).await;
    stop.send_replace(true);
    let mut published = 0;
    for r in relays {
        published += r.await.unwrap().published;
    }

    {
        let l = rec.ledger();
        assert!(
            l.violations.is_empty(),
            "concurrent publications: {:?}",
            l.violations
        );
        let not_once: Vec<_> = rows
            .keys()
            .filter(|id| l.published.get(*id) != Some(&1))
            .collect();
        assert!(
            not_once.is_empty(),
            "not published exactly once: {not_once:?}"
        );
        assert_eq!((l.order.len(), published), (3_000, 3_000));
        let bad = order_violations(&l.order, &rows);
        assert!(bad.is_empty(), "out of order per aggregate: {bad:?}");
    }
    assert_eq!(unpublished(&pool).await, 0);
}

// ---------------------------------------------------------------------------------------------
// 2-4. A failing, a hung and a panicking publisher.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_row_holds_back_only_its_aggregate() {
    let (_db, pool, outbox) = setup("outbox_failing").await;
    enqueue(&pool, &outbox, "A", &["a1", "a2", "a3"]).await;
    enqueue(&pool, &outbox, "B", &["b1", "b2"]).await;
    enqueue(&pool, &outbox, "C", &["c1", "c2"]).await;
    let rec = Recorder::new();
    let script = |id: &str, n| match (id, n) {
        ("a2", 1 | 2) => Act::Fail,
        _ => Act::Ok,
    };
    let mut relay = Relay::builder(outbox.clone())
        .retry_backoff(MS(10), MS(50))
        .build(publisher(&rec, script))
        .unwrap();

    let first = relay.run_once().await.unwrap();
    assert_eq!(
        (first.claimed, first.published, first.failed, first.deferred),
        (7, 5, 1, 1),
        "{first:?}"
    );
    for id in ["a1", "b1", "b2", "c1", "c2"] {
        assert_eq!(rec.published(id), 1, "{id} in the first batch");
    }
    assert_eq!(rec.ledger().calls.get("a3"), None, "a3 waits for a2");
    assert_eq!(row(&pool, "a3").await, (0, None, false));

    eventually("a3 published", 10, async || {
        relay.run_once().await.unwrap();
        row(&pool, "a3").await.2
    })
    .await;
    assert_eq!(unpublished(&pool).await, 0);
    let (attempts, last_error, published) = row(&pool, "a2").await;
    assert_eq!((attempts, published), (3, true));
    assert!(
        last_error.as_deref().unwrap_or("").contains(REFUSAL),
        "{last_error:?}"
    );
    let l = rec.ledger();
    let a: Vec<_> = l.order.iter().filter(|id| id.starts_with('a')).collect();
    assert_eq!(a, ["a1", "a2", "a3"]);
    assert!(l.published.values().all(|n| *n == 1), "{:?}", l.published);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_publisher_times_out() {
    let (_db, pool, outbox) = setup("outbox_hung").await;
    enqueue(&pool, &outbox, "H", &["h1"]).await;
    enqueue(&pool, &outbox, "O", &["o1"]).await;
    let rec = Recorder::new();
    let hang = Arc::new(AtomicBool::new(true));
    let h = hang.clone();
    let script = move |id: &str, _| match id == "h1" && h.load(Ordering::SeqCst) {
        true => Act::Hang,
        false => Act::Ok,
    };
    let mut relay = Relay::builder(outbox.clone())
        .publish_timeout(MS(200))
        .retry_backoff(MS(10), MS(50))
        .build(publisher(&rec, script))
        .unwrap();

    let first = tokio::time::timeout(Duration::from_secs(20), relay.run_once())
        .await
        .expect("the batch ends although its publisher never answers")
        .unwrap();
    assert_eq!((first.published, first.failed), (1, 1), "{first:?}");
    let (attempts, last_error, published) = row(&pool, "h1").await;
    assert_eq!((attempts, published), (1, false));
    let e = last_error.unwrap_or_default().to_lowercase();
    assert!(e.contains("timeout") || e.contains("timed out"), "{e}");
    assert!(rec.in_flight().is_empty(), "the hung call was dropped");

    hang.store(false, Ordering::SeqCst);
    eventually("h1 published", 10, async || {
        relay.run_once().await.unwrap();
        rec.published("h1") == 1
    })
    .await;
    assert_eq!(row(&pool, "h1").await.0, 2);
    assert_eq!(unpublished(&pool).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_publisher_is_a_failed_attempt() {
    let (_db, pool, outbox) = setup("outbox_panic").await;
    enqueue(&pool, &outbox, "P", &["p1", "p2"]).await;
    let rec = Recorder::new();
    let script = |id: &str, n| match (id, n) {
        ("p1", 1) => Act::PanicNow,
        ("p1", 2) => Act::PanicLater,
        _ => Act::Ok,
    };
    let mut relay = Relay::builder(outbox.clone())
        .retry_backoff(MS(10), MS(50))
        .build(publisher(&rec, script))
        .unwrap();
    let mut failed = 0;
    eventually("p2 published", 10, async || {
        failed += relay.run_once().await.expect("the relay survives").failed;
        rec.published("p2") == 1
    })
    .await;
    assert_eq!(failed, 2);
    assert_eq!(rec.ledger().order, ["p1", "p2"]);
    let (attempts, last_error, published) = row(&pool, "p1").await;
    assert_eq!((attempts, published), (3, true));
    assert!(last_error.unwrap_or_default().contains("boom-async"));
}

// ---------------------------------------------------------------------------------------------
// 5-7. PostgreSQL cut mid-batch, a cancelled batch, the listener cut.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_cut_mid_batch() {
    let (db, pool, outbox) = setup("outbox_cut").await;
    for i in 0..12 {
        enqueue(&pool, &outbox, &format!("agg-{i}"), &[format!("c{i:02}")]).await;
    }
    let proxy = FaultProxy::start("127.0.0.1:5432").await;
    let rec = Recorder::new();
    let mut relay = Relay::builder(Outbox::new(pool_via(&proxy, &db, 2).await))
        .batch_size(5)
        .concurrency(8)
        .build(publisher(&rec, |_, _| Act::Gate))
        .unwrap();
    let batch = tokio::spawn(async move {
        let r = relay.run_once().await;
        (relay, r)
    });
    eventually("the first batch in flight", 10, async || {
        rec.in_flight().len() == 5
    })
    .await;
    let first_batch = rec.in_flight();
    proxy.cut();
    rec.open_gate();
    let (mut relay, r) = batch.await.unwrap();
    assert!(matches!(r, Err(OutboxError::Database(_))), "{r:?}");

    let summary = relay.drain().await.expect("drain after the cut");
    assert_eq!(summary.published, 12, "{summary:?}");
    assert_eq!(unpublished(&pool).await, 0);
    let l = rec.ledger();
    assert!(l.violations.is_empty());
    let twice: HashSet<String> = l
        .published
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| id.clone())
        .collect();
    assert!(
        twice.is_subset(&first_batch),
        "republished {twice:?}, first batch {first_batch:?}"
    );
    assert!(l.published.values().all(|n| *n <= 2));
    assert_eq!(l.published.len(), 12, "nothing lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_batch_rolls_back() {
    let (db, pool, outbox) = setup("outbox_cancel").await;
    for i in 0..4 {
        enqueue(&pool, &outbox, &format!("agg-{i}"), &[format!("k{i}")]).await;
    }
    let (stuck, other) = (Recorder::new(), Recorder::new());
    let mut first = Relay::builder(outbox.clone())
        .build(publisher(&stuck, |_, _| Act::Gate))
        .unwrap();
    let mut second = Relay::builder(Outbox::new(db.pool(2).await))
        .build(publisher(&other, |_, _| Act::Ok))
        .unwrap();
    {
        let batch = first.run_once();
        tokio::pin!(batch);
        tokio::select! {
            r = &mut batch => panic!("the batch ended with its publisher blocked: {r:?}"),
            _ = eventually("4 in flight", 10, async || stuck.in_flight().len() == 4) => {}
        }
    } // the batch is dropped mid-call
    assert!(stuck.in_flight().is_empty() && stuck.total() == 0);
    let rows: Vec<(i32, bool)> =
        sqlx::query_as("SELECT attempts, published_at IS NOT NULL FROM rampart_outbox")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(rows, vec![(0, false); 4], "nothing marked");
    let mut published = 0;
    eventually("another relay publishes the rows", 10, async || {
        published += second.run_once().await.unwrap().published;
        published == 4
    })
    .await;
    assert!(other.ledger().published.values().all(|n| *n == 1));
    assert_eq!(unpublished(&pool).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_cut_then_restored_still_publishes() {
    let (db, pool, outbox) = setup("outbox_listen").await;
    let proxy = FaultProxy::start("127.0.0.1:5432").await;
    let rec = Recorder::new();
    let relay = Relay::builder(Outbox::new(pool_via(&proxy, &db, 3).await))
        .poll_interval(Duration::from_secs(3600)) // only a notification or a reconnect wakes it
        .listen(true)
        .error_delay(MS(100))
        .build(publisher(&rec, |_, _| Act::Ok))
        .unwrap();
    let (stop, mut stopped) = watch::channel(false);
    let run = tokio::spawn(relay.run_until(async move {
        let _ = stopped.wait_for(|s| *s).await;
    }));
    enqueue(&pool, &outbox, "L", &["before"]).await;
    // Marked too: the relay is idle, waiting for a notification, when the cut comes.
    eventually("the event before the cut", 30, async || {
        rec.published("before") == 1 && unpublished(&pool).await == 0
    })
    .await;

    let accepted = proxy.accepted();
    proxy.refuse(true);
    proxy.cut();
    enqueue(&pool, &outbox, "L", &["during"]).await; // its notification is lost
    tokio::time::sleep(MS(500)).await; // the relay meets the outage
    assert_eq!(
        rec.published("during"),
        0,
        "the relay cannot reach PostgreSQL"
    );
    proxy.refuse(false);
    // Published and marked (a batch whose mark fails on the cut publishes it again).
    eventually("the event enqueued while cut", 30, async || {
        rec.published("during") >= 1 && unpublished(&pool).await == 0
    })
    .await;
    assert!(proxy.accepted() > accepted, "the relay reconnected");
    stop.send_replace(true);
    let summary = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .unwrap()
        .unwrap();
    // Not `== 2`: a COMMIT that reaches the server just before a cut is published yet
    // counted as a database error.
    assert!(summary.published >= 1, "{summary:?}");
}

// ---------------------------------------------------------------------------------------------
// 8. Bad input and settings.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_clear_error_and_writes_nothing() {
    let (_db, pool, outbox) = setup("outbox_bad").await;
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO business (note) VALUES ('kept')")
        .execute(&mut *tx)
        .await
        .unwrap();
    let ev = |agg: &str, id: &str, kind: &str| OutboxEvent::new(agg, Message::new(id, kind, "{}"));
    let (long_agg, long_id) = ("a".repeat(256), "i".repeat(MAX_ID_LEN + 1));
    let cases = [
        ("aggregate", ev("", "e1", "k")),
        ("aggregate", ev(&long_agg, "e2", "k")),
        ("id", ev("A", "", "k")),
        ("id", ev("A", &long_id, "k")),
        ("kind", ev("A", "e3", "a\0b")),
    ];
    for (field, event) in cases {
        match outbox.enqueue(&mut tx, event).await {
            Err(OutboxError::InvalidEvent(why)) => assert!(why.contains(field), "{field}: {why}"),
            other => panic!("{field}: {other:?}"),
        }
    }
    sqlx::query("INSERT INTO business (note) VALUES ('still usable')")
        .execute(&mut *tx)
        .await
        .expect("the transaction is still usable");
    tx.commit().await.unwrap();
    let counts: (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM business), (SELECT count(*) FROM rampart_outbox)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(counts, (2, 0), "the business rows, and no event");

    enqueue(&pool, &outbox, "A", &["dup"]).await;
    let mut tx = pool.begin().await.unwrap();
    let again = outbox.enqueue(&mut tx, ev("B", "dup", "k")).await;
    assert!(
        matches!(&again, Err(OutboxError::DuplicateId(id)) if id == "dup"),
        "{again:?}"
    );
    drop(tx);

    let p = publisher(&Recorder::new(), |_, _| Act::Ok);
    let b = || Relay::builder(outbox.clone());
    let (day, max) = (Duration::from_secs(86_400), Duration::MAX);
    let refused = [
        ("batch_size", b().batch_size(0)),
        ("batch_size", b().batch_size(10_001)),
        ("concurrency", b().concurrency(0)),
        ("concurrency", b().concurrency(1_025)),
        ("publish_timeout", b().publish_timeout(Duration::ZERO)),
        ("publish_timeout", b().publish_timeout(max)),
        ("poll_interval", b().poll_interval(Duration::ZERO)),
        ("poll_interval", b().poll_interval(max)),
        ("retry_backoff", b().retry_backoff(MS(2), MS(1))),
        ("retry_backoff", b().retry_backoff(Duration::ZERO, MS(1))),
        ("retry_backoff", b().retry_backoff(MS(1), max)),
        ("error_delay", b().error_delay(Duration::ZERO)),
        ("error_delay", b().error_delay(max)),
        ("metrics_interval", b().metrics_interval(Duration::ZERO)),
        ("metrics_interval", b().metrics_interval(max)),
        ("name", b().name("")),
        ("name", b().name("n".repeat(129))),
    ];
    for (setting, builder) in refused {
        let e = builder.build(p.clone()).expect_err(setting);
        assert_eq!(e.setting(), Some(setting), "{e}");
        assert!(e.to_string().contains(setting), "{e}");
    }
    // The bounds themselves are accepted.
    b().batch_size(10_000)
        .concurrency(1_024)
        .publish_timeout(MS(1))
        .poll_interval(MS(10))
        .retry_backoff(MS(1), day)
        .error_delay(Duration::from_secs(3600))
        .metrics_interval(MS(100))
        .name("n".repeat(128))
        .build(p.clone())
        .expect("the bounds are valid");

    for name in [
        "",
        "Bad-Name",
        "a.b.c",
        "t; DROP TABLE business",
        "1st",
        "é",
    ] {
        let e = Outbox::builder(pool.clone())
            .table(name)
            .build()
            .expect_err(name);
        assert_eq!(e.setting(), Some("table"), "{name:?}: {e}");
    }
}

// ---------------------------------------------------------------------------------------------
// 9. Readiness.

async fn probe(ready: &Readiness) -> (u16, serde_json::Value) {
    let res = tokio::time::timeout(Duration::from_secs(10), ready.response())
        .await
        .expect("the probe answers (bounded by the store timeout)");
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

fn backlog_status(json: &serde_json::Value) -> &str {
    json["checks"]["rampart_outbox:backlogAge"][0]["status"]
        .as_str()
        .unwrap_or_else(|| panic!("no rampart_outbox:backlogAge in {json}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_backlog_age() {
    let (db, pool, outbox) = setup("outbox_ready").await;
    enqueue(&pool, &outbox, "R", &["r1"]).await;
    sqlx::query("UPDATE rampart_outbox SET created_at = now() - interval '1 hour'")
        .execute(&pool)
        .await
        .unwrap();
    let check = |o: &Outbox| {
        Readiness::new()
            .outbox(OutboxCheck::new(o.clone(), Duration::from_secs(1)))
            .store_timeout(MS(500))
    };
    let ready = check(&outbox);
    let (status, json) = probe(&ready).await;
    assert_eq!((status, backlog_status(&json)), (503, "fail"), "{json}");

    let mut relay = Relay::builder(outbox.clone())
        .build(publisher(&Recorder::new(), |_, _| Act::Ok))
        .unwrap();
    assert_eq!(relay.drain().await.unwrap().published, 1);
    let (status, json) = probe(&ready).await;
    assert_eq!((status, backlog_status(&json)), (200, "pass"), "{json}");

    let proxy = FaultProxy::start("127.0.0.1:5432").await;
    let ready = check(&Outbox::new(pool_via(&proxy, &db, 2).await));
    assert_eq!(probe(&ready).await.0, 200);
    proxy.refuse(true);
    proxy.cut();
    let (status, json) = probe(&ready).await;
    assert_eq!(
        (status, backlog_status(&json)),
        (503, "fail"),
        "refused: {json}"
    );
    proxy.refuse(false);
    proxy.stall(true); // a silent partition: only the store timeout answers
    let (status, json) = probe(&ready).await;
    assert_eq!(
        (status, backlog_status(&json)),
        (503, "fail"),
        "stalled: {json}"
    );
}

// ---------------------------------------------------------------------------------------------
// 10. Metrics, read back from a global Prometheus recorder (relays elsewhere in this binary
// have other names). Not the debugging recorder: its snapshots reset counters and gauges, so it
// cannot be polled while a relay runs.

fn prometheus() -> &'static PrometheusHandle {
    static H: OnceLock<PrometheusHandle> = OnceLock::new();
    H.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::set_global_recorder(recorder).expect("the only recorder of this binary");
        handle
    })
}

/// The value of `name{outbox="<outbox>"}` in the rendered exposition.
fn metric(name: &str, outbox: &str) -> Option<f64> {
    let series = format!("{name}{{outbox=\"{outbox}\"}} ");
    let text = prometheus().render();
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_published_and_failed() {
    prometheus();
    let (_db, pool, outbox) = setup("outbox_metrics").await;
    enqueue(&pool, &outbox, "M", &["m1", "m2"]).await;
    enqueue(&pool, &outbox, "N", &["n1", "n2", "n3"]).await;
    let rec = Recorder::new();
    let relay = Relay::builder(outbox.clone())
        .name("metered")
        .metrics_interval(MS(100))
        .poll_interval(MS(100))
        // Long enough for the gauges to show the failed row waiting.
        .retry_backoff(Duration::from_millis(1_500), Duration::from_secs(2))
        .build(publisher(&rec, |id, n| match (id, n) {
            ("m2", 1) => Act::Fail,
            _ => Act::Ok,
        }))
        .unwrap();
    let (stop, mut stopped) = watch::channel(false);
    let run = tokio::spawn(relay.run_until(async move {
        let _ = stopped.wait_for(|s| *s).await;
    }));
    let m = |name| metric(name, "metered");
    eventually("the backlog gauge shows the failed row", 10, async || {
        m(metric_names::BACKLOG) == Some(1.0)
            && m(metric_names::OLDEST_AGE).is_some_and(|a| a > 0.0)
    })
    .await;
    eventually("everything published", 10, async || rec.total() == 5).await;
    eventually("the counters and gauges after the drain", 10, async || {
        m(metric_names::PUBLISHED) == Some(5.0)
            && m(metric_names::FAILED) == Some(1.0)
            && m(metric_names::BACKLOG) == Some(0.0)
            && m(metric_names::OLDEST_AGE) == Some(0.0)
    })
    .await;
    stop.send_replace(true);
    run.await.unwrap();
}
