//! The relay's settings, validated.

use std::time::Duration;

use super::{Relay, measures::Metrics};
use crate::{ConfigError, message::outbox::Outbox};

const LAYER: &str = "outbox relay";
const MS: Duration = Duration::from_millis(1);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// The relay's validated settings.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) name: String,
    pub(crate) batch_size: u32,
    pub(crate) concurrency: usize,
    pub(crate) publish_timeout: Duration,
    pub(crate) poll_interval: Duration,
    pub(crate) listen: bool,
    pub(crate) retry_min: Duration,
    pub(crate) retry_max: Duration,
    pub(crate) error_delay: Duration,
    pub(crate) metrics_interval: Duration,
}

/// Builds a [`Relay`].
///
/// | setting | default | bounds |
/// |---|---|---|
/// | `name` | the table's name | 1..=128 bytes |
/// | `batch_size` | 100 | 1..=10,000 |
/// | `concurrency` (aggregates published at once) | 16 | 1..=1,024 |
/// | `publish_timeout` | 30 s | 1 ms..=1 h |
/// | `poll_interval` | 1 s | 10 ms..=1 h |
/// | `listen` | true | |
/// | `retry_backoff` (after a failed publication) | 1 s doubling to 5 min | 1 ms..=1 day, min <= max |
/// | `error_delay` (after a PostgreSQL error) | 1 s | 1 ms..=1 h |
/// | `metrics_interval` | 5 s | 100 ms..=1 h |
///
/// ```
/// # use sqlx::postgres::PgPoolOptions;
/// use std::{convert::Infallible, time::Duration};
/// use tower_rampart::message::{Message, outbox::{Outbox, Relay}};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// # let pool = PgPoolOptions::new().connect_lazy("postgres://localhost/app").unwrap();
/// let publisher = tower::service_fn(|_: Message| async { Ok::<_, Infallible>(()) });
/// let relay = Relay::builder(Outbox::new(pool.clone()))
///     .name("orders")
///     .batch_size(200)
///     .retry_backoff(Duration::from_millis(100), Duration::from_secs(60))
///     .build(publisher.clone())
///     .unwrap();
/// # let _ = relay;
/// let err = Relay::builder(Outbox::new(pool)).batch_size(0).build(publisher).unwrap_err();
/// assert_eq!(err.setting(), Some("batch_size"));
/// # }
/// ```
#[derive(Debug)]
#[must_use]
pub struct RelayBuilder {
    outbox: Outbox,
    name: Option<String>,
    batch_size: u32,
    concurrency: usize,
    publish_timeout: Duration,
    poll_interval: Duration,
    listen: bool,
    retry_min: Duration,
    retry_max: Duration,
    error_delay: Duration,
    metrics_interval: Duration,
}

impl RelayBuilder {
    pub(crate) fn new(outbox: Outbox) -> Self {
        RelayBuilder {
            outbox,
            name: None,
            batch_size: 100,
            concurrency: 16,
            publish_timeout: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            listen: true,
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            error_delay: Duration::from_secs(1),
            metrics_interval: Duration::from_secs(5),
        }
    }

    /// The relay's name in metrics and logs.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Rows claimed per batch (one transaction).
    pub fn batch_size(mut self, n: u32) -> Self {
        self.batch_size = n;
        self
    }

    /// Aggregates published at once within a batch (rows of one aggregate go one after the
    /// other, each confirmed before the next).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// How long one publication may take before it counts as failed.
    pub fn publish_timeout(mut self, d: Duration) -> Self {
        self.publish_timeout = d;
        self
    }

