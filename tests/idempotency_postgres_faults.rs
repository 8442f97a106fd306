//! Exactly-once with `PostgresStore` under real faults, each test in a database of its own:
//! the connection cut mid-handler (and the server unreachable for two leases) through the TCP
//! fault proxy, the backends killed with `pg_terminate_backend` mid-handler, a silent network
//! partition (the proxy stalls), statements that do not answer in time (the row locked by
//! another transaction), corrupt rows, and the table dropped mid-handler. Each app runs behind
//! a real axum server, called by a real HTTP client.
//!
//! The handler counts its invocations and commits into a fenced ledger (one row per key, with
//! the owner token that wrote it; tests/common/ledger.rs); it selects on `lease().lost()` and
//! checks `is_held()` before committing, and answers 503 with `DoNotStore` when it lost its key.
//! For every scenario:
//! - commits <= 1 per key, and no handler ever tried to commit without holding its lease;
//! - every answer is a documented status;
//! - no key is stuck: one lease after the fault clears, a retry is replayed or runs once.

mod common;

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::{
    http::{Answer, client},
    ledger::{
        self, Limits, SHORT_WORK, documented, not_stuck, owner, recovered, refused, scoped, send,
        told_and_refused, unreadable_in,
    },
    postgres::TestDb,
    proxy::FaultProxy,
    store_contract::fp,
};
use sqlx::{Connection, Executor, PgConnection, PgPool, Row, postgres::PgPoolOptions};
use tower_rampart::idempotency::{
    Claim, OnStoreError, OwnerToken, PostgresStore, Store, StoreErrorKind, problem_types,
};

const LEASE: Duration = Duration::from_millis(400);
/// The layer's bound on a store call; the store's own (shorter) bound answers first.
const STORE_TIMEOUT: Duration = Duration::from_millis(250);
const PG_TIMEOUT: Duration = Duration::from_millis(150);
/// The stale owner's work: far longer than it takes the layer to tell it the lease is lost.
const LONG_WORK: u64 = 3_000;
/// Longer than a lease: the owner renews across the fault.
const MID_WORK: u64 = 900;

// ---------------------------------------------------------------------------------------------
// The app: the shared fenced ledger (tests/common/ledger.rs) over a `PostgresStore`.

type App = ledger::App<PostgresStore>;

async fn app_with(store: PostgresStore, ttl: Duration, on_error: OnStoreError) -> App {
    let limits = Limits {
        lease: LEASE,
        store_timeout: STORE_TIMEOUT,
        ttl,
        on_error,
    };
    App::serve(store, limits).await
}

/// A pool of up to `max` connections to `url` (the database, or the proxy in front of it).
async fn pool_at(url: &str, max: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(max)
        .connect(url)
        .await
        .expect("connect")
}

/// A migrated store over `pool`, each statement bounded by `PG_TIMEOUT`.
async fn store_on(pool: PgPool) -> PostgresStore {
    let store = PostgresStore::new(pool).timeout(PG_TIMEOUT).unwrap();
    store.migrate().await.unwrap();
    store
}

/// The app, with its pool connecting through `proxy`.
async fn app_via(proxy: &FaultProxy, db: &TestDb) -> App {
    let url = format!("postgres://postgres@{}/{}", proxy.addr(), db.name());
    let store = store_on(pool_at(&url, 4).await).await;
    app_with(store, Duration::from_secs(600), OnStoreError::FailClosed).await
}

async fn app_direct(db: &TestDb, ttl: Duration, on_error: OnStoreError) -> App {
    app_with(store_on(db.pool(4).await).await, ttl, on_error).await
}

/// A connection of the test's own, beside the app's pool.
async fn admin(db: &TestDb) -> PgConnection {
    PgConnection::connect(db.url()).await.unwrap()
}

