//! The relay: claims due rows with `FOR UPDATE SKIP LOCKED`, publishes them through a
//! `Service<Message>`, marks them published, commits.

mod builder;
mod claim;
mod decide;
mod mark;
mod measures;
mod publish;
mod run;

pub use builder::RelayBuilder;

use std::{future::Future, sync::Arc};

use publish::Fate;

use tower_service::Service;

use super::{Outbox, OutboxError};
use crate::{BoxError, message::Message};

/// Metric names, all labelled with `outbox` (the relay's name).
pub mod metric_names {
    /// Gauge: unpublished rows, refreshed every `metrics_interval`.
    pub const BACKLOG: &str = "rampart_outbox_backlog";
    /// Gauge: the age of the oldest unpublished row in seconds (0 when none).
    pub const OLDEST_AGE: &str = "rampart_outbox_oldest_age_seconds";
    /// Counter: rows published (confirmed by the publisher and marked).
    pub const PUBLISHED: &str = "rampart_outbox_published_total";
    /// Counter: publication attempts that failed (the row waits for its next attempt).
    pub const FAILED: &str = "rampart_outbox_failed_total";
}

/// What one batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct BatchReport {
    /// Rows claimed (locked) by this batch.
    pub claimed: usize,
    /// Rows published and marked.
    pub published: usize,
    /// Rows whose publication failed (attempt recorded, next attempt later).
    pub failed: usize,
    /// Rows not tried because an earlier row of their aggregate failed (order per aggregate).
    pub deferred: usize,
}

/// What a relay did until it stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RelaySummary {
    /// Batches run.
    pub batches: u64,
    /// Rows published and marked. A batch whose `COMMIT` reached PostgreSQL but whose answer
    /// was lost (the connection cut at that moment) counts as a database error, not here: this
    /// and `rampart_outbox_published_total` may undercount, never overcount.
    pub published: u64,
    /// Failed publication attempts.
    pub failed: u64,
    /// Batches that failed on PostgreSQL (retried after `error_delay`).
    pub database_errors: u64,
}

impl RelaySummary {
    fn add(&mut self, r: &BatchReport) {
        self.batches += 1;
        self.published += r.published as u64;
        self.failed += r.failed as u64;
    }
}

/// A relay over one [`Outbox`], publishing through `S`. Run several (threads, processes,
/// hosts): they never publish one row concurrently.
pub struct Relay<S> {
    pub(crate) outbox: Outbox,
    pub(crate) publisher: S,
    pub(crate) settings: Arc<builder::Settings>,
    pub(crate) metrics: Arc<measures::Metrics>,
}

impl<S> std::fmt::Debug for Relay<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("name", &self.settings.name)
            .field("outbox", &self.outbox)
            .finish_non_exhaustive()
    }
}

impl Relay<()> {
    /// Settings for a relay over `outbox`.
    pub fn builder(outbox: Outbox) -> RelayBuilder {
        RelayBuilder::new(outbox)
    }
}

impl<S> Relay<S>
where
    S: Service<Message> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: Send,
    S::Error: Into<BoxError>,
{
    /// One batch: claims up to `batch_size` due rows (the first unpublished row of each
    /// aggregate, and the rows after it), publishes them, marks the published ones, commits.
    ///
    /// The batch is one transaction: its rows stay locked (other relays skip them) while they
    /// are published, and the outcome is committed at the end. Dropping the future at any
    /// point rolls back: nothing is marked, published rows will be published again.
    ///
    /// # Errors
    /// [`OutboxError::Database`] when PostgreSQL failed: the transaction rolls back, the rows
    /// stay pending (those already published will be published again: at-least-once).
    pub async fn run_once(&mut self) -> Result<BatchReport, OutboxError> {
        let s = &*self.settings;
        let sql = &*self.outbox.sql;
        let mut tx = self.outbox.pool.begin().await?;
        let rows = claim::claim(&mut tx, sql, s.batch_size).await?;
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(BatchReport::default());
        }
        let claimed = rows.len();
        let done =
            publish::publish_batch(&self.publisher, rows, s.concurrency, s.publish_timeout).await;
        mark::mark(&mut tx, sql, &done, (s.retry_min, s.retry_max)).await?;
        tx.commit().await?;
        let mut report = BatchReport {
            claimed,
            ..BatchReport::default()
        };
        for (_id, _attempts, fate) in &done {
            match fate {
                Fate::Published => report.published += 1,
                Fate::Deferred => report.deferred += 1,
                Fate::Failed(_why) => {
                    report.failed += 1;
                    #[cfg(feature = "tracing")]
                    tracing::warn!(
                        outbox = %s.name,
                        row = _id,
                        attempt = i64::from(*_attempts) + 1,
                        error = %_why,
                        "outbox publication failed; the row waits for its next attempt",
                    );
                }
            }
        }
        self.metrics.batch(report.published, report.failed);
        Ok(report)
    }

    /// Batches until none is left to do now: stops after a batch that claimed nothing or
    /// published nothing (rows that failed wait for their next attempt). Every batch but the
    /// last published at least one row, so it ends even while the publisher keeps failing.
    ///
    /// # Errors
    /// The first batch that failed on PostgreSQL (earlier batches stay committed).
    pub async fn drain(&mut self) -> Result<RelaySummary, OutboxError> {
        let mut summary = RelaySummary::default();
        loop {
            let r = self.run_once().await?;
            summary.add(&r);
            if r.claimed == 0 || r.published == 0 {
                return Ok(summary);
            }
        }
    }

    /// Runs until `shutdown` completes: batches while rows are due, then waits for a
    /// notification (`LISTEN`) or the poll interval. PostgreSQL errors are counted and retried
    /// after `error_delay`; the relay never stops on its own.
    pub async fn run_until<F>(self, shutdown: F) -> RelaySummary
    where
        F: Future<Output = ()> + Send,
    {
        run::run_until(self, shutdown).await
    }
}
