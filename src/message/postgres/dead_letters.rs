//! Dead letters in a PostgreSQL table, and their replay after a fix.

use std::{
    fmt,
    future::poll_fn,
    sync::Arc,
    time::{Duration, SystemTime},
};

use sqlx::{PgPool, Row};
use tower_service::Service;

use super::{schema, table::Table, table::read_message, table::storable};
use crate::{
    BoxError, ConfigError,
    message::{DeadLetter, DeadLetterReason, DeadLetterSink, Message, SinkError},
};

const LAYER: &str = "postgres dead letters";

struct Sql {
    table: Table,
    insert: String,
    take: String,
    mark: String,
    pending: String,
}

/// A [`DeadLetterSink`] that keeps one row per dead letter, committed before
/// [`send`](DeadLetterSink::send) returns, and replays them after a fix.
///
/// ```
/// use sqlx::postgres::PgPoolOptions;
/// use tower_rampart::message::postgres::PgDeadLetters;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_rampart::ConfigError> {
/// // (connect_lazy: no connection until first use)
/// let pool = PgPoolOptions::new().connect_lazy("postgres://localhost/app").unwrap();
/// let letters = PgDeadLetters::new(pool.clone()); // table `rampart_dead_letters`
/// let elsewhere = PgDeadLetters::builder(pool).table("ops.dead_letters").build()?;
/// # let _ = (letters, elsewhere);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct PgDeadLetters {
    pool: PgPool,
    sql: Arc<Sql>,
}

impl fmt::Debug for PgDeadLetters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgDeadLetters")
            .field("table", &self.sql.table.to_string())
            .finish_non_exhaustive()
    }
}

impl PgDeadLetters {
    /// Dead letters in table `rampart_dead_letters` (search path).
    pub fn new(pool: PgPool) -> Self {
        PgDeadLetters::builder(pool)
            .build()
            .expect("the default table name is valid")
    }

    /// Settings other than the defaults.
    pub fn builder(pool: PgPool) -> PgDeadLettersBuilder {
        PgDeadLettersBuilder {
            pool,
            table: "rampart_dead_letters".into(),
        }
    }

    /// The SQL [`migrate`](Self::migrate) runs, for a migration tool of your own.
    pub fn schema_sql(&self) -> String {
        schema::dead_letters_sql(&self.sql.table)
    }

    /// Creates the table and its index when missing. Idempotent and safe from several
    /// instances at once (an advisory lock serialises them).
    pub async fn migrate(&self) -> Result<(), sqlx::Error> {
        schema::migrate(
            self.pool.clone(),
            schema::lock_name(&self.sql.table),
            self.schema_sql(),
        )
        .await
    }