/// The owner either finished (201, committed once) or was told in time that it lost its key.
fn finished_or_told(app: &App, key: &str, first: &Answer, owner: u128) {
    documented(first);
    match first.status {
        201 => assert_eq!(app.ledger.books().rows.get(&scoped(key)), Some(&owner)),
        _ => {
            assert!(first.handler_lost(), "{key}: {first:?}");
            assert!(app.ledger.saw_loss(owner), "{key}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// a. The connection cut mid-handler: briefly (the pool reconnects), and with the server then
// unreachable for two leases.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_mid_handler_runs_the_key_once() {
    let db = TestDb::new("idem_cut").await;
    let proxy = FaultProxy::start("127.0.0.1:5432").await;
    let app = app_via(&proxy, &db).await;
    assert_eq!(send(&app.url, "a-warm-up", 0).await.status, 201);

    // Cut twice while the owner renews; a duplicate after each cut.
    let key = "a-cut";
    let accepted = proxy.accepted();
    let (first, token) = owner(&app, key, MID_WORK).await;
    let mut answers = Vec::new();
    for _ in 0..2 {
        tokio::time::sleep(LEASE / 2).await;
        proxy.cut();
        answers.push(send(&app.url, key, SHORT_WORK).await);
    }
    let first = first.await.unwrap();
    answers.iter().for_each(documented);
    finished_or_told(&app, key, &first, token);
    assert!(proxy.accepted() > accepted, "the pool reconnected");
    recovered(&app, key, LEASE).await;

    // Cut, then unreachable for two leases: the owner is told, duplicates are refused.
    let key = "a-outage";
    let (first, token) = owner(&app, key, LONG_WORK).await;
    proxy.refuse(true);
    proxy.cut();
    let outage_ends = Instant::now() + LEASE * 2;
    let mut answers = Vec::new();
    while Instant::now() < outage_ends {
        answers.push(send(&app.url, key, SHORT_WORK).await);
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    assert!(
        app.ledger.saw_loss(token),
        "after two leases without a renewal, the owner was told its lease was lost"
    );
    proxy.refuse(false);
    let first = first.await.unwrap();
    told_and_refused(&app, key, &first, token, &answers, LEASE).await;
}

// ---------------------------------------------------------------------------------------------
// b. The app's backends killed with pg_terminate_backend mid-handler, four times.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_terminated_mid_handler_run_the_key_once() {
    let db = TestDb::new("idem_terminate").await;
    let app = app_direct(&db, Duration::from_secs(600), OnStoreError::FailClosed).await;
    let mut admin = admin(&db).await;
    assert_eq!(send(&app.url, "b-warm-up", 0).await.status, 201);

    let key = "b-terminated";
    let (first, token) = owner(&app, key, MID_WORK).await;
    let mut answers = Vec::new();
    let mut killed = 0;
    for _ in 0..4 {
        tokio::time::sleep(LEASE / 4).await;
        let n: i64 = sqlx::query(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_one(&mut admin)
        .await
        .unwrap()
        .get(0);
        killed += n;
        answers.push(send(&app.url, key, SHORT_WORK).await);
    }
    assert!(
        killed >= 4,
        "the app's backends were there to kill: {killed}"
    );
    let first = first.await.unwrap();
    answers.iter().for_each(documented);
    finished_or_told(&app, key, &first, token);
    recovered(&app, key, LEASE).await;
}

// ---------------------------------------------------------------------------------------------
// c. A silent network partition (the proxy stalls every connection) for two leases.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_network_mid_handler_runs_the_key_once() {
    let db = TestDb::new("idem_stall").await;
    let proxy = FaultProxy::start("127.0.0.1:5432").await;
    let app = app_via(&proxy, &db).await;
    assert_eq!(send(&app.url, "c-warm-up", 0).await.status, 201);

    let key = "c-stalled";
    let (first, token) = owner(&app, key, LONG_WORK).await;
    proxy.stall(true);
    let stall_ends = Instant::now() + LEASE * 2;
    let mut answers = Vec::new();
    while Instant::now() < stall_ends {
        // Each duplicate waits out the store's timeout: nothing answers.
        answers.push(send(&app.url, key, SHORT_WORK).await);
    }
    assert!(app.ledger.saw_loss(token), "the owner was told in time");
    proxy.stall(false);
    proxy.cut(); // the stalled connections never recover: they are closed
    let first = first.await.unwrap();
    told_and_refused(&app, key, &first, token, &answers, LEASE).await;
}

// ---------------------------------------------------------------------------------------------
// d. Statements that do not answer in time: the row locked by another transaction.

/// Opens a transaction on `conn` that locks `key`'s row.
async fn lock_row(conn: &mut PgConnection, key: &str) {
    conn.execute("BEGIN").await.unwrap();
    let locked = sqlx::query("SELECT 1 FROM rampart_idempotency WHERE key = $1 FOR UPDATE")
        .bind(key.as_bytes())
        .fetch_optional(&mut *conn)
        .await
        .unwrap();
    assert!(locked.is_some(), "{key} has a row to lock");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_that_does_not_answer_in_time_is_unavailable_and_frees_its_connection() {
    let db = TestDb::new("idem_locked").await;
    // Two connections only: a timed-out statement must not keep its connection from the pool.
    let store = store_on(db.pool(2).await).await;
    let mut locker = admin(&db).await;
    let lease = Duration::from_millis(300);

    // An abandoned claim whose lease is over: the key is free, but its row is locked.
    let old = OwnerToken::new();
    assert_eq!(
        store.claim("k", &fp(1), old, lease).await.unwrap(),
        Claim::New
    );
    tokio::time::sleep(lease + Duration::from_millis(20)).await;
    lock_row(&mut locker, "k").await;

    let late = OwnerToken::new();
    for token in [
        late,
        OwnerToken::new(),
        OwnerToken::new(),
        OwnerToken::new(),
    ] {
        let err = store.claim("k", &fp(1), token, lease).await.unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::Unavailable);
        assert!(err.to_string().contains("did not answer within"), "{err}");
    }
    let err = store.renew("k", old, lease).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Unavailable);
    // Meanwhile other keys are served: the timed-out statements gave their connections back.
    let t = OwnerToken::new();
    assert_eq!(
        store.claim("other", &fp(1), t, lease).await.unwrap(),
        Claim::New
    );
    assert!(store.release("other", t).await.unwrap());
    store.ready().await.unwrap();

    // Held for longer than a lease, then let go: the abandoned statements may now land. A
    // claim's lease runs from when it was sent (the database's `now()` is the statement's
    // start), so a claim that waited longer than its lease holds nothing.
    tokio::time::sleep(lease).await;
    locker.execute("ROLLBACK").await.unwrap();
    let fresh = OwnerToken::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match store.claim("k", &fp(1), fresh, lease).await {
            Ok(Claim::New) => break,
            Ok(other) => panic!("a late claim holds the key: {other:?}"),
            // The pool's connections were all closed; new ones are on their way.
            Err(e) if Instant::now() < deadline => {
                assert_eq!(e.kind(), StoreErrorKind::Unavailable)
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        !store.renew("k", late, lease).await.unwrap(),
        "not the late claim's"
    );
    assert!(store.renew("k", fresh, lease).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_locked_mid_handler_times_out_and_recovers() {
    let db = TestDb::new("idem_lock_http").await;
    let app = app_direct(&db, Duration::from_secs(600), OnStoreError::FailClosed).await;
    let mut locker = admin(&db).await;
    assert_eq!(send(&app.url, "d-warm-up", 0).await.status, 201);

    let key = "d-locked";
    let (first, token) = owner(&app, key, LONG_WORK).await;
    lock_row(&mut locker, &scoped(key)).await;
    let lock_ends = Instant::now() + LEASE * 2;
    let mut answers = Vec::new();
    while Instant::now() < lock_ends {
        answers.push(send(&app.url, key, SHORT_WORK).await);
    }
    assert!(app.ledger.saw_loss(token), "renewals timed out for a lease");
    locker.execute("ROLLBACK").await.unwrap();
    let first = first.await.unwrap();
    answers.iter().for_each(documented);
    documented(&first);
    assert!(first.handler_lost(), "{first:?}");
    assert!(refused(&answers) >= 2, "{answers:?}");
    assert_eq!(
        app.ledger.invocations(key),
        1,
        "no duplicate ran while locked"
    );
    not_stuck(&app, key, LEASE).await;
    assert_eq!(app.ledger.attempts(key), 1);
}

// ---------------------------------------------------------------------------------------------
// e. Corrupt rows: never run (even failing open), and they expire.

async fn completion_of(conn: &mut PgConnection, key: &str) -> Vec<u8> {
    sqlx::query("SELECT completion FROM rampart_idempotency WHERE key = $1")
        .bind(scoped(key).into_bytes())
        .fetch_one(conn)
        .await
        .unwrap()
        .get(0)
}

/// Copies `from`'s row to `to`, with `completion` as its record bytes.
async fn corrupt_copy(conn: &mut PgConnection, from: &str, to: &str, completion: &[u8]) {
    sqlx::query(
        "INSERT INTO rampart_idempotency (key, fingerprint, owner_token, state, completion, expires_at)
         SELECT $2, fingerprint, owner_token, state, $3, expires_at
         FROM rampart_idempotency WHERE key = $1",
    )
    .bind(scoped(from).into_bytes())
    .bind(scoped(to).into_bytes())
    .bind(completion)
    .execute(conn)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_rows_never_run_and_expire() {
    let db = TestDb::new("idem_corrupt").await;
    let ttl = Duration::from_millis(800);
    let closed = app_direct(&db, ttl, OnStoreError::FailClosed).await;
    let open = app_direct(&db, ttl, OnStoreError::FailOpen).await;
    let mut conn = admin(&db).await;

    let done = send(&closed.url, "e-real", 0).await;
    assert_eq!(done.status, 201);
    let record = completion_of(&mut conn, "e-real").await;
    assert!(record.len() > 10);
    let mut bad_version = record.clone();
    bad_version[0] = 0xee;
    let damaged: [(&str, &[u8]); 5] = [
        ("e-garbage", b"\xff\x00not a record"),
        ("e-empty", b""),
        ("e-cut", &record[..record.len() - 3]),
        ("e-longer", &[&record[..], b"\x00"].concat()),
        ("e-version", &bad_version),
    ];
    for (key, bytes) in damaged {
        corrupt_copy(&mut conn, "e-real", key, bytes).await;
    }
    // The real row, damaged in place (UPDATE of the record bytes), edited never to expire.
    sqlx::query(
        "UPDATE rampart_idempotency SET completion = '\\xdeadbeef', expires_at = 'infinity'
         WHERE key = $1",
    )
    .bind(scoped("e-real").into_bytes())
    .execute(&mut conn)
    .await
    .unwrap();

    let keys = [
        "e-real",
        "e-garbage",
        "e-empty",
        "e-cut",
        "e-longer",
        "e-version",
    ];
    for key in keys {
        unreadable_in(&[&closed, &open, &closed], key).await;
        // `e-real` ran once, to make the row damaged later; never again.
        let before = usize::from(key == "e-real");
        assert_eq!(closed.ledger.invocations(key), before, "{key} never ran");
        assert_eq!(
            open.ledger.invocations(key),
            0,
            "{key} never ran, even failing open"
        );
    }
    // Another request with a damaged key is told it is another request: nothing runs either.
    let res = client()
        .post(&closed.url)
        .header("idempotency-key", "e-garbage")
        .body("{\"amount\":2}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // The row edited to `infinity` was given an end by the claims that met it.
    let finite: bool = sqlx::query(
        "SELECT expires_at < now() + interval '401 days' FROM rampart_idempotency WHERE key = $1",
    )
    .bind(scoped("e-real").into_bytes())
    .fetch_one(&mut conn)
    .await
    .unwrap()
    .get(0);
    assert!(finite, "an edited row still expires");

    // The copies expire with the TTL of the row they copied; then each key runs, once.
    tokio::time::sleep(ttl).await;
    assert_eq!(closed.store.purge_expired(2).await.unwrap(), 2, "purged");
    for key in &keys[1..] {
        let a = send(&closed.url, key, 0).await;
        assert_eq!((a.status, a.replayed), (201, false), "{key}: {a:?}");
        assert_eq!(closed.ledger.invocations(key), 1, "{key}");
        let a = send(&open.url, key, 0).await;
        assert_eq!((a.status, a.replayed), (201, true), "{key}: {a:?}");
        assert_eq!(open.ledger.invocations(key), 0, "{key}");
    }
    // Pushed back to 400 days at most, not expired: still answered, still never run.
    let a = send(&open.url, "e-real", 0).await;
    assert!(a.is_problem(problem_types::UNREADABLE_RECORD), "{a:?}");
    closed.ledger.check_once();
    open.ledger.check_once();
}

// ---------------------------------------------------------------------------------------------
// f. The table dropped mid-handler, then migrated again.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_table_dropped_mid_handler_is_a_clear_error_until_migrated() {
    let db = TestDb::new("idem_dropped").await;
    let app = app_direct(&db, Duration::from_secs(600), OnStoreError::FailClosed).await;
    let mut conn = admin(&db).await;
    assert_eq!(send(&app.url, "f-warm-up", 0).await.status, 201);

    let key = "f-dropped";
    let (first, token) = owner(&app, key, LONG_WORK).await;
    conn.execute("DROP TABLE rampart_idempotency")
        .await
        .unwrap();
    let err = app
        .store
        .claim("x", &fp(1), OwnerToken::new(), LEASE)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("does not exist") && err.to_string().contains("migrate()"),
        "{err}"
    );
    let mut answers = Vec::new();
    for _ in 0..3 {
        answers.push(send(&app.url, key, SHORT_WORK).await);
        tokio::time::sleep(LEASE / 2).await;
    }
    assert!(app.ledger.saw_loss(token), "renewals failed for a lease");
    answers.iter().for_each(documented);
    assert!(
        answers
            .iter()
            .all(|a| a.is_problem(problem_types::STORE_UNAVAILABLE)),
        "{answers:?}"
    );
    app.store.migrate().await.unwrap();
    let first = first.await.unwrap();
    documented(&first);
    assert!(first.handler_lost(), "{first:?}");
    not_stuck(&app, key, LEASE).await;
    assert_eq!(app.ledger.attempts(key), 1);
}
