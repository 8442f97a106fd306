//! Exactly-once against a real redis-server under real faults: Redis paused (SIGSTOP) or killed
//! and restarted mid-handler, corrupt and foreign records, the key deleted (DEL, FLUSHALL)
//! mid-handler, a claim slower than the store timeout (CLIENT PAUSE), and `WAIT` for a replica
//! that goes away. Each app runs behind a real axum server, called by a real HTTP client.
//! (`WAIT` on a Redis Cluster whose other primaries have no replica: in
//! idempotency_redis_cluster_wait.rs; TLS and a least-privilege ACL user: in
//! idempotency_redis_tls.rs.)
//!
//! The handler counts its invocations and commits into a fenced ledger (one row per key, with
//! the owner token that wrote it; tests/common/ledger.rs); it selects on `lease().lost()` and
//! checks `is_held()` before committing, and answers 503 with `DoNotStore` when it lost its key.
//! For every scenario:
//! - commits <= 1 per key, and no handler ever tried to commit without holding its lease
//!   (the ledger's unique constraint is a backstop that these schedules never need);
//! - every answer is a documented status;
//! - no key is stuck: one lease after the fault clears, a retry is replayed or runs once.

mod common;

use std::time::{Duration, Instant};

use common::{
    http::Answer,
    ledger::{
        self, Limits, SHORT_WORK, documented, owner, recovered, scoped, send, told_and_refused,
        unreadable_in, until_ready,
    },
    redis_server::RedisServer,
};
use tower_rampart::idempotency::{OnStoreError, RedisStore, problem_types};

const LEASE: Duration = Duration::from_millis(400);
const STORE_TIMEOUT: Duration = Duration::from_millis(100);
/// The stale owner's work: far longer than it takes the layer to tell it the lease is lost.
const LONG_WORK: u64 = 3_000;

// ---------------------------------------------------------------------------------------------
// The app: the shared fenced ledger (tests/common/ledger.rs) over a `RedisStore`.

type App = ledger::App<RedisStore>;

/// The Redis key of a client key: the store's prefix, then the scoped key.
fn redis_key(key: &str) -> String {
    format!("idempotency:{}", scoped(key))
}

async fn app_with(
    store: RedisStore,
    lease: Duration,
    store_timeout: Duration,
    on_error: OnStoreError,
) -> App {
    let limits = Limits {
        lease,
        store_timeout,
        ttl: Duration::from_secs(600),
        on_error,
    };
    App::serve(store, limits).await
}

/// A new store connected to `redis`.
async fn connect(redis: &RedisServer) -> RedisStore {
    RedisStore::connect(&redis.url()).await.unwrap()
}

/// `app_with` on a new connection to `redis`.
async fn app_on(
    redis: &RedisServer,
    lease: Duration,
    timeout: Duration,
    on_error: OnStoreError,
) -> App {
    app_with(connect(redis).await, lease, timeout, on_error).await
}

async fn app(redis: &RedisServer) -> App {
    app_on(redis, LEASE, STORE_TIMEOUT, OnStoreError::FailClosed).await
}

/// Starts a request for `key` whose handler works for `LONG_WORK`, and waits until it runs;
/// returns the request and its handler's owner token.
async fn slow_owner(app: &App, key: &'static str) -> (tokio::task::JoinHandle<Answer>, u128) {
    owner(app, key, LONG_WORK).await
}

fn pttl(redis: &RedisServer, key: &str) -> i64 {
    redis
        .cli(&["PTTL", &redis_key(key)])
        .and_then(|s| s.parse().ok())
        .expect("PTTL answers an integer")
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// The redis-server's pid, from `INFO server`.
fn pid(redis: &RedisServer) -> String {
    let info = redis.cli(&["INFO", "server"]).unwrap();
    info.lines()
        .find_map(|l| l.trim().strip_prefix("process_id:"))
        .expect("INFO server names the process")
        .to_owned()
}

/// SIGSTOPs a process; SIGCONTs it when dropped (even if the test fails).
struct Stopped(String);

impl Stopped {
    fn stop(pid: String) -> Self {
        let ok = std::process::Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap();
        assert!(ok.success());
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &self.0])
            .status();
    }
}

