//! Exactly-once with `PostgresStore` under real faults, each test in a database of its own:
//! the connection cut mid-handler (and the server unreachable for two leases) through the TCP
//! fault proxy, the backends killed with `pg_terminate_backend` mid-handler, a silent network
//! partition (the proxy stalls), statements that do not answer in time (the row locked by
//! another transaction), corrupt rows, and the table dropped mid-handler. Each app runs behind
//! a real axum server, called by a real HTTP client.
//!
//! The handler counts its invocations and commits into a fenced ledger (one row per key, with
//! the owner token that wrote it); it selects on `lease().lost()` and checks `is_held()` before
//! committing, and answers 503 with `DoNotStore` when it lost its key. For every scenario:
//! - commits <= 1 per key, and no handler ever tried to commit without holding its lease;
//! - every answer is a documented status;
//! - no key is stuck: one lease after the fault clears, a retry is replayed or runs once.

mod common;

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Extension, Router,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use common::{
    http::{Answer, client, serve},
    postgres::TestDb,
    proxy::FaultProxy,
    store_contract::fp,
};
use sqlx::{Connection, Executor, PgConnection, PgPool, Row, postgres::PgPoolOptions};
use tower_rampart::idempotency::{
    Claim, DoNotStore, IdempotencyContext, IdempotencyLayer, OnStoreError, OwnerToken,
    PostgresStore, Store, StoreErrorKind, problem_types,
};

const LEASE: Duration = Duration::from_millis(400);
/// The layer's bound on a store call; the store's own (shorter) bound answers first.
const STORE_TIMEOUT: Duration = Duration::from_millis(250);
const PG_TIMEOUT: Duration = Duration::from_millis(150);
/// The stale owner's work: far longer than it takes the layer to tell it the lease is lost.
const LONG_WORK: u64 = 3_000;
/// Longer than a lease: the owner renews across the fault.
const MID_WORK: u64 = 900;
const SHORT_WORK: u64 = 50;
const LOST_BODY: &str = "lease lost: not committed";

// ---------------------------------------------------------------------------------------------
// The fenced ledger and the handler.

#[derive(Default)]
struct Books {
    invocations: HashMap<String, usize>,
    /// Commit attempts per scoped key (by handlers that held their lease), by owner token.
    attempts: HashMap<String, Vec<u128>>,
    /// The payments: one row per key, with the token that wrote it (the unique constraint).
    rows: HashMap<String, u128>,
    /// Owner tokens whose handler learned that its lease was lost.
    lost: HashSet<u128>,
    tokens: HashMap<String, Vec<u128>>,
}

#[derive(Clone, Default)]
struct Ledger(Arc<Mutex<Books>>);

impl Ledger {
    fn books(&self) -> std::sync::MutexGuard<'_, Books> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn invocations(&self, key: &str) -> usize {
        self.books()
            .invocations
            .get(&scoped(key))
            .copied()
            .unwrap_or(0)
    }

    fn attempts(&self, key: &str) -> usize {
        self.books().attempts.get(&scoped(key)).map_or(0, Vec::len)
    }

    fn commits(&self, key: &str) -> usize {
        usize::from(self.books().rows.contains_key(&scoped(key)))
    }

    fn first_token(&self, key: &str) -> u128 {
        self.books().tokens[&scoped(key)][0]
    }

    fn saw_loss(&self, token: u128) -> bool {
        self.books().lost.contains(&token)
    }

    /// At most one commit attempt per key, by an owner that held its lease.
    fn check_once(&self) {
        let b = self.books();
        for (key, attempts) in &b.attempts {
            assert!(
                attempts.len() <= 1,
                "{key}: {} commit attempts by owners that believed they held the key",
                attempts.len(),
            );
        }
    }
}

/// The layer's scoped form of a client key with global keys.
fn scoped(key: &str) -> String {
    format!("0::{key}")
}

async fn pay(
    State(ledger): State<Ledger>,
    Extension(ctx): Extension<IdempotencyContext>,
    headers: HeaderMap,
) -> Response {
    let work = headers
        .get("x-work-ms")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(SHORT_WORK);
    let token = ctx.token.as_u128();
    let key = ctx.key.to_string();
    let run = {
        let mut b = ledger.books();
        b.tokens.entry(key.clone()).or_default().push(token);
        let n = b.invocations.entry(key.clone()).or_default();
        *n += 1;
        *n
    };
    let lost = tokio::select! {
        () = ctx.lease().lost() => true,
        () = tokio::time::sleep(Duration::from_millis(work)) => !ctx.lease().is_held(),
    };
    if lost {
        ledger.books().lost.insert(token);
        let mut res = (StatusCode::SERVICE_UNAVAILABLE, LOST_BODY).into_response();
        res.extensions_mut().insert(DoNotStore);
        return res;
    }
    let mut b = ledger.books();
    b.attempts.entry(key.clone()).or_default().push(token);
    if b.rows.contains_key(&key) {
        // The fence: a stale owner's write is refused. Never expected in these schedules.
        return (StatusCode::CONFLICT, "already processed").into_response();
    }
    b.rows.insert(key, token);
    (StatusCode::CREATED, format!("{{\"run\":{run}}}")).into_response()
}

struct App {
    url: String,
    ledger: Ledger,
    store: PostgresStore,
}

