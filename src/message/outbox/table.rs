//! The outbox table: enqueue in the caller's transaction, backlog, purge.

use std::{sync::Arc, time::Duration};

use sqlx::{PgConnection, PgPool, Row};

use super::{OutboxError, OutboxEvent, schema};
use crate::{
    ConfigError,
    message::{
        MAX_ID_LEN, Message,
        postgres::{self, Table},
    },
};

/// The name in configuration errors.
pub(crate) const LAYER: &str = "outbox";
/// The longest aggregate accepted, in bytes.
pub const MAX_AGGREGATE_LEN: usize = 255;

/// An outbox table in PostgreSQL. Cheap to clone (the pool is shared).
///
/// ```no_run
/// use tower_rampart::message::{Message, outbox::{Outbox, OutboxEvent}};
///
/// # async fn run(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// let outbox = Outbox::new(pool.clone());
/// outbox.migrate().await?;
/// let mut tx = pool.begin().await?;
/// sqlx::query("INSERT INTO orders (id) VALUES ($1)").bind("order-42").execute(&mut *tx).await?;
/// let event = OutboxEvent::new("order-42", Message::new("evt-1", "order.placed", "{}"));
/// outbox.enqueue(&mut tx, event).await?; // published only if the order commits
/// tx.commit().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Outbox {
    pub(crate) pool: PgPool,
    pub(crate) table: Table,
    pub(crate) sql: Arc<schema::Statements>,
}

/// How many events wait, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Backlog {
    /// Unpublished rows.
    pub pending: u64,
    /// Unpublished rows whose last publication failed (waiting for their next attempt).
    pub failing: u64,
    /// The age of the oldest unpublished row (`None` when nothing waits).
    pub oldest_age: Option<Duration>,
}

impl Outbox {
    /// The outbox in table `rampart_outbox`.
    pub fn new(pool: PgPool) -> Self {
        Outbox::builder(pool)
            .build()
            .expect("the default table name is valid")
    }

