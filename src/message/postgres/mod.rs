//! Messaging over PostgreSQL (feature `postgres`, through `sqlx`): the transactional inbox and
//! a dead-letter table.
//!
//! # The transactional inbox
//!
//! [`PgInboxLayer`] wraps a handler into a `Service<Message>` a consumer drives. Per message:
//!
//! 1. `BEGIN`, then `INSERT INTO rampart_inbox (key, ...) VALUES ($1, ...) ON CONFLICT (key) DO
//!    NOTHING RETURNING ...`.
//! 2. No row back: the key is already committed, the message is a duplicate. The transaction
//!    is rolled back and the answer is [`Inboxed::Duplicate`] (the consumer acks it).
//! 3. A row back: the handler gets the message and the open transaction ([`TxMessage`]),
//!    writes its effect through it and hands the transaction back with its response; the inbox
//!    commits and answers [`Inboxed::Ran`]. The effect and the key commit together or not at
//!    all.
//!
//! So each message's effect is applied **exactly once**, with at-least-once delivery and no
//! lease: a consumer dying anywhere leaves nothing half-applied (PostgreSQL rolls back the
//! transaction of a lost connection), and the redelivery runs again or finds the key.
//!
//! - **Concurrent duplicates**: a second delivery of a message in flight blocks on the first's
//!   uncommitted row; it then sees the committed key (duplicate) or, if the first rolled back,
//!   runs the handler itself.
//! - **Handler errors and panics** drop the transaction: the effect and the key roll back, the
//!   error goes on unchanged to the consumer, which redelivers the message.
//! - **Cancellation**: dropping the inbox's future at any point rolls back what it had not
//!   committed (a `COMMIT` already sent lands whole or not at all).
//! - **A connection lost mid-handler** (network cut, `pg_terminate_backend`, a server restart):
//!   the server rolls the transaction back. The handler's next statement fails (its error, an
//!   attempt), or the inbox's own check or `COMMIT` does (a store error, below); either way the
//!   redelivery runs the message once on a fresh connection (the pool drops the dead one). The
//!   inbox never retries inside one delivery: the broker's redelivery is the retry.
//! - **PostgreSQL failing** around the handler (no connection, `BEGIN` or the insert failing,
//!   the check or `COMMIT` getting no answer) is a [`PgInboxError`] inside a
//!   [`RedeliverLater`](crate::message::consumer::RedeliverLater) after
//!   [`store_error_delay`](PgInboxLayerBuilder::store_error_delay): redelivered, never
//!   dead-lettered for it. A failed `COMMIT` ([`PgInboxError::Commit`]) has an unknown outcome: if it did
//!   land, the redelivery is a duplicate.
//! - **Handlers must not commit or roll back the transaction** (nor answer with another one):
//!   the inbox checks, before committing, that the transaction it began is still open (one
//!   round trip), and answers [`PgInboxError::TransactionEnded`] without committing otherwise.
//!   The same check catches a handler that swallowed a failed statement and answered `Ok`:
//!   PostgreSQL has aborted that transaction and would turn its `COMMIT` into a silent
//!   rollback (the message acked, nothing applied); the inbox answers
//!   [`PgInboxError::Rejected`] instead, as it does for a deferred constraint failing at
//!   `COMMIT`. Both count as an attempt of the message.
//! - **Key reuse**: a duplicate whose kind or payload differs from the first message's is
//!   [`KeyReused`](crate::message::consumer::KeyReused) (dead-lettered `key-reused`), unless
//!   [`verify_payload(false)`](PgInboxLayerBuilder::verify_payload). A key that is empty,
//!   longer than 512 bytes or holds a NUL is [`Poison`](crate::message::Poison).
//!
//! Each message in flight holds one pooled connection from `BEGIN` to `COMMIT`: give the pool
//! at least the consumer's concurrency, plus what handlers take from it themselves. A duplicate
//! of a message in flight waits for it, so bound slow handlers with a timeout (dropping the
//! future rolls back).
//!
//! Keep inbox rows longer than the broker's redelivery horizon, and delete older ones with
//! [`PgInboxLayer::purge`].
//!
//! The table ([`PgInboxLayer::migrate`] creates it, [`PgInboxLayer::schema_sql`] prints it):
//!
//! ```sql
//! CREATE TABLE IF NOT EXISTS "rampart_inbox" (
//!     key          text        PRIMARY KEY,
//!     message_id   text        NOT NULL,
//!     kind         text        NOT NULL,
//!     fingerprint  bytea       NOT NULL,
//!     processed_at timestamptz NOT NULL DEFAULT now()
//! );
//! CREATE INDEX IF NOT EXISTS "rampart_inbox_processed_at" ON "rampart_inbox" (processed_at);
//! ```
//!
//! # Dead letters
//!
//! [`PgDeadLetters`] is a [`DeadLetterSink`](crate::message::DeadLetterSink): one row per dead
//! letter, committed before `send` returns; a letter sent again for the same message (the
//! consumer died between storing it and acking the original) is stored once while pending. [`PgDeadLetters::replay`] hands pending letters to
//! any `Service<Message>` (a publisher) after a fix, marking each replayed only once published.
//!
//! ```sql
//! CREATE TABLE IF NOT EXISTS "rampart_dead_letters" (
//!     id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
//!     message_id     text        NOT NULL,
//!     kind           text        NOT NULL,
//!     payload        bytea       NOT NULL,
//!     headers        jsonb       NOT NULL,
//!     correlation_id text,
//!     reason         text        NOT NULL,
//!     attempts       bigint      NOT NULL,
//!     first_error    text,
//!     last_error     text        NOT NULL,
//!     dead_at        timestamptz NOT NULL,
//!     replayed_at    timestamptz
//! );
//! CREATE INDEX IF NOT EXISTS "rampart_dead_letters_pending" ON "rampart_dead_letters" (id) WHERE replayed_at IS NULL;
//! CREATE UNIQUE INDEX IF NOT EXISTS "rampart_dead_letters_once" ON "rampart_dead_letters" (message_id, reason, md5(payload)) WHERE replayed_at IS NULL;
//! ```
//!
//! Text PostgreSQL cannot store (the NUL character) is written as U+FFFD in both tables.
//!
//! [`Inboxed::Duplicate`]: crate::message::inbox::Inboxed::Duplicate
//! [`Inboxed::Ran`]: crate::message::inbox::Inboxed::Ran

mod dead_letters;
mod error;
mod future;
mod layer;
mod schema;
mod service;
mod table;

pub use dead_letters::{PgDeadLetters, PgDeadLettersBuilder, ReplayError};
pub use error::PgInboxError;
pub use future::ResponseFuture;
pub use layer::{PgInboxLayer, PgInboxLayerBuilder};
pub(crate) use schema::{lock_name, migrate};
pub use service::{PgInbox, PgTx, TxMessage};
pub(crate) use table::{Table, purge_args, read_message, storable};