// ---------------------------------------------------------------------------------------------
// a. Redis paused (SIGSTOP) for two leases mid-handler, duplicates arriving throughout.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_mid_handler_runs_the_key_once() {
    let redis = RedisServer::start();
    let app = app(&redis).await;
    let key = "a-paused";
    assert_eq!(send(&app.url, "a-warm-up", 0).await.status, 201);

    let (first, owner) = slow_owner(&app, key).await;

    let mut answers = Vec::new();
    {
        let _stopped = Stopped::stop(pid(&redis));
        let pause_ends = Instant::now() + LEASE * 2;
        while Instant::now() < pause_ends {
            // Each duplicate waits out its store timeout: Redis does not answer.
            answers.push(send(&app.url, key, SHORT_WORK).await);
        }
        // The owner learned it while Redis was still stopped: renewals failed for a lease.
        assert!(
            app.ledger.saw_loss(owner),
            "after two leases without a renewal, the owner was told its lease was lost"
        );
    } // SIGCONT
    // Duplicates keep arriving as Redis resumes and works off what queued up meanwhile.
    let resumed = Instant::now();
    while resumed.elapsed() < LEASE {
        answers.push(send(&app.url, key, SHORT_WORK).await);
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let first = first.await.unwrap();
    // The owner learned it while Redis was paused; the duplicates meanwhile were refused.
    told_and_refused(&app, key, &first, owner, &answers, LEASE).await;
}

// ---------------------------------------------------------------------------------------------
// b. redis-server killed mid-handler and restarted without persistence: the claim is gone.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_without_the_claim_tells_the_owner() {
    let mut redis = RedisServer::start();
    let app = app(&redis).await;
    let key = "b-restarted";
    assert_eq!(send(&app.url, "b-warm-up", 0).await.status, 201);

    let (first, owner) = slow_owner(&app, key).await;

    blocking(|| {
        redis.kill();
        redis.restart();
    });
    assert_eq!(
        redis.cli(&["EXISTS", &redis_key(key)]).as_deref(),
        Some("0")
    );
    until_ready(&app.store).await;
    // A duplicate after the restart finds no claim: it may run.
    let mut answers = Vec::new();
    for _ in 0..3 {
        answers.push(send(&app.url, key, SHORT_WORK).await);
    }
    let first = first.await.unwrap();
    answers.iter().for_each(documented);
    documented(&first);

    assert!(
        app.ledger.saw_loss(owner),
        "the first handler learned that its claim was lost: {first:?}"
    );
    assert!(first.handler_lost(), "{first:?}");
    assert!(
        app.ledger.books().rows.get(&scoped(key)) != Some(&owner),
        "the stale owner never committed"
    );
    recovered(&app, key, LEASE).await;
}

// ---------------------------------------------------------------------------------------------
// c. Corrupt, foreign and expiry-less records: never run, never stuck forever.