    /// How many letters wait for replay (all, or those dead-lettered for `reason`).
    pub async fn pending(&self, reason: Option<DeadLetterReason>) -> Result<u64, sqlx::Error> {
        let n: i64 = sqlx::query_scalar(&self.sql.pending)
            .bind(reason.map(|r| r.as_str()))
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Replays up to `limit` letters not replayed yet (all, or those dead-lettered for
    /// `reason`), oldest first: each original message (id, kind, payload, headers, correlation
    /// id, as first delivered) goes to `publisher`, and the letter is marked replayed only
    /// once the publisher succeeded. Returns how many were replayed.
    ///
    /// Each letter is taken with `FOR UPDATE SKIP LOCKED` and stays locked while it is
    /// published: several replayers at once never replay one letter twice. A replayer that
    /// dies between the publish and the mark leaves the letter pending, to be published again:
    /// consumers dedupe it by its id (the inbox).
    ///
    /// # Errors
    /// Stops at the first failure: the letter at fault stays pending, and the error says how
    /// many were replayed before it.
    ///
    /// ```no_run
    /// # use sqlx::postgres::PgPoolOptions;
    /// use tower_rampart::{BoxError, message::{DeadLetterReason, Message, postgres::PgDeadLetters}};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), BoxError> {
    /// # let pool = PgPoolOptions::new().connect_lazy("postgres://localhost/app").unwrap();
    /// let letters = PgDeadLetters::new(pool);
    /// // After deploying the fix for the poison messages: publish them again.
    /// let mut publisher = tower::service_fn(|m: Message| async move {
    ///     // ... publish `m` to the broker, waiting for its confirm ...
    ///     Ok::<_, BoxError>(())
    /// });
    /// let n = letters.replay(&mut publisher, 1000, Some(DeadLetterReason::Poison)).await?;
    /// println!("{n} letters replayed");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn replay<S>(
        &self,
        publisher: &mut S,
        limit: u32,
        reason: Option<DeadLetterReason>,
    ) -> Result<u64, ReplayError>
    where
        S: Service<Message>,
        S::Error: Into<BoxError>,
    {
        let mut replayed = 0u64;
        let store = |replayed| move |error| ReplayError::Store { replayed, error };
        for _ in 0..limit {
            let mut tx = self.pool.begin().await.map_err(store(replayed))?;
            let row = sqlx::query(&self.sql.take)
                .bind(reason.map(|r| r.as_str()))
                .fetch_optional(&mut *tx)
                .await
                .map_err(store(replayed))?;
            let Some(row) = row else { break };
            let (id, message) = read_letter(&row).map_err(store(replayed))?;
            let sent = async {
                poll_fn(|cx| publisher.poll_ready(cx)).await?;
                publisher.call(message).await
            };
            if let Err(e) = sent.await {
                return Err(ReplayError::Publish {
                    replayed,
                    letter: id,
                    error: e.into(),
                });
            }
            sqlx::query(&self.sql.mark)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(store(replayed))?;
            tx.commit().await.map_err(store(replayed))?;
            replayed += 1;
        }
        Ok(replayed)
    }
}

fn read_letter(row: &sqlx::postgres::PgRow) -> Result<(i64, Message), sqlx::Error> {
    Ok((row.try_get("id")?, read_message(row)?))
}

impl DeadLetterSink for PgDeadLetters {
    fn send(
        &self,
        letter: &DeadLetter,
    ) -> impl std::future::Future<Output = Result<(), SinkError>> + Send {
        let m = &letter.message;
        let (names, values): (Vec<String>, Vec<String>) = m
            .headers()
            .iter()
            .map(|(k, v)| (storable(k).into_owned(), storable(v).into_owned()))
            .unzip();
        let at = letter
            .at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        let query = sqlx::query(&self.sql.insert)
            .bind(storable(m.id()).into_owned())
            .bind(storable(m.kind()).into_owned())
            .bind(m.payload().to_vec())
            .bind(names)
            .bind(values)
            .bind(m.correlation_id().map(|c| storable(c).into_owned()))
            .bind(letter.reason.as_str())
            .bind(i64::from(letter.attempts))
            .bind(
                letter
                    .first_error
                    .as_deref()
                    .map(|e| storable(e).into_owned()),
            )
            .bind(storable(&letter.last_error).into_owned())
            .bind(i64::try_from(at.as_micros()).unwrap_or(i64::MAX));
        let pool = self.pool.clone();
        // One autocommit statement: committed when it returns.
        async move { query.execute(&pool).await.map(drop).map_err(SinkError::new) }
    }
}

/// Builds a [`PgDeadLetters`]; [`build`](Self::build) checks the table name.
///
/// ```
/// # use sqlx::postgres::PgPoolOptions;
/// use tower_rampart::message::postgres::PgDeadLetters;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// # let pool = PgPoolOptions::new().connect_lazy("postgres://localhost/app").unwrap();
/// let err = PgDeadLetters::builder(pool).table("dead letters").build().unwrap_err();
/// assert_eq!(err.setting(), Some("table"));
/// # }
/// ```
#[must_use]
#[derive(Debug)]
pub struct PgDeadLettersBuilder {
    pool: PgPool,
    table: String,
}

impl PgDeadLettersBuilder {
    /// The table: `name` or `schema.name`, lowercase ASCII letters, digits and `_` (names up
    /// to 48 bytes). Default `rampart_dead_letters`.
    pub fn table(mut self, name: impl Into<String>) -> Self {
        self.table = name.into();
        self
    }

