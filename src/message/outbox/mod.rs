//! The transactional outbox (feature `postgres`): write an event in the business transaction,
//! and let a [`Relay`] publish it through any `tower::Service<Message>` (a publisher behind the
//! crate's retry, breaker and timeout layers).
//!
//! ```no_run
//! use tower_rampart::{BoxError, message::{Message, outbox::{Outbox, OutboxEvent, Relay}}};
//!
//! # async fn run(pool: sqlx::PgPool) -> Result<(), BoxError> {
//! let outbox = Outbox::builder(pool.clone()).table("app.outbox").build()?;
//! outbox.migrate().await?;
//!
//! let mut tx = pool.begin().await?;
//! // ... the business writes, through &mut *tx ...
//! let event = OutboxEvent::new("order-42", Message::new("evt-1", "order.placed", "{}"));
//! outbox.enqueue(&mut tx, event).await?;
//! tx.commit().await?; // rolled back: the event never exists
//!
//! let publisher = tower::service_fn(|m: Message| async move {
//!     // ... publish `m`, answering once the broker confirmed it ...
//!     Ok::<_, BoxError>(())
//! });
//! let relay = Relay::builder(outbox).name("orders").build(publisher)?;
//! let summary = relay.run_until(async { let _ = tokio::signal::ctrl_c().await; }).await;
//! println!("{} published", summary.published);
//! # Ok(()) }
//! ```
//!
//! # What it guarantees
//!
//! - **An event exists if and only if its transaction commits**: [`Outbox::enqueue`] writes
//!   through the caller's transaction.
//! - **At-least-once publication**: a row is marked published only after the publisher
//!   answered `Ok` (publish with confirms: `RabbitPublisher` answers after the broker's
//!   confirm, `JetStreamPublisher` after the JetStream ack). A failed publication (an error,
//!   a timeout, a panic in the publisher) is recorded on the row (`attempts`, `last_error`)
//!   and retried after a backoff kept in the table, shared by every relay; a row is never
//!   dropped.
//! - **Duplicates happen**: a relay that dies (or whose `COMMIT` fails) between publishing
//!   and committing leaves its rows pending, and they are published again. Consumers dedupe
//!   on the message id (the [inbox](crate::message::postgres)); with JetStream, the message id
//!   as `Nats-Msg-Id` lets the stream's duplicate window drop them.
//! - **No row is published by two relays at once**: a batch locks its rows
//!   (`FOR UPDATE SKIP LOCKED`) for its whole transaction; run as many relays as you like.
//! - **Order per aggregate**: a row is published only after every earlier row (lower id) of
//!   its aggregate was; within a batch the rows of one aggregate go one after the other, each
//!   confirmed before the next, and the first failure defers the rest of that aggregate
//!   ([`BatchReport::deferred`]). `enqueue` takes a transaction-scoped advisory lock on the
//!   aggregate, so writers of one aggregate wait for each other until commit and ids follow
//!   commit order. This holds only for rows written through `enqueue`: rows inserted
//!   otherwise (or an `id` given explicitly) are published in id order but may commit out of
//!   it. There is no order between aggregates: they are published concurrently.
//!
//! # What it costs
//!
//! - A batch is one transaction that holds its row locks and one pooled connection while it
//!   publishes: keep [`publish_timeout`](RelayBuilder::publish_timeout) short, and give the
//!   pool a connection per relay for its batches, one more per relay that listens
//!   ([`listen`](RelayBuilder::listen), held for good), plus what the application uses.
//! - A failing row holds back the later rows of its aggregate until it is published:
//!   watch [`metric_names::FAILED`] and the backlog's age
//!   ([`Readiness::outbox`](crate::health::Readiness::outbox)).
//! - Rows are kept after publication until [`Outbox::purge`] deletes them.
//! - A batch finds each aggregate's first pending row among the first `4 × batch_size` (at
//!   least 1,000) pending rows in id order; when those hold fewer heads than the batch takes
//!   and more rows are pending, it skips through the aggregate index one pending aggregate at a
//!   time. A batch's claim therefore costs at most about as much as the pending aggregates
//!   number, never a scan of a long backlog.
//!
//! # Waking up
//!
//! [`Relay::run_until`] runs batches back to back while they come back full, then waits for
//! the first of: a notification (`enqueue` sends `NOTIFY` on [`Outbox::channel`], delivered
//! at commit, and the relay `LISTEN`s on a connection of its own), the
//! [`poll_interval`](RelayBuilder::poll_interval) (the fallback, and how failed rows come due
//! again), or shutdown. A lost `LISTEN` connection is re-established after
//! [`error_delay`](RelayBuilder::error_delay), followed by a batch (notifications sent
//! meanwhile are lost). On shutdown the batch under way is finished and committed; dropping
//! the future instead stops at once and rolls the batch back.
//!
//! # The table
//!
//! [`Outbox::migrate`] creates it, [`Outbox::schema_sql`] prints it:
//!
//! ```sql
//! CREATE TABLE IF NOT EXISTS "rampart_outbox" (
//!     id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
//!     aggregate       text        NOT NULL,
//!     message_id      text        NOT NULL UNIQUE,
//!     kind            text        NOT NULL,
//!     payload         bytea       NOT NULL,
//!     headers         jsonb       NOT NULL,
//!     correlation_id  text,
//!     created_at      timestamptz NOT NULL DEFAULT now(),
//!     attempts        integer     NOT NULL DEFAULT 0,
//!     last_error      text,
//!     next_attempt_at timestamptz NOT NULL DEFAULT now(),
//!     published_at    timestamptz
//! );
//! CREATE INDEX IF NOT EXISTS "rampart_outbox_aggregate" ON "rampart_outbox" (aggregate, id) WHERE published_at IS NULL;
//! CREATE INDEX IF NOT EXISTS "rampart_outbox_pending" ON "rampart_outbox" (id) WHERE published_at IS NULL;
//! CREATE INDEX IF NOT EXISTS "rampart_outbox_published" ON "rampart_outbox" (published_at) WHERE published_at IS NOT NULL;
//! ```

mod error;
mod event;
mod health;
mod relay;
mod schema;
mod table;

pub use error::OutboxError;
pub use event::OutboxEvent;
pub use health::OutboxCheck;
pub use relay::{BatchReport, Relay, RelayBuilder, RelaySummary, metric_names};
pub use table::{Backlog, MAX_AGGREGATE_LEN, Outbox, OutboxBuilder};
