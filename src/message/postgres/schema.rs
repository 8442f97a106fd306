//! The shipped schemas and their migration: idempotent, and safe from several instances at
//! once (an advisory lock per table serialises them; `IF NOT EXISTS` alone races in the
//! catalog).

use std::{future::Future, pin::Pin};

use sqlx::{Executor, PgPool};

use super::table::Table;

/// The inbox table's SQL.
pub(crate) fn inbox_sql(t: &Table) -> String {
    format!(
        "{schema}CREATE TABLE IF NOT EXISTS {q} (\n    \
         key          text        PRIMARY KEY,\n    \
         message_id   text        NOT NULL,\n    \
         kind         text        NOT NULL,\n    \
         fingerprint  bytea       NOT NULL,\n    \
         processed_at timestamptz NOT NULL DEFAULT now()\n\
         );\n\
         CREATE INDEX IF NOT EXISTS {i} ON {q} (processed_at);\n",
        schema = t.create_schema(),
        q = t.quoted(),
        i = t.index("processed_at"),
    )
}

/// The dead-letter table's SQL.
pub(crate) fn dead_letters_sql(t: &Table) -> String {
    format!(
        "{schema}CREATE TABLE IF NOT EXISTS {q} (\n    \
         id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,\n    \
         message_id     text        NOT NULL,\n    \
         kind           text        NOT NULL,\n    \
         payload        bytea       NOT NULL,\n    \
         headers        jsonb       NOT NULL,\n    \
         correlation_id text,\n    \
         reason         text        NOT NULL,\n    \
         attempts       bigint      NOT NULL,\n    \
         first_error    text,\n    \
         last_error     text        NOT NULL,\n    \
         dead_at        timestamptz NOT NULL,\n    \
         replayed_at    timestamptz\n\
         );\n\
         CREATE INDEX IF NOT EXISTS {i} ON {q} (id) WHERE replayed_at IS NULL;\n\
         CREATE UNIQUE INDEX IF NOT EXISTS {u} ON {q} (message_id, reason, md5(payload)) \
         WHERE replayed_at IS NULL;\n",
        schema = t.create_schema(),
        q = t.quoted(),
        i = t.index("pending"),
        u = t.index("once"),
    )
}

/// Runs `sql` in one transaction under an advisory lock named after the table.
///
/// Boxed: rustc cannot prove an `async fn` borrowing a transaction `Send` for callers that
/// spawn it (the higher-ranked `Executor` bound); a boxed future is checked here, once.
pub(crate) fn migrate(
    pool: PgPool,
    lock: String,
    sql: String,
) -> Pin<Box<dyn Future<Output = Result<(), sqlx::Error>> + Send>> {
    Box::pin(async move {
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(lock)
            .execute(&mut *tx)
            .await?;
        // A plain string runs as a simple query: several statements at once.
        (&mut *tx).execute(sql.as_str()).await?;
        tx.commit().await
    })
}

/// The advisory lock's name for `table`.
pub(crate) fn lock_name(table: &Table) -> String {
    format!("tower_rampart.migrate:{table}")
}