    /// The sink, or a [`ConfigError`] naming the refused setting.
    pub fn build(self) -> Result<PgDeadLetters, ConfigError> {
        let table = Table::parse(LAYER, &self.table)?;
        let q = table.quoted();
        let filter = "replayed_at IS NULL AND ($1::text IS NULL OR reason = $1)";
        Ok(PgDeadLetters {
            pool: self.pool,
            sql: Arc::new(Sql {
                insert: format!(
                    "INSERT INTO {q} (message_id, kind, payload, headers, correlation_id, reason, \
                     attempts, first_error, last_error, dead_at) VALUES ($1, $2, $3, \
                     jsonb_object($4::text[], $5::text[]), $6, $7, $8, $9, $10, \
                     'epoch'::timestamptz + $11 * interval '1 microsecond') \
                     ON CONFLICT (message_id, reason, md5(payload)) WHERE replayed_at IS NULL \
                     DO NOTHING"
                ),
                take: format!(
                    "SELECT id, message_id, kind, payload, correlation_id, \
                     ARRAY(SELECT key FROM jsonb_each_text(headers) ORDER BY key) AS names, \
                     ARRAY(SELECT value FROM jsonb_each_text(headers) ORDER BY key) AS vals \
                     FROM {q} WHERE {filter} ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"
                ),
                mark: format!("UPDATE {q} SET replayed_at = now() WHERE id = $1"),
                pending: format!("SELECT count(*) FROM {q} WHERE {filter}"),
                table,
            }),
        })
    }
}

/// A replay that stopped: how many letters it replayed first, and why it stopped.
///
/// ```no_run
/// # use sqlx::postgres::PgPoolOptions;
/// use tower_rampart::{BoxError, message::{Message, postgres::{PgDeadLetters, ReplayError}}};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// # let pool = PgPoolOptions::new().connect_lazy("postgres://localhost/app").unwrap();
/// let letters = PgDeadLetters::new(pool);
/// let mut broker_down = tower::service_fn(|_: Message| async {
///     Err::<(), BoxError>("broker down".into())
/// });
/// match letters.replay(&mut broker_down, 100, None).await {
///     Err(ReplayError::Publish { replayed, letter, error }) => {
///         eprintln!("replayed {replayed}; letter {letter} stays pending: {error}")
///     }
///     other => eprintln!("{other:?}"),
/// }
/// # }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum ReplayError {
    /// Reading or marking a letter failed (that letter stays pending).
    Store {
        /// Letters replayed before the failure.
        replayed: u64,
        /// The database error.
        error: sqlx::Error,
    },
    /// The publisher refused a letter (it stays pending).
    Publish {
        /// Letters replayed before the failure.
        replayed: u64,
        /// The letter's row id.
        letter: i64,
        /// The publisher's error.
        error: BoxError,
    },
}

impl ReplayError {
    /// Letters replayed before the failure.
    pub fn replayed(&self) -> u64 {
        match self {
            ReplayError::Store { replayed, .. } | ReplayError::Publish { replayed, .. } => {
                *replayed
            }
        }
    }
}

impl fmt::Display for ReplayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplayError::Store { replayed, error } => {
                write!(
                    f,
                    "dead-letter replay stopped after {replayed}: store error: {error}"
                )
            }
            ReplayError::Publish {
                replayed,
                letter,
                error,
            } => write!(
                f,
                "dead-letter replay stopped after {replayed}: letter {letter} not published: {error}"
            ),
        }
    }
}

impl std::error::Error for ReplayError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ReplayError::Store { error, .. } => Some(error),
            ReplayError::Publish { error, .. } => Some(&**error),
        }
    }
}
