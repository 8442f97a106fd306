//! The inbox layer: its settings, its table's migration and its retention purge.

use std::{fmt, sync::Arc, time::Duration};

use sqlx::PgPool;
use tower_layer::Layer;

use super::{
    PgInbox, PgInboxError, schema,
    table::{self, Table},
};
use crate::{ConfigError, message::Message};

const LAYER: &str = "postgres inbox";
/// The longest key accepted (as the store-backed inbox): keys are a btree index's entries, and
/// a longer key is a bug at the publisher.
pub(crate) const MAX_KEY_LEN: usize = 512;
const DEFAULT_STORE_ERROR_DELAY: Duration = Duration::from_secs(5);

type KeyFn = Arc<dyn Fn(&Message) -> String + Send + Sync>;

/// What every inbox service of one layer shares.
pub(crate) struct Shared {
    pub(crate) pool: PgPool,
    pub(crate) key: KeyFn,
    pub(crate) verify_payload: bool,
    pub(crate) store_error_delay: Duration,
    pub(crate) insert: String,
    pub(crate) fingerprint: String,
    table: Table,
}

/// Applies each message's effect exactly once: the handler runs inside a PostgreSQL
/// transaction that also inserts the message's key into the inbox table, so the effect and the
/// key commit together or not at all. See the [module docs](super) for the guarantees.
///
/// ```
/// use sqlx::postgres::PgPoolOptions;
/// use tower_rampart::message::{inbox::business_key, postgres::PgInboxLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_rampart::ConfigError> {
/// // (connect_lazy: no connection until first use)
/// let pool = PgPoolOptions::new().connect_lazy("postgres://localhost/app").unwrap();
/// let inbox = PgInboxLayer::new(pool.clone()); // table `rampart_inbox`, keyed by message id
/// let by_business_key = PgInboxLayer::builder(pool)
///     .table("billing.inbox")
///     .key(business_key)
///     .build()?;
/// # let _ = (inbox, by_business_key);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct PgInboxLayer {
    shared: Arc<Shared>,
}

impl fmt::Debug for PgInboxLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgInboxLayer")
            .field("table", &self.shared.table.to_string())
            .field("verify_payload", &self.shared.verify_payload)
            .finish_non_exhaustive()
    }
}

impl PgInboxLayer {
    /// The inbox in table `rampart_inbox` (search path), keyed by message id.
    pub fn new(pool: PgPool) -> Self {
        PgInboxLayer::builder(pool)
            .build()
            .expect("the default settings are valid")
    }

    /// Settings other than the defaults.
    pub fn builder(pool: PgPool) -> PgInboxLayerBuilder {
        PgInboxLayerBuilder {
            pool,
            table: "rampart_inbox".into(),
            key: Arc::new(|m: &Message| m.id().to_owned()),
            store_error_delay: DEFAULT_STORE_ERROR_DELAY,
            verify_payload: true,
        }
    }

    /// The SQL [`migrate`](Self::migrate) runs, for a migration tool of your own.
    ///
    /// ```
    /// # use sqlx::postgres::PgPoolOptions;
    /// # use tower_rampart::message::postgres::PgInboxLayer;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # let pool = PgPoolOptions::new().connect_lazy("postgres://localhost/app").unwrap();
    /// let sql = PgInboxLayer::new(pool).schema_sql();
    /// assert!(sql.starts_with("CREATE TABLE IF NOT EXISTS \"rampart_inbox\""));
    /// # }
    /// ```
    pub fn schema_sql(&self) -> String {
        schema::inbox_sql(&self.shared.table)
    }

    /// Creates the inbox table and its index when missing. Idempotent, and safe to run from
    /// every instance at start-up at once (an advisory lock serialises them).
    pub async fn migrate(&self) -> Result<(), sqlx::Error> {
        schema::migrate(
            self.shared.pool.clone(),
            schema::lock_name(&self.shared.table),
            self.schema_sql(),
        )
        .await
    }

