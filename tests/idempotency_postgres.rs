//! `PostgresStore` against the machine's real PostgreSQL, each test in a database of its own:
//! the shared store contract (default table, and a schema-qualified one), the migration
//! (idempotent, concurrent), retention, the table missing, and the layer over real HTTP (a
//! retried POST runs once; concurrent duplicates across two instances run once). The fault
//! matrix is in idempotency_postgres_faults.rs.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

use axum::http::StatusCode;
use common::{
    http::{Answer, client, serve},
    ledger::{counting, post_key},
    postgres::TestDb,
    store_contract::{contract, created, fp},
};
use sqlx::{Executor, PgPool, Row};
use tower_rampart::idempotency::{
    Claim, IDEMPOTENT_REPLAYED, IdempotencyLayer, OnStoreError, OwnerToken, PostgresStore, Store,
    StoreErrorKind, problem_types,
};

const LEASE: Duration = Duration::from_millis(300);
const TTL: Duration = Duration::from_millis(600);

async fn real_sleep(d: Duration) {
    tokio::time::sleep(d).await
}

async fn migrated(pool: PgPool) -> PostgresStore {
    let store = PostgresStore::new(pool);
    store.migrate().await.unwrap();
    store
}

async fn rows(pool: &PgPool, table: &str) -> i64 {
    sqlx::query(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(pool)
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_keeps_the_contract() {
    let db = TestDb::new("idem_contract").await;
    let pool = db.pool(4).await;
    pool.execute("CREATE SCHEMA billing").await.unwrap();
    let default = migrated(pool.clone()).await;
    let qualified = PostgresStore::new(pool.clone())
        .table("billing.order")
        .unwrap();
    qualified.migrate().await.unwrap();
    // Both at once: each in its own table, so the same keys do not meet.
    tokio::join!(
        contract(default, LEASE, TTL, real_sleep),
        contract(qualified, LEASE, TTL, real_sleep),
    );
    assert!(rows(&pool, "rampart_idempotency").await > 0);
    assert!(rows(&pool, "billing.\"order\"").await > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migration_is_idempotent_and_safe_to_run_concurrently() {
    let db = TestDb::new("idem_migrate").await;
    let pool = db.pool(8).await;
    // Eight instances starting at once: CREATE TABLE IF NOT EXISTS alone would race on the
    // catalog (a duplicate key error); the advisory lock serialises them.
    let runs: Vec<_> = (0..8)
        .map(|_| {
            let store = PostgresStore::new(pool.clone());
            tokio::spawn(async move { store.migrate().await })
        })
        .collect();
    for r in runs {
        r.await.unwrap().unwrap();
    }
    let store = PostgresStore::new(pool.clone());
    store.migrate().await.unwrap();
    let index: i64 = sqlx::query(
        "SELECT count(*) FROM pg_indexes WHERE tablename = 'rampart_idempotency' \
         AND indexname = 'rampart_idempotency_expires_at'",
    )
    .fetch_one(&pool)
    .await
    .unwrap()
    .get(0);
    assert_eq!(index, 1);
    let token = OwnerToken::new();
    assert_eq!(
        store.claim("k", &fp(1), token, LEASE).await.unwrap(),
        Claim::New
    );
    // The shipped SQL, run by hand (as `psql -f` would), is idempotent too.
    sqlx::raw_sql(store.schema_sql())
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(rows(&pool, "rampart_idempotency").await, 1, "kept the row");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_table_is_a_clear_error_and_migrate_fixes_it() {
    let db = TestDb::new("idem_missing").await;
    let pool = db.pool(2).await;
    let store = PostgresStore::new(pool.clone()).table("nowhere").unwrap();

    let err = store
        .claim("k", &fp(1), OwnerToken::new(), LEASE)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Unavailable);
    let msg = err.to_string();
    assert!(
        msg.contains("\"nowhere\" does not exist") && msg.contains("migrate()"),
        "{msg}"
    );
    let err = store.ready().await.unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");

    // Behind the layer: 503, the handler never runs.
    let runs = Arc::new(AtomicUsize::new(0));
    let url = app(store.clone(), runs.clone(), Duration::ZERO).await;
    let a = pay(&url, "k").await;
    assert_eq!(a.status, 503, "{a:?}");
    assert!(a.is_problem(problem_types::STORE_UNAVAILABLE), "{a:?}");
    assert_eq!(runs.load(SeqCst), 0);

    // The pool stays usable (the error left the connections in step), and once migrated
    // the same store works.
    store.migrate().await.unwrap();
    store.ready().await.unwrap();
    let a = pay(&url, "k").await;
    assert_eq!((a.status, a.replayed), (201, false), "{a:?}");
    assert_eq!(runs.load(SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_deletes_expired_rows_only() {
    let db = TestDb::new("idem_purge").await;
    let pool = db.pool(2).await;
    let store = migrated(pool.clone()).await;
    let long = Duration::from_secs(60);
    // Expiring soon: an abandoned claim and a completed key. Staying: a live claim, a key
    // completed for long.
    let _ = store
        .claim("abandoned", &fp(1), OwnerToken::new(), LEASE)
        .await;
    let t = OwnerToken::new();
    let _ = store.claim("done-short", &fp(1), t, long).await;
    assert!(
        store
            .complete("done-short", &fp(1), t, &created("x"), LEASE)
            .await
            .unwrap()
    );
    let _ = store.claim("live", &fp(1), OwnerToken::new(), long).await;
    let t = OwnerToken::new();
    let _ = store.claim("done-long", &fp(1), t, LEASE).await;
    assert!(
        store
            .complete("done-long", &fp(1), t, &created("y"), long)
            .await
            .unwrap()
    );
    assert_eq!(
        store.purge_expired(100).await.unwrap(),
        0,
        "nothing due yet"
    );
    tokio::time::sleep(LEASE + Duration::from_millis(50)).await;
    assert_eq!(store.purge_expired(0).await.unwrap(), 0);
    assert_eq!(
        store.purge_expired(1).await.unwrap(),
        1,
        "at most the limit"
    );
    assert_eq!(store.purge_expired(100).await.unwrap(), 1);
    assert_eq!(store.purge_expired(100).await.unwrap(), 0);
    let left: Vec<Vec<u8>> = sqlx::query("SELECT key FROM rampart_idempotency ORDER BY key")
        .fetch_all(&pool)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left, [b"done-long".to_vec(), b"live".to_vec()]);
    assert_eq!(
        store
            .claim("done-long", &fp(1), OwnerToken::new(), LEASE)
            .await
            .unwrap(),
        Claim::Completed(created("y"))
    );
}

#[tokio::test]
async fn settings_are_validated() {
    // A lazy pool: no connection is needed to build and check a store.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .connect_lazy("postgres://postgres@127.0.0.1:5432/postgres")
        .unwrap();
    let store = PostgresStore::new(pool);
    assert_eq!(store.table_name(), PostgresStore::DEFAULT_TABLE);
    for bad in ["", "Keys", "a.b.c", "k;drop", "9k", "s.", ".t"] {
        let err = store.clone().table(bad).unwrap_err();
        assert_eq!(err.setting(), Some("table"), "{bad}: {err}");
    }
    let err = store.clone().timeout(Duration::ZERO).unwrap_err();
    assert_eq!(err.setting(), Some("timeout"));
    let err = store.clone().timeout(Duration::MAX).unwrap_err();
    assert_eq!(err.setting(), Some("timeout"));
    assert!(store.clone().timeout(Duration::from_millis(1)).is_ok());
    let s = store.table("app_1.keys_2").unwrap();
    assert!(format!("{s:?}").contains("app_1.keys_2"));
}

// ---------------------------------------------------------------------------------------------
// The layer over real HTTP.

/// An app whose `/pay` counts executions in `runs`, taking `work`.
async fn app(store: PostgresStore, runs: Arc<AtomicUsize>, work: Duration) -> String {
    let layer = IdempotencyLayer::builder()
        .store(store)
        .global_keys()
        .lease(Duration::from_secs(2))
        .store_timeout(Duration::from_secs(1))
        .on_store_error(OnStoreError::FailClosed)
        .build()
        .unwrap();
    let router = counting(runs, work).layer(layer);
    format!("{}/pay", serve(router).await)
}

async fn pay(url: &str, key: &str) -> Answer {
    post_key(url, key, None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_post_runs_once_and_is_replayed() {
    let db = TestDb::new("idem_retry").await;
    let store = migrated(db.pool(4).await).await;
    let runs = Arc::new(AtomicUsize::new(0));
    let url = app(store, runs.clone(), Duration::ZERO).await;

    let first = pay(&url, "order-1").await;
    assert_eq!((first.status, first.replayed), (201, false), "{first:?}");
    for _ in 0..3 {
        let again = pay(&url, "order-1").await;
        assert_eq!((again.status, again.replayed), (201, true), "{again:?}");
        assert_eq!(again.body, first.body);
    }
    assert_eq!(runs.load(SeqCst), 1);
    // Another body with the key is a mismatch.
    let res = client()
        .post(&url)
        .header("idempotency-key", "order-1")
        .body("{\"amount\":2}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let res = pay(&url, "order-2").await;
    assert_eq!(res.status, 201);
    assert_eq!(runs.load(SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_sharing_postgres_run_once() {
    let db = TestDb::new("idem_shared").await;
    let runs = Arc::new(AtomicUsize::new(0));
    // Two instances, each with its own pool (as two processes would have).
    let a = app(
        migrated(db.pool(4).await).await,
        runs.clone(),
        Duration::from_millis(200),
    )
    .await;
    let b = app(
        migrated(db.pool(4).await).await,
        runs.clone(),
        Duration::from_millis(200),
    )
    .await;
    let calls: Vec<_> = (0..20)
        .map(|i| {
            let url = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move { pay(&url, "shared").await })
        })
        .collect();
    let mut created = 0;
    for c in calls {
        let answer = c.await.unwrap();
        match answer.status {
            201 => created += 1,
            409 => assert!(answer.is_problem(problem_types::IN_FLIGHT), "{answer:?}"),
            _ => panic!("{answer:?}"),
        }
    }
    assert!(created >= 1);
    assert_eq!(runs.load(SeqCst), 1, "one execution across both instances");
    let from_b = pay(&b, "shared").await;
    assert!(from_b.replayed, "{from_b:?}");
    let from_a = pay(&a, "shared").await;
    assert_eq!(from_a.body, from_b.body);
    let res = client()
        .post(&a)
        .header("idempotency-key", "shared")
        .body("{\"amount\":1}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()[IDEMPOTENT_REPLAYED], "true");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_too_long_for_the_index_is_an_error_not_a_panic() {
    let db = TestDb::new("idem_long_key").await;
    let store = migrated(db.pool(2).await).await;
    // Random hex: compressed, still past the b-tree's limit of about 2.7 KB per entry.
    let key: String = (0..500)
        .map(|_| OwnerToken::new().as_u128())
        .map(|n| format!("{n:032x}"))
        .collect();
    let err = store
        .claim(&key, &fp(1), OwnerToken::new(), LEASE)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Unavailable, "{err}");
    // The store is fine for the next key.
    let t = OwnerToken::new();
    assert_eq!(
        store.claim("short", &fp(1), t, LEASE).await.unwrap(),
        Claim::New
    );
}

/// Claims `key` from `n` tasks at once (distinct tokens, a lease far longer than the race);
/// how many were answered `New` (every other answer must be `InFlight`).
async fn race(store: &PostgresStore, key: &str, n: usize) -> usize {
    let claims: Vec<_> = (0..n)
        .map(|_| {
            let (store, key) = (store.clone(), key.to_owned());
            tokio::spawn(async move {
                let lease = Duration::from_secs(60);
                store.claim(&key, &fp(1), OwnerToken::new(), lease).await
            })
        })
        .collect();
    let mut new = 0;
    for c in claims {
        match c.await.unwrap().unwrap() {
            Claim::New => new += 1,
            Claim::InFlight { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    new
}

/// Races for a new key, then for a key whose claim has expired (a takeover race).
async fn races(store: &PostgresStore, rounds: usize) {
    for round in 0..rounds {
        let fresh = format!("fresh-{round}");
        assert_eq!(race(store, &fresh, 40).await, 1, "{fresh}");
        let expired = format!("expired-{round}");
        let t = OwnerToken::new();
        let short = Duration::from_millis(1);
        assert_eq!(
            store.claim(&expired, &fp(1), t, short).await.unwrap(),
            Claim::New
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(race(store, &expired, 40).await, 1, "{expired}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_of_one_key_make_one_owner() {
    let db = TestDb::new("idem_race").await;
    let store = migrated(db.pool(8).await).await;
    races(&store, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_claims_on_a_serializable_pool_are_retried_not_refused() {
    let db = TestDb::new("idem_serializable").await;
    // Some services make every transaction serializable: racing claims of one key then fail
    // with serialization errors, which the store runs again with a fresh snapshot.
    let options: sqlx::postgres::PgConnectOptions = db.url().parse().unwrap();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect_with(options.options([("default_transaction_isolation", "serializable")]))
        .await
        .unwrap();
    let store = migrated(pool).await;
    races(&store, 3).await;
}