    /// Settings other than the pool.
    pub fn builder(pool: PgPool) -> OutboxBuilder {
        OutboxBuilder { pool, table: None }
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The table's name as given (`schema.name` or `name`).
    pub fn table_name(&self) -> String {
        self.table.to_string()
    }

    /// The `NOTIFY` channel `enqueue` signals and relays `LISTEN` on: the table's name as given
    /// (`app.outbox`), or `rampart_outbox_` and a hash of it when that is longer than
    /// PostgreSQL's 63 bytes.
    pub fn channel(&self) -> &str {
        &self.sql.channel
    }

    /// The statements [`migrate`](Self::migrate) runs, for a migration tool of your own.
    ///
    /// ```
    /// # use sqlx::postgres::PgPoolOptions;
    /// use tower_rampart::message::outbox::Outbox;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # let pool = PgPoolOptions::new().connect_lazy("postgres://localhost/app").unwrap();
    /// let sql = Outbox::new(pool).schema_sql();
    /// assert!(sql.starts_with("CREATE TABLE IF NOT EXISTS \"rampart_outbox\""));
    /// # }
    /// ```
    pub fn schema_sql(&self) -> String {
        self.sql.create.clone()
    }

    /// Creates the table (and its schema) and its indexes if missing. Idempotent, and safe
    /// from several instances at once (an advisory lock serialises them).
    pub async fn migrate(&self) -> Result<(), sqlx::Error> {
        // Several instances migrating at once wait for each other (`IF NOT EXISTS` alone
        // races in the catalog).
        postgres::migrate(
            self.pool.clone(),
            postgres::lock_name(&self.table),
            self.schema_sql(),
        )
        .await
    }

    /// Writes `event` through `conn` (pass `&mut tx`, the business transaction): it becomes
    /// visible to relays when, and only if, that transaction commits. Returns the row's id.
    ///
    /// One round trip: the statement takes a transaction-scoped advisory lock on the event's
    /// aggregate (writers of one aggregate wait for each other until commit, so the ids of an
    /// aggregate follow commit order), inserts the row and signals the relays (`NOTIFY`,
    /// delivered at commit).
    ///
    /// # Errors
    /// - [`OutboxError::InvalidEvent`], before anything is sent: an aggregate empty or longer
    ///   than 255 bytes, a message id empty or longer than
    ///   [`MAX_ID_LEN`](crate::message::MAX_ID_LEN) bytes, a NUL character in the aggregate,
    ///   id, kind, a header or the correlation id (PostgreSQL's `text` refuses it). The
    ///   transaction is untouched.
    /// - [`OutboxError::DuplicateId`]: the message id is already in the table. As after any
    ///   failed statement, PostgreSQL has aborted the caller's transaction: roll it back.
    /// - [`OutboxError::Database`]: the statement failed (the transaction is aborted too).
    pub async fn enqueue(
        &self,
        conn: &mut PgConnection,
        event: impl Into<OutboxEvent>,
    ) -> Result<i64, OutboxError> {
        let (aggregate, message) = event.into().into_parts();
        validate(&aggregate, &message)?;
        let (id, kind, payload, headers, correlation) = message.into_parts();
        let (names, values): (Vec<String>, Vec<String>) = headers.into_iter().unzip();
        let row = sqlx::query(&self.sql.enqueue)
            .bind(aggregate)
            .bind(&id)
            .bind(kind)
            .bind(payload.as_ref())
            .bind(names)
            .bind(values)
            .bind(correlation)
            .fetch_one(conn)
            .await
            .map_err(|e| match &e {
                sqlx::Error::Database(d) if d.is_unique_violation() => {
                    OutboxError::DuplicateId(id.clone())
                }
                _ => OutboxError::Database(e),
            })?;
        Ok(row.try_get::<i64, _>("id")?)
    }

    /// The backlog now (one statement over the unpublished rows).
    pub async fn backlog(&self) -> Result<Backlog, OutboxError> {
        let row = sqlx::query(&self.sql.backlog).fetch_one(&self.pool).await?;
        let pending: i64 = row.try_get(0)?;
        let failing: i64 = row.try_get(1)?;
        let age: Option<f64> = row.try_get(2)?;
        Ok(Backlog {
            pending: u64::try_from(pending).unwrap_or(0),
            failing: u64::try_from(failing).unwrap_or(0),
            oldest_age: age.map(seconds),
        })
    }

    /// The age of the oldest unpublished row by id (`None` when nothing waits): one index
    /// look-up, for the readiness check.
    pub(crate) async fn oldest_age(&self) -> Result<Option<Duration>, sqlx::Error> {
        let age: Option<f64> = sqlx::query_scalar(&self.sql.oldest)
            .fetch_optional(&self.pool)
            .await?
            .flatten();
        Ok(age.map(seconds))
    }

    /// Deletes up to `limit` rows published more than `older_than` ago (by the database's
    /// clock), oldest first; returns how many. Unpublished rows are never deleted. Call it
    /// periodically, or in a loop until it returns less than `limit`. A deleted row's message
    /// id may be enqueued again.
    ///
    /// # Errors
    /// [`OutboxError::Config`] when `older_than` is above a year or `limit` is not within
    /// 1..=1,000,000; [`OutboxError::Database`] when the delete failed.
    pub async fn purge(&self, older_than: Duration, limit: u32) -> Result<u64, OutboxError> {
        let (micros, limit) = postgres::purge_args(LAYER, older_than, limit)?;
        let done = sqlx::query(&self.sql.purge)
            .bind(micros)
            .bind(limit)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

/// A non-negative number of seconds from PostgreSQL (clocks may disagree by a little).
fn seconds(s: f64) -> Duration {
    Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::MAX)
}

/// Refuses what PostgreSQL would refuse, or what breaks the relay's promises, before sending.
fn validate(aggregate: &str, m: &Message) -> Result<(), OutboxError> {
    let bad = |why: String| Err(OutboxError::InvalidEvent(why));
    if aggregate.is_empty() || aggregate.len() > MAX_AGGREGATE_LEN {
        return bad(format!(
            "aggregate must be 1..={MAX_AGGREGATE_LEN} bytes, got {}",
            aggregate.len()
        ));
    }
    if m.id().is_empty() || m.id().len() > MAX_ID_LEN {
        return bad(format!(
            "message id must be 1..={MAX_ID_LEN} bytes, got {}",
            m.id().len()
        ));
    }
    let nul = |field: &str, s: &str| {
        if s.contains('\0') {
            Err(OutboxError::InvalidEvent(format!(
                "{field} holds a NUL character (PostgreSQL text cannot)"
            )))
        } else {
            Ok(())
        }
    };
    nul("aggregate", aggregate)?;
    nul("message id", m.id())?;
    nul("kind", m.kind())?;
    if let Some(c) = m.correlation_id() {
        nul("correlation id", c)?;
    }
    for (k, v) in m.headers() {
        nul("a header name", k)?;
        nul(&format!("header {k:?}"), v)?;
    }
    Ok(())
}

/// Builds an [`Outbox`].
///
/// ```
/// # use sqlx::postgres::PgPoolOptions;
/// use tower_rampart::message::outbox::Outbox;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// # let pool = PgPoolOptions::new().connect_lazy("postgres://localhost/app").unwrap();
/// let outbox = Outbox::builder(pool.clone()).table("app.outbox").build().unwrap();
/// assert_eq!(outbox.table_name(), "app.outbox");
/// let err = Outbox::builder(pool).table("App.Outbox").build().unwrap_err();
/// assert_eq!(err.setting(), Some("table"));
/// # }
/// ```
#[derive(Debug)]
#[must_use]
pub struct OutboxBuilder {
    pool: PgPool,
    table: Option<String>,
}

impl OutboxBuilder {
    /// The table (`name` or `schema.name`; lowercase letters, digits, `_`; names up to 48
    /// bytes, schemas up to 63), `rampart_outbox` by default. Its notification channel has
    /// the same name (see [`Outbox::channel`]).
    pub fn table(mut self, name: impl Into<String>) -> Self {
        self.table = Some(name.into());
        self
    }

    /// The outbox, or what is wrong with the settings.
    pub fn build(self) -> Result<Outbox, ConfigError> {
        let table = Table::parse(LAYER, self.table.as_deref().unwrap_or("rampart_outbox"))?;
        Ok(Outbox {
            pool: self.pool,
            sql: Arc::new(schema::Statements::new(&table)),
            table,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(aggregate: &str, m: Message) -> String {
        match validate(aggregate, &m) {
            Err(OutboxError::InvalidEvent(why)) => why,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_events_are_refused_naming_the_field() {
        let ok = || Message::new("id", "kind", "{}");
        assert!(validate("a", &ok()).is_ok());
        assert!(validate(&"a".repeat(255), &Message::new("i".repeat(255), "k", "")).is_ok());
        assert!(refused("", ok()).contains("aggregate"));
        assert!(refused(&"a".repeat(256), ok()).contains("aggregate"));
        assert!(refused("a", Message::new("", "k", "")).contains("message id"));
        assert!(refused("a", Message::new("i".repeat(256), "k", "")).contains("message id"));
        assert!(refused("a\0", ok()).contains("aggregate"));
        assert!(refused("a", Message::new("i\0", "k", "")).contains("message id"));
        assert!(refused("a", Message::new("i", "k\0", "")).contains("kind"));
        assert!(refused("a", ok().with_correlation_id("c\0")).contains("correlation"));
        assert!(refused("a", ok().with_header("h\0", "v")).contains("header name"));
        assert!(refused("a", ok().with_header("h", "v\0")).contains("header \"h\""));
        // A NUL in the payload is fine: bytea.
        assert!(validate("a", &Message::new("i", "k", &b"\0"[..])).is_ok());
    }
}