    /// Deletes up to `limit` inbox rows processed more than `older_than` ago (by the database's
    /// clock), oldest first, and returns how many it deleted. Call it periodically, or in a
    /// loop until it returns less than `limit`.
    ///
    /// `older_than` must exceed the longest time the broker may still redeliver a message
    /// (its redelivery horizon: the longest redelivery delay times the attempts, the queue's
    /// message TTL, JetStream's `max_age`): a message redelivered after its row was purged runs
    /// again.
    ///
    /// # Errors
    /// [`PgInboxError::Config`] when `older_than` is zero or above a year, or `limit` is not
    /// within 1..=1,000,000; [`PgInboxError::Store`] when the delete failed.
    pub async fn purge(&self, older_than: Duration, limit: u32) -> Result<u64, PgInboxError> {
        if older_than.is_zero() {
            return Err(PgInboxError::Config(ConfigError::field(
                LAYER,
                "older_than",
                "must be positive",
            )));
        }
        let (micros, limit) =
            table::purge_args(LAYER, older_than, limit).map_err(PgInboxError::Config)?;
        let q = self.shared.table.quoted();
        let sql = format!(
            "DELETE FROM {q} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {q} \
             WHERE processed_at < now() - $1 * interval '1 microsecond' \
             ORDER BY processed_at LIMIT $2 FOR UPDATE SKIP LOCKED))"
        );
        let done = sqlx::query(&sql)
            .bind(micros)
            .bind(limit)
            .execute(&self.shared.pool)
            .await
            .map_err(PgInboxError::Store)?;
        Ok(done.rows_affected())
    }
}

impl<S> Layer<S> for PgInboxLayer {
    type Service = PgInbox<S>;

    fn layer(&self, inner: S) -> PgInbox<S> {
        PgInbox::new(self.shared.clone(), inner)
    }
}

/// Builds a [`PgInboxLayer`]; [`build`](Self::build) checks the settings.
///
/// ```
/// # use sqlx::postgres::PgPoolOptions;
/// use tower_rampart::message::postgres::PgInboxLayer;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// # let pool = PgPoolOptions::new().connect_lazy("postgres://localhost/app").unwrap();
/// let err = PgInboxLayer::builder(pool).table("Inbox").build().unwrap_err();
/// assert_eq!(err.setting(), Some("table"));
/// # }
/// ```
#[must_use]
pub struct PgInboxLayerBuilder {
    pool: PgPool,
    table: String,
    key: KeyFn,
    verify_payload: bool,
    store_error_delay: Duration,
}

impl fmt::Debug for PgInboxLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgInboxLayerBuilder")
            .field("table", &self.table)
            .field("verify_payload", &self.verify_payload)
            .field("store_error_delay", &self.store_error_delay)
            .finish_non_exhaustive()
    }
}

impl PgInboxLayerBuilder {
    /// The inbox table: `name` or `schema.name`, lowercase ASCII letters, digits and `_`
    /// (names up to 48 bytes, schemas up to 63). Default `rampart_inbox`.
    pub fn table(mut self, name: impl Into<String>) -> Self {
        self.table = name.into();
        self
    }

    /// What identifies "the same message": by default its id.
    /// [`business_key`](crate::message::inbox::business_key) keys by
    /// `correlation_id + ":" + kind`. A key that is empty, longer than 512 bytes or holds a
    /// NUL character makes the message poison (dead-lettered, never run).
    pub fn key<F>(mut self, key: F) -> Self
    where
        F: Fn(&Message) -> String + Send + Sync + 'static,
    {
        self.key = Arc::new(key);
        self
    }

    /// Whether a duplicate's kind and payload must match the first message's (default
    /// `true`): a different message under a used key is a publisher bug, answered with
    /// [`KeyReused`](crate::message::consumer::KeyReused) (dead-lettered `key-reused`). Turn it off for business keys under which
    /// later messages legitimately differ.
    pub fn verify_payload(mut self, on: bool) -> Self {
        self.verify_payload = on;
        self
    }

    /// When PostgreSQL fails (no connection, a lost connection, a failed `COMMIT`), the
    /// message is redelivered after this delay ([`RedeliverLater`]) and never dead-lettered
    /// for it. Default 5 s; positive, at most a year.
    ///
    /// [`RedeliverLater`]: crate::message::consumer::RedeliverLater
    pub fn store_error_delay(mut self, delay: Duration) -> Self {
        self.store_error_delay = delay;
        self
    }

    /// The layer, or a [`ConfigError`] naming the refused setting.
    pub fn build(self) -> Result<PgInboxLayer, ConfigError> {
        let table = Table::parse(LAYER, &self.table)?;
        if self.store_error_delay.is_zero() {
            return Err(ConfigError::field(
                LAYER,
                "store_error_delay",
                "must be positive",
            ));
        }
        ConfigError::check_duration(LAYER, "store_error_delay", self.store_error_delay)?;
        let q = table.quoted();
        Ok(PgInboxLayer {
            shared: Arc::new(Shared {
                pool: self.pool,
                key: self.key,
                verify_payload: self.verify_payload,
                store_error_delay: self.store_error_delay,
                insert: format!(
                    "INSERT INTO {q} (key, message_id, kind, fingerprint) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (key) DO NOTHING RETURNING txid_current()"
                ),
                fingerprint: format!("SELECT fingerprint FROM {q} WHERE key = $1"),
                table,
            }),
        })
    }
}
