//! The transactional PostgreSQL inbox and the dead-letter table, against the machine's real
//! PostgreSQL (each test its own database): each message's effect is applied exactly once under
//! duplicate deliveries, handler errors, panics, cancellation, cut connections and killed
//! backends; dead letters are stored and replayed once.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use sqlx::{Connection, PgConnection, PgPool, postgres::PgPoolOptions};
use tokio::sync::{Notify, mpsc};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_rampart::{
    BoxError,
    message::{
        DeadLetter, DeadLetterReason, DeadLetterSink, Message, Poison,
        consumer::{KeyReused, RedeliverLater},
        inbox::{Inboxed, business_key},
        postgres::{PgDeadLetters, PgInboxError, PgInboxLayer, PgTx, ReplayError, TxMessage},
    },
};

mod common;

use common::{
    postgres::{TestDb, server_url},
    proxy::FaultProxy,
};

type Outcome = Result<Inboxed<()>, BoxError>;

/// A database with the inbox migrated and an `effects` table (no unique key: a second
/// application shows as a second row).
async fn setup(prefix: &str, max: u32) -> (TestDb, PgPool, PgInboxLayer) {
    let db = TestDb::new(prefix).await;
    let pool = db.pool(max).await;
    let layer = PgInboxLayer::new(pool.clone());
    layer.migrate().await.unwrap();
    sqlx::raw_sql("CREATE TABLE effects (message_id text NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    (db, pool, layer)
}

async fn write_effect(tx: &mut PgTx, m: &Message) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO effects (message_id) VALUES ($1)")
        .bind(m.id())
        .execute(&mut **tx)
        .await
        .map(drop)
}

/// The plain handler: one effect row per run.
fn effect_handler()
-> impl Service<TxMessage, Response = (PgTx, ()), Error = BoxError, Future: Send> + Clone + Send {
    service_fn(|TxMessage { message, mut tx }| async move {
        write_effect(&mut tx, &message).await?;
        Ok::<_, BoxError>((tx, ()))
    })
}

/// The plain handler, holding its transaction open a little after its effect.
fn slow_effect_handler()
-> impl Service<TxMessage, Response = (PgTx, ()), Error = BoxError, Future: Send> + Clone + Send {
    service_fn(|TxMessage { message, mut tx }| async move {
        write_effect(&mut tx, &message).await?;
        tokio::time::sleep(Duration::from_millis(5)).await;
        Ok::<_, BoxError>((tx, ()))
    })
}