async fn raw(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn get_raw(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> Vec<u8> {
    redis::cmd("GET")
        .arg(redis_key(key))
        .query_async(conn)
        .await
        .unwrap()
}

/// `SET` without `PX`: no expiry.
async fn set_raw(conn: &mut redis::aio::MultiplexedConnection, key: &str, value: &[u8]) {
    let () = redis::cmd("SET")
        .arg(redis_key(key))
        .arg(value)
        .query_async(conn)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_records_never_run_and_always_expire() {
    let redis = RedisServer::start();
    // A generous store timeout: these answers must not be confused with a slow store.
    let timeout = Duration::from_millis(300);
    let closed = app_on(&redis, LEASE, timeout, OnStoreError::FailClosed).await;
    let open = app_on(&redis, LEASE, timeout, OnStoreError::FailOpen).await;
    let mut conn = raw(&redis).await;

    // A real completed record, to damage.
    let done = send(&closed.url, "c-real", 0).await;
    assert_eq!(done.status, 201);
    let record = get_raw(&mut conn, "c-real").await;
    assert_eq!(record[0], 2, "a completed record");
    assert!(record.len() > 60);

    // Unreadable values: garbage, other types, truncated records.
    set_raw(&mut conn, "c-garbage", b"\xff\x00not a record\x01\x02").await;
    set_raw(&mut conn, "c-empty", b"").await;
    set_raw(&mut conn, "c-number", b"12345").await;
    set_raw(&mut conn, "c-cut-header", &record[..40]).await;
    set_raw(&mut conn, "c-cut-body", &record[..record.len() - 3]).await;
    let mut bad_version = record.clone();
    bad_version[49] = 0xee; // the completion's version byte
    set_raw(&mut conn, "c-bad-version", &bad_version).await;
    let mut in_flight_long = record[..49].to_vec();
    in_flight_long[0] = 1;
    in_flight_long.push(0); // an in-flight record is exactly 49 bytes
    set_raw(&mut conn, "c-in-flight-long", &in_flight_long).await;
    let others: [(&str, &str, &[&str]); 3] = [
        ("RPUSH", "c-list", &["a", "b"]),
        ("HSET", "c-hash", &["state", "done"]),
        ("SADD", "c-set", &["x"]),
    ];
    for (cmd, key, args) in others {
        let _: redis::Value = redis::cmd(cmd)
            .arg(redis_key(key))
            .arg(args)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let unreadable = [
        "c-garbage",
        "c-empty",
        "c-number",
        "c-cut-header",
        "c-cut-body",
        "c-bad-version",
        "c-in-flight-long",
        "c-list",
        "c-hash",
        "c-set",
    ];
    for key in unreadable {
        assert_eq!(pttl(&redis, key), -1, "{key} starts without expiry");
        unreadable_in(&[&closed, &open, &closed], key).await;
        let ttl = pttl(&redis, key);
        assert!(
            ttl > 0,
            "{key} got an expiry, so it is not stuck forever: {ttl}"
        );
        assert_eq!(closed.ledger.invocations(key), 0, "{key} never ran");
        assert_eq!(
            open.ledger.invocations(key),
            0,
            "{key} never ran, even failing open"
        );
    }

    // Readable records without expiry: answered from the record, and given an expiry.
    set_raw(&mut conn, "c-done-forever", &record).await;
    let a = send(&closed.url, "c-done-forever", 0).await;
    assert_eq!((a.status, a.replayed), (201, true), "{a:?}");
    assert_eq!(a.body, done.body);
    assert!(pttl(&redis, "c-done-forever") > 0);

    let mut other = record.clone();
    other[1] ^= 0xff; // another fingerprint
    set_raw(&mut conn, "c-other-request", &other).await;
    let a = send(&closed.url, "c-other-request", 0).await;
    documented(&a);
    assert_eq!(a.status, 422, "{a:?}");
    assert!(pttl(&redis, "c-other-request") > 0);

    // An in-flight record whose owner is gone and that never got an expiry: 409 for at most
    // one lease, then it runs.
    let mut orphan = record[..49].to_vec();
    orphan[0] = 1;
    set_raw(&mut conn, "c-orphan", &orphan).await;
    let a = send(&closed.url, "c-orphan", 0).await;
    documented(&a);
    assert!(a.is_problem(problem_types::IN_FLIGHT), "{a:?}");
    let ttl = pttl(&redis, "c-orphan");
    assert!(
        ttl > 0 && ttl <= LEASE.as_millis() as i64,
        "an orphaned claim lasts one lease: {ttl}"
    );
    tokio::time::sleep(LEASE + Duration::from_millis(50)).await;
    let a = send(&closed.url, "c-orphan", 0).await;
    assert_eq!((a.status, a.replayed), (201, false), "{a:?}");
    assert_eq!(closed.ledger.invocations("c-orphan"), 1);

    for key in ["c-done-forever", "c-other-request"] {
        assert_eq!(closed.ledger.invocations(key), 0, "{key}");
    }
    closed.ledger.check_once();
    open.ledger.check_once();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_record_expires_after_its_ttl_and_the_key_runs_again() {
    let redis = RedisServer::start();
    let ttl = Duration::from_millis(500);
    let store = connect(&redis).await.unreadable_ttl(ttl).unwrap();
    let app = app_with(
        store,
        LEASE,
        Duration::from_millis(300),
        OnStoreError::FailOpen,
    )
    .await;
    let mut conn = raw(&redis).await;
    set_raw(&mut conn, "c-expiring", b"garbage").await;
    let a = send(&app.url, "c-expiring", 0).await;
    assert!(a.is_problem(problem_types::UNREADABLE_RECORD), "{a:?}");
    let left = pttl(&redis, "c-expiring");
    assert!(left > 0 && left <= ttl.as_millis() as i64, "{left}");
    assert_eq!(app.ledger.invocations("c-expiring"), 0);
    tokio::time::sleep(ttl + Duration::from_millis(50)).await;
    let a = send(&app.url, "c-expiring", 0).await;
    assert_eq!((a.status, a.replayed), (201, false), "{a:?}");
    assert_eq!(app.ledger.invocations("c-expiring"), 1);
}

// ---------------------------------------------------------------------------------------------
// d. The key deleted (DEL, FLUSHALL) mid-handler.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_deleted_mid_handler_loses_the_lease() {
    let redis = RedisServer::start();
    let app = app(&redis).await;
    assert_eq!(send(&app.url, "d-warm-up", 0).await.status, 201);

    // DEL, with a duplicate right behind it that may run; FLUSHALL, with none.
    for (key, wipe, duplicate) in [("d-del", "DEL", true), ("d-flushall", "FLUSHALL", false)] {
        let (first, owner) = slow_owner(&app, key).await;
        let rk = redis_key(key);
        let args: &[&str] = if wipe == "DEL" {
            &["DEL", &rk]
        } else {
            &["FLUSHALL"]
        };
        assert_eq!(
            redis.cli(args).as_deref(),
            Some(if wipe == "DEL" { "1" } else { "OK" })
        );
        let dup = if duplicate {
            let a = send(&app.url, key, SHORT_WORK).await;
            documented(&a);
            Some(a)
        } else {
            None
        };
        let first = first.await.unwrap();
        documented(&first);
        assert!(
            first.handler_lost(),
            "{wipe}: {first:?} (duplicate: {dup:?})"
        );
        assert!(
            app.ledger.saw_loss(owner),
            "{wipe}: lease().lost() resolved"
        );
        recovered(&app, key, LEASE).await;
    }
}

// ---------------------------------------------------------------------------------------------
// e. A claim slower than the store timeout lands after the layer gave up on it.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_claim_does_not_hold_the_key_for_a_lease() {
    let redis = RedisServer::start();
    let lease = Duration::from_millis(600);
    let timeout = Duration::from_millis(80);
    let pause = Duration::from_millis(250);
    let app = app_on(&redis, lease, timeout, OnStoreError::FailClosed).await;
    let key = "e-late";
    assert_eq!(send(&app.url, "e-warm-up", 0).await.status, 201);

    let ms = pause.as_millis().to_string();
    assert_eq!(
        redis.cli(&["CLIENT", "PAUSE", &ms, "ALL"]).as_deref(),
        Some("OK")
    );
    let a = send(&app.url, key, SHORT_WORK).await;
    documented(&a);
    assert!(a.is_problem(problem_types::STORE_UNAVAILABLE), "{a:?}");
    assert_eq!(app.ledger.invocations(key), 0);
    // Returns once the pause is over; the claim has landed by then.
    assert_eq!(blocking(|| redis.cli(&["PING"])).as_deref(), Some("PONG"));

    // The late claim would hold the key until a lease after the pause. Its release, sent in
    // the background, needs a moment: on a Redis that never ran the release script, the
    // releases queued during the pause meet NOSCRIPT after their caller gave up on them, so
    // only the next attempt (tens of ms later) loads the script and frees the key. A quarter
    // lease after the pause, well within the late claim's lease, the retry runs.
    tokio::time::sleep(lease / 4).await;
    let a = send(&app.url, key, SHORT_WORK).await;
    documented(&a);
    assert_eq!((a.status, a.replayed), (201, false), "{a:?}");
    assert_eq!(app.ledger.invocations(key), 1);
    let again = send(&app.url, key, SHORT_WORK).await;
    assert_eq!((again.status, again.replayed), (201, true), "{again:?}");
    app.ledger.check_once();
}

// ---------------------------------------------------------------------------------------------
// f. WAIT for a replica.

fn link_up(replica: &RedisServer) -> bool {
    replica
        .cli(&["INFO", "replication"])
        .is_some_and(|i| i.lines().any(|l| l.trim() == "master_link_status:up"))
}

/// Waits until `replica` has synced with its primary; `never` is the failure message.
async fn until_synced(replica: &RedisServer, never: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !blocking(|| link_up(replica)) {
        assert!(Instant::now() < deadline, "{never}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_a_replica_refuses_when_it_is_gone() {
    let primary = RedisServer::start();
    let port = primary.port.to_string();
    let mut replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]);
    until_synced(&replica, "the replica never synced").await;
    let store = connect(&primary)
        .await
        .wait_for_replicas(1, Duration::from_millis(100))
        .unwrap();
    let app = app_with(
        store,
        Duration::from_millis(600),
        Duration::from_millis(300),
        OnStoreError::FailClosed,
    )
    .await;

    let a = send(&app.url, "f-replicated", 0).await;
    assert_eq!((a.status, a.replayed), (201, false), "{a:?}");
    assert_eq!(
        replica
            .cli(&["EXISTS", &redis_key("f-replicated")])
            .as_deref(),
        Some("1"),
        "the replica has the completion"
    );

    blocking(|| replica.kill());
    let a = send(&app.url, "f-unreplicated", 0).await;
    documented(&a);
    assert!(a.is_problem(problem_types::STORE_UNAVAILABLE), "{a:?}");
    assert_eq!(app.ledger.invocations("f-unreplicated"), 0, "not run");
    // A replay needs no new write, so no replica.
    let a = send(&app.url, "f-replicated", 0).await;
    assert_eq!((a.status, a.replayed), (201, true), "{a:?}");

    // The replica comes back: the refused key runs once.
    blocking(|| replica.restart());
    until_synced(&replica, "the replica never synced again").await;
    let a = send(&app.url, "f-unreplicated", 0).await;
    assert_eq!((a.status, a.replayed), (201, false), "{a:?}");
    assert_eq!(app.ledger.invocations("f-unreplicated"), 1);
    app.ledger.check_once();
}
