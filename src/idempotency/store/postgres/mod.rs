//! PostgreSQL (sqlx): one row per idempotency key, one statement per store operation.

mod exec;
mod ops;
mod sql;

use std::{fmt, sync::Arc, time::Duration};

use sqlx::{
    Executor, PgConnection, PgPool, Postgres, Row,
    postgres::{PgArguments, PgRow},
    query::Query,
};

use self::sql::{DEFAULT_TABLE, LAYER, Statements, TableName};
use super::StoreError;
use crate::ConfigError;

/// Keys in a PostgreSQL table, shared by every instance of the service: for services that have
/// PostgreSQL and no Redis. Built over your own `sqlx` 0.8 pool; PostgreSQL 11 or newer.
///
/// Each idempotency key is one row (fingerprint, owner token, state, the completion in the
/// crate's versioned binary form, and when it expires). Each store operation is **one
/// statement**, atomic per key, and every lease and TTL is computed on the **database's clock**
/// (`now()`), so clock skew between instances does not matter:
/// - a claim is one `INSERT … ON CONFLICT (key) DO UPDATE … RETURNING`: it inserts a new key,
///   takes over an expired one, or writes a live row back unchanged and returns it (in flight,
///   another request, or the completion to replay). A replay or a conflict therefore costs one
///   round trip and one (unchanged) row version, which autovacuum reclaims;
/// - `complete`, `release` and `renew` touch the row only for its owner token (the fencing
///   token), so a stale owner never overwrites a successor's key.
///
/// **Schema.** [`migrate`](Self::migrate) creates the table and its index if missing
/// (idempotent, and safe to run from several instances at once: it holds a transaction-scoped
/// advisory lock). To run it yourself, take [`schema_sql`](Self::schema_sql) (the shipped
/// `schema.sql`, with your table's name). The store needs `SELECT, INSERT, UPDATE, DELETE` on
/// the table.
///
/// **Retention.** A row past its lease or TTL is free: the next claim of its key takes it over.
/// Rows whose key never comes back stay until [`purge_expired`](Self::purge_expired) deletes
/// them: call it periodically (say every minute) from one or more instances.
///
/// **Timeouts.** Each operation (waiting for a pooled connection included) is bounded by the
/// store's [`timeout`](Self::timeout) (1 s unless set); one that does not answer in time is
/// [`StoreErrorKind::Unavailable`](crate::idempotency::StoreErrorKind::Unavailable), and its connection is closed rather than reused. The server
/// may still finish such a statement later (one waiting on a row lock, say), and the owner
/// tokens keep that safe: a late `complete`, `renew` or `release` changes only its owner's row,
/// and a late claim's lease runs from when it was sent (`now()` is the statement's start), so it
/// never holds a key past that lease, and the layer releases it with its token meanwhile. To
/// have the server abandon such statements too, give the pool's connections `lock_timeout`,
/// `statement_timeout` or `client_connection_check_interval` (for example with
/// `PgConnectOptions::options([("lock_timeout", "1s")])`). Each operation holds one pooled
/// connection while its statement runs; size the pool for the requests in flight plus their
/// renewals (one every third of a lease per running key).
///
/// **Keys** are stored as bytes, the table's primary key: a key (scope included) that does not
/// fit a b-tree entry (about 2.7 KB once compressed; the layer's keys are at most 255
/// characters plus your scope) is refused with an `Unavailable` error.
///
/// **Unreadable rows.** A row whose completion does not decode (edited, truncated, written by a
/// newer version) is [`StoreErrorKind::Unreadable`](crate::idempotency::StoreErrorKind::Unreadable) (the layer answers 500 and never runs the
/// handler), and expires like any row. A row's end is never more than 400 days away after a
/// claim touches it, even if edited to `infinity`.
///
/// **Durability.** A claim or completion is acknowledged once committed on the server the pool
/// talks to; with asynchronous replication, a failover can lose the last ones, as with any
/// PostgreSQL write (`synchronous_commit` and synchronous standbys close that window).
///
/// **Isolation.** A statement rolled back by a serialization failure or a deadlock (racing
/// claims, on a pool whose transactions default to repeatable read or serializable) runs again,
/// within the store's timeout.
///
/// ```
/// use std::time::Duration;
/// use sqlx::postgres::PgPoolOptions;
/// use tower_rampart::idempotency::PostgresStore;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // `connect_lazy` opens no connection yet.
/// let pool = PgPoolOptions::new().connect_lazy("postgres://app@db.internal/payments")?;
/// let store = PostgresStore::new(pool)
///     .table("billing.idempotency_keys")?
///     .timeout(Duration::from_millis(500))?;
/// assert_eq!(store.table_name(), "billing.idempotency_keys");
/// assert!(store.schema_sql().contains("CREATE TABLE IF NOT EXISTS \"billing\".\"idempotency_keys\""));
/// // Names are checked: lowercase letters, digits and underscores, optionally `schema.table`.
/// assert!(PostgresStore::new(store.pool().clone()).table("keys; DROP TABLE users").is_err());
/// # Ok(())
/// # }
/// ```
///
/// Behind the layer:
///
/// ```no_run
/// use tower_rampart::idempotency::{IdempotencyLayer, PostgresStore};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = sqlx::PgPool::connect("postgres://app@db.internal/payments").await?;
/// let store = PostgresStore::new(pool);
/// store.migrate().await?;
/// // Retention: delete expired rows now and then.
/// let purger = store.clone();
/// tokio::spawn(async move {
///     loop {
///         let _ = purger.purge_expired(1_000).await;
///         tokio::time::sleep(std::time::Duration::from_secs(60)).await;
///     }
/// });
/// let layer = IdempotencyLayer::builder().store(store).build()?;
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    sql: Arc<Statements>,
    timeout: Duration,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("table", &self.sql.name.plain)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// The table used unless [`table`](Self::table) names another.
    pub const DEFAULT_TABLE: &'static str = DEFAULT_TABLE;

    /// Each operation's time limit unless [`timeout`](Self::timeout) sets another.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

    /// A store over `pool`, in the table [`DEFAULT_TABLE`](Self::DEFAULT_TABLE) of the
    /// connections' search path, each operation bounded by
    /// [`DEFAULT_TIMEOUT`](Self::DEFAULT_TIMEOUT). Opens no connection.
    pub fn new(pool: PgPool) -> Self {
        let name = TableName::parse(DEFAULT_TABLE).expect("the default table name is valid");
        PostgresStore {
            pool,
            sql: Arc::new(Statements::new(name)),
            timeout: Self::DEFAULT_TIMEOUT,
        }
    }

    /// The table: `table` or `schema.table`, each part of lowercase ASCII letters, digits and
    /// underscores, not starting with a digit (the table at most 52 bytes, so that its index's
    /// name fits PostgreSQL's 63). The schema must exist; [`migrate`](Self::migrate) creates
    /// only the table and its index.
    pub fn table(mut self, name: &str) -> Result<Self, ConfigError> {
        self.sql = Arc::new(Statements::new(TableName::parse(name)?));
        Ok(self)
    }

    /// Bounds each operation, waiting for a pooled connection included: one that does not
    /// answer in time is [`StoreErrorKind::Unavailable`](crate::idempotency::StoreErrorKind::Unavailable). More than zero and at most one year.
    /// Keep it at or under the layer's `store_timeout`.
    pub fn timeout(mut self, limit: Duration) -> Result<Self, ConfigError> {
        if limit.is_zero() {
            return Err(ConfigError::field(
                LAYER,
                "timeout",
                "must be more than zero",
            ));
        }
        self.timeout = ConfigError::check_duration(LAYER, "timeout", limit)?;
        Ok(self)
    }

    /// The table's name, as given.
    pub fn table_name(&self) -> &str {
        &self.sql.name.plain
    }

    /// The pool the store uses.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The migration SQL for this store's table: the shipped `schema.sql` with the table's and
    /// index's names. Idempotent (`IF NOT EXISTS`), for running it yourself (`psql -f`).
    pub fn schema_sql(&self) -> &str {
        &self.sql.schema
    }

    /// Creates the table and its index if they are missing. Idempotent, and safe to call from
    /// several instances at once: it runs in a transaction holding an advisory lock on the
    /// table's name, so concurrent migrations wait for each other. Not bounded by the store's
    /// timeout (it waits for a concurrent migration).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let fail = |e| exec::store_error(e, &self.sql.name.quoted);
        let lock = format!("tower_rampart.idempotency:{}", self.sql.name.quoted);
        let mut tx = self.pool.begin().await.map_err(fail)?;
        let conn: &mut PgConnection = &mut tx;
        conn.execute(
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))").bind(lock),
        )
        .await
        .map_err(fail)?;
        // No arguments: the simple protocol, which runs every statement of the script.
        conn.execute(self.sql.schema.as_str()).await.map_err(fail)?;
        tx.commit().await.map_err(fail)
    }

    /// Deletes up to `limit` rows whose lease or TTL ended (on the database's clock), oldest
    /// first, and says how many it deleted. Rows another statement holds are skipped, never
    /// waited for. Bounded by the store's timeout: keep `limit` to what deletes in that time
    /// (a few thousand rows), and call again while it returns `limit`.
    ///
    /// A deleted in-flight row whose owner is merely slow is treated as the contract says of
    /// a vanished key: its owner's `renew` answers that the lease is lost, and its `complete`
    /// still stores the outcome.
    pub async fn purge_expired(&self, limit: u32) -> Result<u64, StoreError> {
        if limit == 0 {
            return Ok(0);
        }
        let row = self
            .run(|| sqlx::query(&self.sql.purge).bind(i64::from(limit)))
            .await?
            .ok_or_else(|| bad("the purge returned no row"))?;
        let n: i64 = row.try_get(0).map_err(|e| bad(&e.to_string()))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Runs the statement `query` makes (again after a serialization failure), within the
    /// store's timeout.
    async fn run<'q>(
        &self,
        query: impl Fn() -> Query<'q, Postgres, PgArguments> + Send,
    ) -> Result<Option<PgRow>, StoreError> {
        exec::fetch_optional(&self.pool, self.timeout, &self.sql.name.quoted, query).await
    }
}

fn bad(what: &str) -> StoreError {
    StoreError::new(format!("unexpected answer from PostgreSQL: {what}"))
}