async fn count(pool: &PgPool, sql: &str, id: &str) -> i64 {
    sqlx::query_scalar(sql)
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn effects(pool: &PgPool, id: &str) -> i64 {
    count(
        pool,
        "SELECT count(*) FROM effects WHERE message_id = $1",
        id,
    )
    .await
}

async fn inbox_rows(pool: &PgPool, id: &str) -> i64 {
    count(
        pool,
        "SELECT count(*) FROM rampart_inbox WHERE key = $1",
        id,
    )
    .await
}

/// Polls `sql` (one bigint) on a connection of its own until it returns `want`.
async fn until(db: &TestDb, sql: &str, want: i64) {
    let mut conn = PgConnection::connect(db.url()).await.unwrap();
    for _ in 0..2000 {
        let got: i64 = sqlx::query_scalar(sql)
            .bind(db.name())
            .fetch_one(&mut conn)
            .await
            .unwrap();
        if got == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("never reached {want}: {sql}");
}

/// Backends of this database waiting on a row lock.
const LOCK_WAITERS: &str =
    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'";
/// Backends of this database inside a transaction (other than the asking one).
const IN_TX: &str = "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 \
     AND pid <> pg_backend_pid() AND xact_start IS NOT NULL";

async fn backend_gone(db: &TestDb, pid: i32) {
    let sql = format!("SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid = {pid}");
    until(db, &sql, 0).await;
}

fn msg(id: &str) -> Message {
    Message::new(id, "order.placed", format!("{{\"id\":\"{id}\"}}"))
}

#[tokio::test]
async fn sequential_duplicates_apply_once() {
    let (_db, pool, layer) = setup("inbox_seq", 4).await;
    let mut inbox = layer.layer(effect_handler());
    let m = msg("m-1");
    let first = inbox.ready().await.unwrap().call(m.clone()).await.unwrap();
    assert_eq!(first, Inboxed::Ran(()));
    for n in 2..5 {
        let again = inbox
            .ready()
            .await
            .unwrap()
            .call(m.clone().with_deliveries(n));
        assert_eq!(again.await.unwrap(), Inboxed::Duplicate);
    }
    assert_eq!(effects(&pool, "m-1").await, 1);
    assert_eq!(inbox_rows(&pool, "m-1").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_concurrent_deliveries_apply_once() {
    let (_db, pool, layer) = setup("inbox_conc", 10).await;
    // A slow effect: the other deliveries arrive while the first is uncommitted.
    let inbox = layer.layer(slow_effect_handler());
    for round in 0..10 {
        let id = format!("c-{round}");
        let barrier = Arc::new(tokio::sync::Barrier::new(8));
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (inbox, barrier, m) = (inbox.clone(), barrier.clone(), msg(&id));
                tokio::spawn(async move {
                    barrier.wait().await;
                    inbox.oneshot(m).await
                })
            })
            .collect();
        let mut processed = 0;
        for t in tasks {
            if t.await.unwrap().unwrap() == Inboxed::Ran(()) {
                processed += 1;
            }
        }
        assert_eq!(processed, 1, "round {round}");
        assert_eq!(effects(&pool, &id).await, 1, "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_duplicate_runs_when_the_first_rolls_back() {
    let (db, pool, layer) = setup("inbox_block", 4).await;
    let (entered, mut entered_rx) = mpsc::unbounded_channel();
    let release = Arc::new(Notify::new());
    let calls = Arc::new(Mutex::new(0u32));
    let (r, c) = (release.clone(), calls.clone());
    let inbox = layer.layer(service_fn(move |TxMessage { message, mut tx }| {
        let (entered, release, calls) = (entered.clone(), r.clone(), c.clone());
        async move {
            write_effect(&mut tx, &message).await?;
            let first = {
                let mut n = calls.lock().unwrap();
                *n += 1;
                *n == 1
            };
            if first {
                entered.send(()).unwrap();
                release.notified().await;
                return Err::<(PgTx, ()), BoxError>("first delivery fails".into());
            }
            Ok((tx, ()))
        }
    }));
    let first = tokio::spawn(inbox.clone().oneshot(msg("b-1")));
    entered_rx.recv().await.unwrap();
    let second = tokio::spawn(inbox.clone().oneshot(msg("b-1")));
    // The second waits on the first's uncommitted inbox row.
    until(&db, LOCK_WAITERS, 1).await;
    release.notify_one();
    assert!(first.await.unwrap().is_err());
    assert_eq!(second.await.unwrap().unwrap(), Inboxed::Ran(()));
    assert_eq!(*calls.lock().unwrap(), 2);
    assert_eq!(effects(&pool, "b-1").await, 1);
}

#[tokio::test]
async fn a_handler_error_rolls_back_the_effect_and_the_row() {
    let (_db, pool, layer) = setup("inbox_err", 4).await;
    let failing = layer.layer(service_fn(|TxMessage { message, mut tx }| async move {
        write_effect(&mut tx, &message).await?;
        Err::<(PgTx, ()), BoxError>(Box::new(Poison::new("cannot apply")))
    }));
    let err = failing.oneshot(msg("e-1")).await.unwrap_err();
    // The handler's error comes back unchanged.
    assert!(err.is::<Poison>(), "{err}");
    assert_eq!(effects(&pool, "e-1").await, 0);
    assert_eq!(inbox_rows(&pool, "e-1").await, 0);
    let redelivery = layer
        .layer(effect_handler())
        .oneshot(msg("e-1").with_deliveries(2));
    assert_eq!(redelivery.await.unwrap(), Inboxed::Ran(()));
    assert_eq!(effects(&pool, "e-1").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_panic_rolls_back() {
    let (_db, pool, layer) = setup("inbox_panic", 4).await;
    let panicking = layer.layer(service_fn(|TxMessage { message, mut tx }| async move {
        write_effect(&mut tx, &message).await?;
        if message.deliveries() < 100 {
            panic!("handler bug");
        }
        Ok::<_, BoxError>((tx, ()))
    }));
    let joined = tokio::spawn(panicking.oneshot(msg("p-1"))).await;
    assert!(joined.unwrap_err().is_panic());
    assert_eq!(effects(&pool, "p-1").await, 0);
    assert_eq!(inbox_rows(&pool, "p-1").await, 0);
    let redelivery = layer
        .layer(effect_handler())
        .oneshot(msg("p-1").with_deliveries(2));
    assert_eq!(redelivery.await.unwrap(), Inboxed::Ran(()));
    assert_eq!(effects(&pool, "p-1").await, 1);
}

/// Drops the inbox's future while it waits for a connection, on the inbox insert, inside the
/// handler and on its own check before COMMIT: nothing commits, and the redelivery runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_at_each_stage_commits_nothing() {
    let (db, pool, layer) = setup("inbox_cancel", 1).await;
    let pending = Duration::from_millis(50);
    let inbox = layer.layer(effect_handler());

    // 1. Waiting for a connection (the pool's only one is taken).
    let held = pool.acquire().await.unwrap();
    let fut = inbox.clone().oneshot(msg("x-begin"));
    assert!(tokio::time::timeout(pending, fut).await.is_err());
    drop(held);

    // 2. On the inbox insert, blocked by another transaction holding the key.
    let mut blocker = PgConnection::connect(db.url()).await.unwrap();
    sqlx::raw_sql(
        "BEGIN; INSERT INTO rampart_inbox (key, message_id, kind, fingerprint) \
         VALUES ('x-insert', 'x-insert', 'k', '\\x00')",
    )
    .execute(&mut blocker)
    .await
    .unwrap();
    let mut fut = Box::pin(inbox.clone().oneshot(msg("x-insert")));
    tokio::select! {
        _ = &mut fut => panic!("the insert cannot finish while the key is held"),
        _ = until(&db, LOCK_WAITERS, 1) => {}
    }
    drop(fut);
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut blocker)
        .await
        .unwrap();

    // 3. Inside the handler, after its effect.
    let (entered, mut entered_rx) = mpsc::unbounded_channel();
    let stuck = layer.layer(service_fn(move |TxMessage { message, mut tx }| {
        let entered = entered.clone();
        async move {
            write_effect(&mut tx, &message).await?;
            entered.send(()).unwrap();
            std::future::pending::<()>().await;
            Ok::<_, BoxError>((tx, ()))
        }
    }));
    let mut fut = Box::pin(stuck.oneshot(msg("x-handler")));
    tokio::select! {
        _ = &mut fut => unreachable!(),
        _ = entered_rx.recv() => {}
    }
    drop(fut);

    // Everything dropped is rolled back; each message then runs exactly once.
    until(&db, IN_TX, 0).await;
    for id in ["x-begin", "x-insert", "x-handler"] {
        assert_eq!(effects(&pool, id).await, 0, "{id}");
        assert_eq!(inbox_rows(&pool, id).await, 0, "{id}");
        let again = inbox.clone().oneshot(msg(id).with_deliveries(2)).await;
        assert_eq!(again.unwrap(), Inboxed::Ran(()), "{id}");
        assert_eq!(effects(&pool, id).await, 1, "{id}");
    }
}

/// The network stalls after the handler's effect: the inbox's check and COMMIT never reach the
/// server; the future is dropped there and the connection then dies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_before_commit_reaches_the_server_commits_nothing() {
    let db = TestDb::new("inbox_stall").await;
    let proxy = Arc::new(FaultProxy::start(upstream()).await);
    let pool = through(&proxy, &db, 2).await;
    let layer = PgInboxLayer::new(pool.clone());
    layer.migrate().await.unwrap();
    sqlx::raw_sql("CREATE TABLE effects (message_id text NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let (pid_tx, mut pid_rx) = mpsc::unbounded_channel();
    let p = proxy.clone();
    let stalling = layer.layer(service_fn(move |TxMessage { message, mut tx }| {
        let (pid_tx, proxy) = (pid_tx.clone(), p.clone());
        async move {
            let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                .fetch_one(&mut *tx)
                .await?;
            write_effect(&mut tx, &message).await?;
            pid_tx.send(pid).unwrap();
            proxy.stall(true);
            // The proxy checks for a stall every 5 ms: let it see this one first (with room
            // for a loaded machine).
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok::<_, BoxError>((tx, ()))
        }
    }));
    let fut = stalling.oneshot(msg("s-1"));
    assert!(
        tokio::time::timeout(Duration::from_millis(500), fut)
            .await
            .is_err()
    );
    let pid = pid_rx.recv().await.unwrap();
    proxy.stall(false);
    proxy.cut();
    backend_gone(&db, pid).await;
    let direct = db.pool(1).await;
    assert_eq!(effects(&direct, "s-1").await, 0);
    assert_eq!(inbox_rows(&direct, "s-1").await, 0);
    let again = layer.layer(effect_handler()).oneshot(msg("s-1")).await;
    assert_eq!(again.unwrap(), Inboxed::Ran(()));
    assert_eq!(effects(&direct, "s-1").await, 1);
}

/// Futures dropped after a spread of delays land at every await of the inbox, COMMIT
/// included: a message's effect is committed exactly when its inbox row is, and the
/// redeliveries then leave exactly one effect per message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_at_any_point_the_row_never_commits_without_the_effect() {
    let (db, pool, layer) = setup("inbox_sweep", 4).await;
    let inbox = layer.layer(effect_handler());
    let ids: Vec<String> = (0..60).map(|k| format!("w-{k}")).collect();
    for (k, id) in ids.iter().enumerate() {
        let after = Duration::from_micros(k as u64 * 60);
        let _ = tokio::time::timeout(after, inbox.clone().oneshot(msg(id))).await;
    }
    until(&db, IN_TX, 0).await;
    let mut committed = 0;
    for id in &ids {
        let (e, r) = (effects(&pool, id).await, inbox_rows(&pool, id).await);
        assert_eq!(e, r, "{id}: effect and inbox row disagree");
        committed += r;
    }
    assert!(
        committed < ids.len() as i64,
        "no future was dropped mid-flight"
    );
    for id in &ids {
        inbox
            .clone()
            .oneshot(msg(id).with_deliveries(2))
            .await
            .unwrap();
        assert_eq!(effects(&pool, id).await, 1, "{id}");
    }
}

fn upstream() -> String {
    let url = server_url();
    let host = url.rsplit('@').next().unwrap();
    host.trim_start_matches("postgres://").to_owned()
}

async fn through(proxy: &FaultProxy, db: &TestDb, max: u32) -> PgPool {
    db.pool_through(proxy.addr(), max, Duration::from_secs(5))
        .await
}

/// A handler that reports its backend after its effect and waits for `go`; then it runs one
/// more statement (`more`) or answers at once.
fn interrupted_handler(
    more: bool,
    pids: mpsc::UnboundedSender<i32>,
    go: Arc<Notify>,
) -> impl Service<TxMessage, Response = (PgTx, ()), Error = BoxError, Future: Send> + Clone + Send {
    service_fn(move |TxMessage { message, mut tx }| {
        let (pids, go) = (pids.clone(), go.clone());
        async move {
            let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                .fetch_one(&mut *tx)
                .await?;
            write_effect(&mut tx, &message).await?;
            pids.send(pid).unwrap();
            go.notified().await;
            if more {
                sqlx::query("SELECT 1").execute(&mut *tx).await?;
            }
            Ok::<_, BoxError>((tx, ()))
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_mid_handler_applies_nothing_then_runs_once() {
    let db = TestDb::new("inbox_cut").await;
    let proxy = FaultProxy::start(upstream()).await;
    let pool = through(&proxy, &db, 2).await;
    let layer = PgInboxLayer::new(pool.clone());
    layer.migrate().await.unwrap();
    sqlx::raw_sql("CREATE TABLE effects (message_id text NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let direct = db.pool(1).await;
    // The handler's next statement fails, or (when it has none) the inbox's own check does.
    for (more, id) in [(true, "cut-1"), (false, "cut-2")] {
        let (pids, mut pid_rx) = mpsc::unbounded_channel();
        let go = Arc::new(Notify::new());
        let inbox = layer.layer(interrupted_handler(more, pids, go.clone()));
        let call = tokio::spawn(inbox.oneshot(msg(id)));
        let pid = pid_rx.recv().await.unwrap();
        let before = proxy.accepted();
        proxy.cut();
        backend_gone(&db, pid).await;
        go.notify_one();
        let err = call.await.unwrap().unwrap_err();
        if !more {
            // The inbox's own check failed: the store's fault, redelivered later.
            let later = err
                .downcast_ref::<RedeliverLater>()
                .expect("redeliver later");
            assert_eq!(later.after, Duration::from_secs(5));
            let cause = std::error::Error::source(later).unwrap();
            let cause = cause.downcast_ref::<PgInboxError>();
            assert!(matches!(cause, Some(PgInboxError::Store(_))), "{err}");
        }
        assert_eq!(effects(&direct, id).await, 0, "{id}");
        assert_eq!(inbox_rows(&direct, id).await, 0, "{id}");
        let again = layer
            .layer(effect_handler())
            .oneshot(msg(id).with_deliveries(2));
        assert_eq!(again.await.unwrap(), Inboxed::Ran(()), "{id}");
        assert!(proxy.accepted() > before, "the pool reconnected");
        assert_eq!(effects(&direct, id).await, 1, "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_backend_mid_handler_applies_nothing_then_runs_once() {
    let (db, pool, layer) = setup("inbox_kill", 2).await;
    let (pids, mut pid_rx) = mpsc::unbounded_channel();
    let go = Arc::new(Notify::new());
    let inbox = layer.layer(interrupted_handler(true, pids, go.clone()));
    let call = tokio::spawn(inbox.oneshot(msg("k-1")));
    let pid = pid_rx.recv().await.unwrap();
    let mut admin = PgConnection::connect(db.url()).await.unwrap();
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert!(killed);
    backend_gone(&db, pid).await;
    go.notify_one();
    assert!(call.await.unwrap().is_err());
    assert_eq!(effects(&pool, "k-1").await, 0);
    assert_eq!(inbox_rows(&pool, "k-1").await, 0);
    let again = layer
        .layer(effect_handler())
        .oneshot(msg("k-1").with_deliveries(2));
    assert_eq!(again.await.unwrap(), Inboxed::Ran(()));
    assert_eq!(effects(&pool, "k-1").await, 1);
}

#[tokio::test]
async fn a_handler_ending_the_transaction_itself_is_caught() {
    let (_db, pool, layer) = setup("inbox_ended", 4).await;
    // It commits through the transaction: its effect and the key are in (consistent), but the
    // inbox reports the bug; the redelivery is a duplicate.
    let committing = layer.layer(service_fn(|TxMessage { message, mut tx }| async move {
        write_effect(&mut tx, &message).await?;
        sqlx::query("COMMIT").execute(&mut *tx).await?;
        Ok::<_, BoxError>((tx, ()))
    }));
    let err = committing.oneshot(msg("t-1")).await.unwrap_err();
    assert!(matches!(
        err.downcast_ref::<PgInboxError>(),
        Some(PgInboxError::TransactionEnded)
    ));
    assert_eq!(
        (effects(&pool, "t-1").await, inbox_rows(&pool, "t-1").await),
        (1, 1)
    );
    let again = layer.layer(effect_handler()).oneshot(msg("t-1")).await;
    assert_eq!(again.unwrap(), Inboxed::Duplicate);

    // It answers with a transaction of its own: the inbox row went with the dropped one, so
    // committing the other would apply the effect without the key. Nothing commits.
    let p = pool.clone();
    let swapping = layer.layer(service_fn(move |TxMessage { message, tx }| {
        let pool = p.clone();
        async move {
            drop(tx);
            let mut other = pool.begin().await?;
            write_effect(&mut other, &message).await?;
            Ok::<_, BoxError>((other, ()))
        }
    }));
    let err = swapping.oneshot(msg("t-2")).await.unwrap_err();
    assert!(matches!(
        err.downcast_ref::<PgInboxError>(),
        Some(PgInboxError::TransactionEnded)
    ));
    assert_eq!(
        (effects(&pool, "t-2").await, inbox_rows(&pool, "t-2").await),
        (0, 0)
    );
}

#[tokio::test]
async fn a_reused_key_with_another_payload_is_refused() {
    let (db, pool, layer) = setup("inbox_reuse", 4).await;
    let inbox = layer.layer(effect_handler());
    inbox.clone().oneshot(msg("r-1")).await.unwrap();
    let other = Message::new("r-1", "order.placed", "something else");
    let err = inbox.clone().oneshot(other.clone()).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<KeyReused>().map(KeyReused::key),
        Some("r-1")
    );
    // Headers and delivery counts are not part of the message's identity.
    let same = msg("r-1")
        .with_header("traceparent", "00-x")
        .with_deliveries(3);
    assert_eq!(
        inbox.clone().oneshot(same).await.unwrap(),
        Inboxed::Duplicate
    );
    // Without the check, the other message is a plain duplicate.
    let lax = PgInboxLayer::builder(db.pool(2).await)
        .verify_payload(false)
        .build()
        .unwrap()
        .layer(effect_handler());
    assert_eq!(lax.oneshot(other).await.unwrap(), Inboxed::Duplicate);
    assert_eq!(effects(&pool, "r-1").await, 1);
    // An unusable key is poison, and nothing runs.
    let empty = inbox.oneshot(msg("")).await.unwrap_err();
    assert!(Poison::is_in(&*empty));
    assert_eq!(effects(&pool, "").await, 0);
}

#[tokio::test]
async fn business_keys_dedupe_across_message_ids() {
    let (_db, pool, _) = setup("inbox_bkey", 4).await;
    let layer = PgInboxLayer::builder(pool.clone())
        .table("billing.inbox")
        .key(business_key)
        .build()
        .unwrap();
    layer.migrate().await.unwrap();
    let inbox = layer.layer(effect_handler());
    let a = Message::new("a", "order.placed", "{}").with_correlation_id("order-7");
    // The same event, published again under another id.
    let b = Message::new("b", "order.placed", "{}").with_correlation_id("order-7");
    let c = Message::new("c", "order.paid", "{}").with_correlation_id("order-7");
    let d = Message::new("d", "order.placed", r#"{"id":"a"}"#); // keyed by id
    let outcomes: Vec<Outcome> =
        futures_util::future::join_all([a, b, c, d].map(|m| inbox.clone().oneshot(m))).await;
    let outcomes: Vec<_> = outcomes.into_iter().map(Result::unwrap).collect();
    assert_eq!(outcomes.iter().filter(|o| o.is_duplicate()).count(), 1);
    let keys: Vec<String> = sqlx::query_scalar("SELECT key FROM billing.inbox ORDER BY key")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(keys, ["d", "order-7:order.paid", "order-7:order.placed"]);
}

#[tokio::test]
async fn purge_removes_old_rows_and_keeps_recent_ones() {
    let (_db, pool, layer) = setup("inbox_purge", 4).await;
    let inbox = layer.layer(effect_handler());
    for k in 0..5 {
        inbox.clone().oneshot(msg(&format!("u-{k}"))).await.unwrap();
    }
    sqlx::query(
        "UPDATE rampart_inbox SET processed_at = now() - interval '2 days' \
         WHERE key IN ('u-0', 'u-1', 'u-2')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let day = Duration::from_secs(24 * 3600);
    assert_eq!(layer.purge(day, 2).await.unwrap(), 2);
    assert_eq!(layer.purge(day, 100).await.unwrap(), 1);
    assert_eq!(layer.purge(day, 100).await.unwrap(), 0);
    let left: Vec<String> = sqlx::query_scalar("SELECT key FROM rampart_inbox ORDER BY key")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(left, ["u-3", "u-4"]);

    for (older_than, limit, setting) in [
        (Duration::ZERO, 10, "older_than"),
        (Duration::from_secs(2 * 365 * 24 * 3600), 10, "older_than"),
        (day, 0, "limit"),
        (day, 2_000_000, "limit"),
    ] {
        match layer.purge(older_than, limit).await {
            Err(PgInboxError::Config(e)) => assert_eq!(e.setting(), Some(setting), "{e}"),
            other => panic!("{older_than:?} {limit}: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_idempotent_and_safe_at_once() {
    let db = TestDb::new("inbox_migrate").await;
    let pool = db.pool(8).await;
    let inbox = PgInboxLayer::builder(pool.clone())
        .table("app.inbox")
        .build()
        .unwrap();
    let letters = PgDeadLetters::builder(pool.clone())
        .table("app.dead_letters")
        .build()
        .unwrap();
    for _ in 0..3 {
        let runs: Vec<_> = (0..4)
            .map(|_| {
                let (i, l) = (inbox.clone(), letters.clone());
                tokio::spawn(async move {
                    i.migrate().await?;
                    l.migrate().await
                })
            })
            .collect();
        for r in runs {
            r.await.unwrap().unwrap();
        }
    }
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'app' \
         AND tablename IN ('inbox', 'dead_letters')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(tables, 2);
}

#[tokio::test]
async fn invalid_table_names_are_refused() {
    let pool = PgPoolOptions::new()
        .connect_lazy("postgres://postgres@127.0.0.1:1/none")
        .unwrap();
    for bad in [
        "",
        "Inbox",
        "in box",
        "inbox;drop table x",
        "\"inbox\"",
        "a.b.c",
        ".inbox",
        "9inbox",
        &"x".repeat(49),
    ] {
        let e = PgInboxLayer::builder(pool.clone())
            .table(bad)
            .build()
            .unwrap_err();
        assert_eq!(e.setting(), Some("table"), "{bad:?}: {e}");
        assert!(
            e.to_string()
                .starts_with("invalid postgres inbox configuration: table ")
        );
        let e = PgDeadLetters::builder(pool.clone())
            .table(bad)
            .build()
            .unwrap_err();
        assert_eq!(e.setting(), Some("table"), "{bad:?}: {e}");
    }
    let e = PgInboxLayer::builder(pool.clone())
        .table("Inbox")
        .build()
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid postgres inbox configuration: table name must start with a lowercase ASCII \
         letter or `_`, got \"Inbox\""
    );
    for good in ["inbox", "_x1", "app.inbox", "order"] {
        assert!(
            PgInboxLayer::builder(pool.clone())
                .table(good)
                .build()
                .is_ok(),
            "{good}"
        );
    }
}

#[tokio::test]
async fn a_reserved_word_is_a_usable_table_name() {
    let (_db, pool, _) = setup("inbox_reserved", 2).await;
    let layer = PgInboxLayer::builder(pool.clone())
        .table("order")
        .build()
        .unwrap();
    layer.migrate().await.unwrap();
    let out = layer.layer(effect_handler()).oneshot(msg("o-1")).await;
    assert_eq!(out.unwrap(), Inboxed::Ran(()));
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM \"order\"")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 1);
}

fn letter(id: &str, reason: DeadLetterReason) -> DeadLetter {
    DeadLetter {
        message: Message::new(id, "order.placed", vec![0u8, 159, 146, 150])
            .with_header("tenant", "acme")
            .with_header("n", id)
            .with_correlation_id("flow-1"),
        reason,
        attempts: 5,
        first_error: Some("timeout".into()),
        last_error: "db down\0".into(),
        at: SystemTime::UNIX_EPOCH + Duration::from_micros(1_765_000_000_123_456),
    }
}

#[tokio::test]
async fn dead_letters_are_stored_whole() {
    let db = TestDb::new("dl_store").await;
    let pool = db.pool(2).await;
    let letters = PgDeadLetters::new(pool.clone());
    letters.migrate().await.unwrap();
    letters
        .send(&letter("d-1", DeadLetterReason::MaxAttempts))
        .await
        .unwrap();
    let row: (
        String,
        String,
        Vec<u8>,
        String,
        String,
        i64,
        Option<String>,
        String,
        i64,
    ) = sqlx::query_as(
        "SELECT message_id, kind, payload, headers::text, reason, attempts, first_error, \
             last_error, (extract(epoch FROM dead_at) * 1000000)::bigint \
             FROM rampart_dead_letters",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        row,
        (
            "d-1".into(),
            "order.placed".into(),
            vec![0u8, 159, 146, 150],
            r#"{"n": "d-1", "tenant": "acme"}"#.into(),
            "max-attempts".into(),
            5,
            Some("timeout".into()),
            "db down\u{FFFD}".into(),
            1_765_000_000_123_456,
        )
    );
    assert_eq!(letters.pending(None).await.unwrap(), 1);
    assert_eq!(
        letters
            .pending(Some(DeadLetterReason::Poison))
            .await
            .unwrap(),
        0
    );
}

/// A consumer that died between storing a letter and acking the original sends the same letter
/// again on redelivery: it is stored once while pending; another message that reused the id
/// (another payload) is its own letter; once replayed, a new failure is a new letter.
#[tokio::test]
async fn a_letter_sent_again_is_stored_once_while_pending() {
    let db = TestDb::new("dl_once").await;
    let pool = db.pool(2).await;
    let letters = PgDeadLetters::new(pool.clone());
    letters.migrate().await.unwrap();
    let first = letter("l-1", DeadLetterReason::MaxAttempts);
    letters.send(&first).await.unwrap();
    letters.send(&first).await.unwrap();
    assert_eq!(letters.pending(None).await.unwrap(), 1);
    let mut other = letter("l-1", DeadLetterReason::KeyReused);
    other.message = Message::new("l-1", "order.placed", "another payload");
    letters.send(&other).await.unwrap();
    assert_eq!(letters.pending(None).await.unwrap(), 2);
    let mut publisher = service_fn(|_m: Message| async { Ok::<_, BoxError>(()) });
    assert_eq!(letters.replay(&mut publisher, 10, None).await.unwrap(), 2);
    letters.send(&first).await.unwrap();
    assert_eq!(letters.pending(None).await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replayers_replay_each_letter_once() {
    let db = TestDb::new("dl_replay").await;
    let pool = db.pool(6).await;
    let letters = PgDeadLetters::new(pool.clone());
    letters.migrate().await.unwrap();
    let mut poison_ids = Vec::new();
    for k in 0..20 {
        let id = format!("l-{k}");
        let reason = if k % 4 == 0 {
            DeadLetterReason::MaxAttempts
        } else {
            poison_ids.push(id.clone());
            DeadLetterReason::Poison
        };
        letters.send(&letter(&id, reason)).await.unwrap();
    }
    let published: Arc<Mutex<Vec<Message>>> = Arc::default();
    let replayers: Vec<_> = (0..2)
        .map(|_| {
            let (letters, published) = (letters.clone(), published.clone());
            tokio::spawn(async move {
                let mut publisher = service_fn(move |m: Message| {
                    let published = published.clone();
                    async move {
                        // Slow enough for the two replayers to meet on the same rows.
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        published.lock().unwrap().push(m);
                        Ok::<_, BoxError>(())
                    }
                });
                letters
                    .replay(&mut publisher, 100, Some(DeadLetterReason::Poison))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut replayed = Vec::new();
    for r in replayers {
        replayed.push(r.await.unwrap());
    }
    assert_eq!(replayed.iter().sum::<u64>(), 15);
    let published = published.lock().unwrap().clone();
    let mut ids: Vec<String> = published.iter().map(|m| m.id().to_owned()).collect();
    ids.sort();
    poison_ids.sort();
    assert_eq!(ids, poison_ids, "each poison letter published exactly once");
    // The original message, as first delivered.
    let sent = letter(published[0].id(), DeadLetterReason::Poison).message;
    assert_eq!(published[0], sent);
    assert_eq!(
        letters
            .pending(Some(DeadLetterReason::Poison))
            .await
            .unwrap(),
        0
    );
    assert_eq!(letters.pending(None).await.unwrap(), 5);

    // A publisher failing on its third letter: two are replayed, the rest stay pending.
    let calls = Arc::new(Mutex::new(0));
    let mut flaky = service_fn(move |_: Message| {
        let calls = calls.clone();
        async move {
            let mut n = calls.lock().unwrap();
            *n += 1;
            if *n == 3 {
                return Err::<(), BoxError>("broker down".into());
            }
            Ok(())
        }
    });
    let err = letters.replay(&mut flaky, 100, None).await.unwrap_err();
    assert!(
        matches!(err, ReplayError::Publish { replayed: 2, .. }),
        "{err}"
    );
    assert_eq!(letters.pending(None).await.unwrap(), 3);
    assert_eq!(letters.replay(&mut flaky, 2, None).await.unwrap(), 2);
    assert_eq!(letters.pending(None).await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_redelivers_later_without_running() {
    let db = TestDb::new("inbox_down").await;
    let proxy = FaultProxy::start(upstream()).await;
    proxy.refuse(true);
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_millis(300))
        .connect_lazy(&format!(
            "postgres://postgres@{}/{}",
            proxy.addr(),
            db.name()
        ))
        .unwrap();
    let ran = Arc::new(Mutex::new(0));
    let r = ran.clone();
    let inbox = PgInboxLayer::builder(pool)
        .store_error_delay(Duration::from_millis(1500))
        .build()
        .unwrap()
        .layer(service_fn(move |m: TxMessage| {
            *r.lock().unwrap() += 1;
            async move { Ok::<_, BoxError>((m.tx, ())) }
        }));
    let err = inbox.oneshot(msg("down-1")).await.unwrap_err();
    let later = err
        .downcast_ref::<RedeliverLater>()
        .expect("redeliver later");
    assert_eq!(later.after, Duration::from_millis(1500));
    assert_eq!(*ran.lock().unwrap(), 0);

    let pool = db.pool(1).await;
    for (d, why) in [
        (Duration::ZERO, "must be positive"),
        (Duration::MAX, "must be at most one year"),
    ] {
        let e = PgInboxLayer::builder(pool.clone())
            .store_error_delay(d)
            .build()
            .unwrap_err();
        assert_eq!(e.setting(), Some("store_error_delay"));
        assert!(e.reason().starts_with(why), "{e}");
    }
}

/// The README's "Messaging: the transactional inbox" snippet, run.
mod readme {
    use sqlx::PgPool;
    use tower::{Layer, ServiceExt, service_fn};
    use tower_rampart::{
        BoxError,
        message::{
            Message,
            inbox::Inboxed,
            postgres::{PgInboxLayer, TxMessage},
        },
    };

    pub async fn example(pool: PgPool) -> Result<(), BoxError> {
        let inbox = PgInboxLayer::new(pool.clone()); // table `rampart_inbox`, keyed by message id
        inbox.migrate().await?; // idempotent; safe from every instance at start-up

        // The effect is written through the inbox's transaction: it commits with the key.
        let handler = service_fn(|TxMessage { message, mut tx }| async move {
            sqlx::query("INSERT INTO payments (id, body) VALUES ($1, $2)")
                .bind(message.id())
                .bind(message.payload().as_ref())
                .execute(&mut *tx)
                .await?;
            Ok::<_, BoxError>((tx, ()))
        });
        let service = inbox.layer(handler); // a Service<Message>: hand it to a Consumer

        let msg = Message::new("pay-1", "payment.requested", r#"{"cents":1200}"#);
        assert_eq!(
            service.clone().oneshot(msg.clone()).await?,
            Inboxed::Ran(())
        );
        assert_eq!(service.oneshot(msg).await?, Inboxed::Duplicate); // redelivered: skipped
        Ok(())
    }
}

#[tokio::test]
async fn the_readme_snippet_runs() {
    let db = TestDb::new("inbox_readme").await;
    let pool = db.pool(2).await;
    sqlx::raw_sql("CREATE TABLE payments (id text, body bytea)")
        .execute(&pool)
        .await
        .unwrap();
    readme::example(pool.clone()).await.unwrap();
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM payments WHERE id = $1",
            "pay-1"
        )
        .await,
        1
    );
}

/// A handler that swallows a failed statement and answers `Ok`: PostgreSQL would roll the
/// aborted transaction back on COMMIT without an error, so an unchecked inbox would report the
/// message applied (and the consumer ack it) with nothing committed.
#[tokio::test]
async fn a_transaction_refused_after_the_handler_is_the_messages_failure() {
    let (_db, pool, layer) = setup("inbox_refused", 4).await;
    let swallowing = layer.layer(service_fn(|TxMessage { message, mut tx }| async move {
        write_effect(&mut tx, &message).await?;
        let _ignored = sqlx::query("SELECT 1 / 0").execute(&mut *tx).await;
        Ok::<_, BoxError>((tx, ()))
    }));
    let err = swallowing.oneshot(msg("f-1")).await.unwrap_err();
    assert!(
        matches!(
            err.downcast_ref::<PgInboxError>(),
            Some(PgInboxError::Rejected(_))
        ),
        "{err}"
    );
    assert_eq!(
        (effects(&pool, "f-1").await, inbox_rows(&pool, "f-1").await),
        (0, 0)
    );

    // A deferred constraint failing at COMMIT: refused, not "outcome unknown".
    sqlx::raw_sql(
        "CREATE TABLE seats (seat int, \
         CONSTRAINT one_each UNIQUE (seat) DEFERRABLE INITIALLY DEFERRED)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let double_booking = layer.layer(service_fn(|TxMessage { message, mut tx }| async move {
        write_effect(&mut tx, &message).await?;
        // (`sqlx::raw_sql` futures are not provably `Send` here: a rustc limitation.)
        sqlx::query("INSERT INTO seats VALUES (1), (1)")
            .execute(&mut *tx)
            .await?;
        Ok::<_, BoxError>((tx, ()))
    }));
    let err = double_booking.oneshot(msg("f-2")).await.unwrap_err();
    assert!(
        matches!(
            err.downcast_ref::<PgInboxError>(),
            Some(PgInboxError::Rejected(_))
        ),
        "{err}"
    );
    assert_eq!(
        (effects(&pool, "f-2").await, inbox_rows(&pool, "f-2").await),
        (0, 0)
    );
}

/// The SQL printed in the module docs is the SQL `migrate` runs.
#[tokio::test]
async fn the_documented_sql_is_the_shipped_sql() {
    let docs = include_str!("../src/message/postgres/mod.rs");
    let pool = PgPoolOptions::new()
        .connect_lazy("postgres://postgres@127.0.0.1:1/none")
        .unwrap();
    for sql in [
        PgInboxLayer::new(pool.clone()).schema_sql(),
        PgDeadLetters::new(pool).schema_sql(),
    ] {
        for line in sql.lines() {
            assert!(docs.contains(&format!("//! {line}\n")), "{line}");
        }
    }
}
