//! The relay's metrics: help text, and handles bound at first use once a recorder exists (see
//! `crate::telemetry`).

#[cfg(feature = "metrics")]
use super::metric_names;
use crate::message::outbox::Backlog;
#[cfg(feature = "metrics")]
use crate::telemetry::{Help, Lazy};

#[cfg(feature = "metrics")]
const HELP: &[Help] = &[
    Help::gauge(
        metric_names::BACKLOG,
        "Unpublished outbox rows, refreshed by the relay every metrics_interval.",
    ),
    Help {
        unit: metrics::Unit::Seconds,
        ..Help::gauge(
            metric_names::OLDEST_AGE,
            "Age of the oldest unpublished outbox row in seconds (0 when none waits).",
        )
    },
    Help::counter(
        metric_names::PUBLISHED,
        "Outbox rows published (confirmed by the publisher) and marked.",
    ),
    Help::counter(
        metric_names::FAILED,
        "Outbox publication attempts that failed (the row waits for its next attempt).",
    ),
];

/// One relay's handles.
pub(crate) struct Metrics {
    #[cfg(feature = "metrics")]
    name: String,
    #[cfg(feature = "metrics")]
    bound: Lazy<Handles>,
}

#[cfg(feature = "metrics")]
struct Handles {
    backlog: metrics::Gauge,
    oldest: metrics::Gauge,
    published: metrics::Counter,
    failed: metrics::Counter,
}

impl Metrics {
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn new(name: &str) -> Self {
        #[cfg(feature = "metrics")]
        {
            let m = Metrics {
                name: name.to_owned(),
                bound: Lazy::new(),
            };
            m.bound.bind_now(HELP, || m.make());
            m
        }
        #[cfg(not(feature = "metrics"))]
        Metrics {}
    }

    /// Whether gauges are worth refreshing (metrics compiled in).
    pub(crate) const ENABLED: bool = cfg!(feature = "metrics");

    #[cfg(feature = "metrics")]
    fn make(&self) -> Handles {
        use metric_names::*;
        let n = || self.name.clone();
        Handles {
            backlog: metrics::gauge!(BACKLOG, "outbox" => n()),
            oldest: metrics::gauge!(OLDEST_AGE, "outbox" => n()),
            published: metrics::counter!(PUBLISHED, "outbox" => n()),
            failed: metrics::counter!(FAILED, "outbox" => n()),
        }
    }

    /// A batch published `published` rows and failed `failed` attempts.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn batch(&self, published: usize, failed: usize) {
        #[cfg(feature = "metrics")]
        if let Some(h) = self.bound.get_or_bind(HELP, || self.make()) {
            h.published.increment(published as u64);
            h.failed.increment(failed as u64);
        }
    }

    /// The backlog as just read.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn backlog(&self, b: &Backlog) {
        #[cfg(feature = "metrics")]
        if let Some(h) = self.bound.bind_now(HELP, || self.make()) {
            h.backlog.set(b.pending as f64);
            h.oldest.set(b.oldest_age.map_or(0.0, |a| a.as_secs_f64()));
        }
    }
}
