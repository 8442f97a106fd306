//! Running one statement within the store's timeout, on a pooled connection that is closed,
//! not reused, when the statement was cut short.

use std::time::Duration;

use sqlx::{
    PgPool, Postgres,
    pool::PoolConnection,
    postgres::{PgArguments, PgRow},
    query::Query,
};

use super::super::StoreError;

/// A pooled connection that goes back to the pool only once its statement finished. A
/// statement cut short (the store's timeout, or a caller that gave up) leaves the connection
/// mid-protocol; the pool's check on return would wait for the server to finish it, which may
/// be blocked on a row lock or a stalled network for long. Closing it frees the pool slot now.
struct Held(Option<PoolConnection<Postgres>>);

impl Held {
    /// The statement finished: the connection is reusable.
    fn finished(mut self) {
        self.0.take();
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(conn) = &mut self.0 {
            conn.close_on_drop();
        }
    }
}

/// Runs the statement `query` makes on a connection of `pool`, acquiring included, within
/// `limit`. `table` names the table in the error for a missing one.
///
/// A serialization failure or a deadlock (possible when the pool's transactions default to
/// repeatable read or serializable) rolled the statement back: it runs again, with a fresh
/// snapshot that sees the row it raced with, until the limit.
pub(super) async fn fetch_optional<'q>(
    pool: &PgPool,
    limit: Duration,
    table: &str,
    query: impl Fn() -> Query<'q, Postgres, PgArguments>,
) -> Result<Option<PgRow>, StoreError> {
    let mut held = Held(None);
    let work = async {
        let conn = held.0.insert(pool.acquire().await?);
        loop {
            match query().fetch_optional(&mut **conn).await {
                Err(e) if retryable(&e) => continue,
                done => return done,
            }
        }
    };
    match tokio::time::timeout(limit, work).await {
        Ok(Ok(row)) => {
            held.finished();
            Ok(row)
        }
        Err(_) => Err(StoreError::new(format!(
            "PostgreSQL did not answer within {limit:?}"
        ))),
        Ok(Err(e)) => {
            // The server answered with an error: the protocol is back in step.
            if matches!(e, sqlx::Error::Database(_)) {
                held.finished();
            }
            Err(store_error(e, table))
        }
    }
}

/// serialization_failure, deadlock_detected: the statement was rolled back and may run again.
fn retryable(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("40001" | "40P01")))
}

/// A database error, with what to do about a missing table.
pub(super) fn store_error(e: sqlx::Error, table: &str) -> StoreError {
    if let sqlx::Error::Database(db) = &e {
        // undefined_table
        if db.code().as_deref() == Some("42P01") {
            return StoreError::new(format!(
                "the idempotency table {table} does not exist: create it with \
                 PostgresStore::migrate(), or run the SQL of PostgresStore::schema_sql() ({e})"
            ));
        }
    }
    StoreError::new(e)
}