    /// How often to look for due rows without a notification.
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.poll_interval = d;
        self
    }

    /// Whether to `LISTEN` for the outbox's notifications (else only poll).
    pub fn listen(mut self, on: bool) -> Self {
        self.listen = on;
        self
    }

    /// The wait before a failed row's next attempt: `min`, doubling per failed attempt, at most
    /// `max` (jittered by up to a fifth).
    pub fn retry_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.retry_min = min;
        self.retry_max = max;
        self
    }

    /// The wait after a batch failed on PostgreSQL.
    pub fn error_delay(mut self, d: Duration) -> Self {
        self.error_delay = d;
        self
    }

    /// How often the backlog gauges are refreshed.
    pub fn metrics_interval(mut self, d: Duration) -> Self {
        self.metrics_interval = d;
        self
    }

    /// The relay publishing through `publisher`, or what is wrong with the settings.
    pub fn build<S>(self, publisher: S) -> Result<Relay<S>, ConfigError> {
        let name = self.name.unwrap_or_else(|| self.outbox.table.to_string());
        if name.is_empty() || name.len() > 128 {
            return Err(ConfigError::field(
                LAYER,
                "name",
                format!("must be 1..=128 bytes, got {}", name.len()),
            ));
        }
        if !(1..=10_000).contains(&self.batch_size) {
            return Err(ConfigError::field(
                LAYER,
                "batch_size",
                format!("must be within 1..=10000, got {}", self.batch_size),
            ));
        }
        if !(1..=1024).contains(&self.concurrency) {
            return Err(ConfigError::field(
                LAYER,
                "concurrency",
                format!("must be within 1..=1024, got {}", self.concurrency),
            ));
        }
        within(
            "publish_timeout",
            self.publish_timeout,
            MS,
            HOUR,
            "1 ms..=1 h",
        )?;
        within(
            "poll_interval",
            self.poll_interval,
            10 * MS,
            HOUR,
            "10 ms..=1 h",
        )?;
        within("retry_backoff", self.retry_min, MS, DAY, "1 ms..=1 day")?;
        within("retry_backoff", self.retry_max, MS, DAY, "1 ms..=1 day")?;
        if self.retry_min > self.retry_max {
            return Err(ConfigError::field(
                LAYER,
                "retry_backoff",
                format!(
                    "must have min <= max, got {:?} > {:?}",
                    self.retry_min, self.retry_max
                ),
            ));
        }
        within("error_delay", self.error_delay, MS, HOUR, "1 ms..=1 h")?;
        within(
            "metrics_interval",
            self.metrics_interval,
            100 * MS,
            HOUR,
            "100 ms..=1 h",
        )?;
        Ok(Relay {
            metrics: std::sync::Arc::new(Metrics::new(&name)),
            settings: std::sync::Arc::new(Settings {
                name,
                batch_size: self.batch_size,
                concurrency: self.concurrency,
                publish_timeout: self.publish_timeout,
                poll_interval: self.poll_interval,
                listen: self.listen,
                retry_min: self.retry_min,
                retry_max: self.retry_max,
                error_delay: self.error_delay,
                metrics_interval: self.metrics_interval,
            }),
            outbox: self.outbox,
            publisher,
        })
    }
}

fn within(
    field: &'static str,
    d: Duration,
    min: Duration,
    max: Duration,
    bounds: &str,
) -> Result<(), ConfigError> {
    if d < min || d > max {
        return Err(ConfigError::field(
            LAYER,
            field,
            format!("must be within {bounds}, got {d:?}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::postgres::PgPoolOptions;

    #[tokio::test]
    async fn every_bound_is_checked() {
        let pool = PgPoolOptions::new()
            .connect_lazy("postgres://localhost/none")
            .unwrap();
        let b = || RelayBuilder::new(Outbox::new(pool.clone()));
        let setting = |r: Result<Relay<()>, ConfigError>| r.unwrap_err().setting().unwrap();
        let ok = b().build(()).unwrap();
        assert_eq!(ok.settings.name, "rampart_outbox");
        assert_eq!(setting(b().name("").build(())), "name");
        assert_eq!(setting(b().name("x".repeat(129)).build(())), "name");
        assert_eq!(setting(b().batch_size(0).build(())), "batch_size");
        assert_eq!(setting(b().batch_size(10_001).build(())), "batch_size");
        assert!(b().batch_size(10_000).build(()).is_ok());
        assert_eq!(setting(b().concurrency(0).build(())), "concurrency");
        assert_eq!(setting(b().concurrency(1025).build(())), "concurrency");
        let t = Duration::from_micros(999);
        assert_eq!(setting(b().publish_timeout(t).build(())), "publish_timeout");
        assert_eq!(
            setting(b().publish_timeout(HOUR + MS).build(())),
            "publish_timeout"
        );
        assert_eq!(
            setting(b().poll_interval(9 * MS).build(())),
            "poll_interval"
        );
        assert_eq!(
            setting(b().poll_interval(Duration::MAX).build(())),
            "poll_interval"
        );
        assert_eq!(setting(b().retry_backoff(t, MS).build(())), "retry_backoff");
        assert_eq!(
            setting(b().retry_backoff(MS, DAY + MS).build(())),
            "retry_backoff"
        );
        assert_eq!(
            setting(b().retry_backoff(2 * MS, MS).build(())),
            "retry_backoff"
        );
        assert!(b().retry_backoff(DAY, DAY).build(()).is_ok());
        assert_eq!(
            setting(b().error_delay(Duration::ZERO).build(())),
            "error_delay"
        );
        assert_eq!(
            setting(b().metrics_interval(99 * MS).build(())),
            "metrics_interval"
        );
        assert_eq!(
            setting(b().metrics_interval(HOUR * 2).build(())),
            "metrics_interval"
        );
    }
}