async fn app_with(store: PostgresStore, ttl: Duration, on_error: OnStoreError) -> App {
    let layer = IdempotencyLayer::builder()
        .store(store.clone())
        .global_keys()
        .lease(LEASE)
        .store_timeout(STORE_TIMEOUT)
        .ttl(ttl)
        .on_store_error(on_error)
        .build()
        .unwrap();
    let ledger = Ledger::default();
    let router = Router::new()
        .route("/pay", post(pay))
        .with_state(ledger.clone())
        .layer(layer);
    App {
        url: format!("{}/pay", serve(router).await),
        ledger,
        store,
    }
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

// ---------------------------------------------------------------------------------------------
// Answers.

impl Answer {
    fn handler_lost(&self) -> bool {
        self.status == 503 && self.problem.is_none() && self.body == LOST_BODY
    }
}

async fn send(url: &str, key: &str, work_ms: u64) -> Answer {
    let res = client()
        .post(url)
        .header("idempotency-key", key)
        .header("x-work-ms", work_ms.to_string())
        .body("{\"amount\":1}")
        .send()
        .await
        .unwrap();
    let (status, headers) = (res.status(), res.headers().clone());
    Answer::new(status, &headers, res.text().await.unwrap())
}

/// Every answer is one the README documents (for this layer and this handler).
fn documented(a: &Answer) {
    use problem_types as p;
    let ok = match a.status {
        201 => a.problem.is_none(),
        409 => a.is_problem(p::IN_FLIGHT) || a.is_problem(p::NOT_REPLAYABLE),
        422 => a.is_problem(p::MISMATCH),
        500 => a.is_problem(p::UNREADABLE_RECORD) || a.is_problem(p::HANDLER_FAILED),
        503 => a.is_problem(p::STORE_UNAVAILABLE) || a.handler_lost(),
        _ => false,
    };
    assert!(ok, "undocumented answer {a:?}");
}

/// Waits until the app's own pool answers again (the fault has cleared).
async fn until_ready(store: &PostgresStore) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.ready().await.is_err() {
        assert!(Instant::now() < deadline, "PostgreSQL never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Starts a request for `key` whose handler works `work` ms, and waits until it runs; returns
/// the request and its handler's owner token.
async fn owner(app: &App, key: &'static str, work: u64) -> (tokio::task::JoinHandle<Answer>, u128) {
    let first = tokio::spawn({
        let url = app.url.clone();
        async move { send(&url, key, work).await }
    });
    until("the first handler runs", || {
        app.ledger.invocations(key) == 1
    })
    .await;
    (first, app.ledger.first_token(key))
}

/// One lease after the fault cleared, a retry is replayed or runs once, and the key then
/// holds exactly one commit.
async fn not_stuck(app: &App, key: &str) -> Answer {
    until_ready(&app.store).await;
    tokio::time::sleep(LEASE + Duration::from_millis(50)).await;
    let a = send(&app.url, key, SHORT_WORK).await;
    documented(&a);
    assert_eq!(
        a.status, 201,
        "{key}: stuck one lease after the fault: {a:?}"
    );
    assert_eq!(app.ledger.commits(key), 1, "{key}");
    let again = send(&app.url, key, SHORT_WORK).await;
    assert_eq!(
        (again.status, again.replayed),
        (201, true),
        "{key}: {again:?}"
    );
    assert_eq!(again.body, a.body);
    app.ledger.check_once();
    a
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
    not_stuck(&app, key).await;
    assert!(app.ledger.invocations(key) <= 2);
    assert_eq!(app.ledger.attempts(key), 1);

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
    answers.iter().for_each(documented);
    documented(&first);
    assert!(first.handler_lost(), "{first:?}");
    let refused = answers
        .iter()
        .filter(|a| a.is_problem(problem_types::STORE_UNAVAILABLE))
        .count();
    assert!(
        refused >= 2,
        "duplicates were refused during the outage: {answers:?}"
    );
    not_stuck(&app, key).await;
    assert!(app.ledger.invocations(key) <= 2);
    assert_eq!(app.ledger.attempts(key), 1);
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
    not_stuck(&app, key).await;
    assert!(app.ledger.invocations(key) <= 2);
    assert_eq!(app.ledger.attempts(key), 1);
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
    answers.iter().for_each(documented);
    documented(&first);
    assert!(first.handler_lost(), "{first:?}");
    let refused = answers
        .iter()
        .filter(|a| a.is_problem(problem_types::STORE_UNAVAILABLE))
        .count();
    assert!(refused >= 2, "{answers:?}");
    not_stuck(&app, key).await;
    assert!(app.ledger.invocations(key) <= 2);
    assert_eq!(app.ledger.attempts(key), 1);
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
    assert!(
        answers
            .iter()
            .filter(|a| a.is_problem(problem_types::STORE_UNAVAILABLE))
            .count()
            >= 2,
        "{answers:?}"
    );
    assert_eq!(
        app.ledger.invocations(key),
        1,
        "no duplicate ran while locked"
    );
    not_stuck(&app, key).await;
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
        for app in [&closed, &open, &closed] {
            let a = send(&app.url, key, 0).await;
            documented(&a);
            assert_eq!(a.status, 500, "{key}: {a:?}");
            assert!(
                a.is_problem(problem_types::UNREADABLE_RECORD),
                "{key}: {a:?}"
            );
        }
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
    not_stuck(&app, key).await;
    assert_eq!(app.ledger.attempts(key), 1);
}
