//! The consumer's metrics: names, help text, and handles bound at first use once a recorder
//! exists (see `crate::telemetry`).

#[cfg(feature = "metrics")]
use crate::telemetry::{Help, Lazy};

/// Metric names, all labelled with `consumer` (the consumer's name).
pub mod metric_names {
    /// Counter of settled deliveries, labelled `outcome`: `acked`, `redelivered`,
    /// `dead_lettered`, or `abandoned` (left unsettled at shutdown, for the broker to
    /// redeliver).
    pub const MESSAGES: &str = "rampart_messages_total";
    /// Histogram of the time from a delivery to its settlement, in seconds (handler,
    /// dead-letter sink and the broker's acknowledgement included).
    pub const HANDLING_DURATION: &str = "rampart_message_handling_duration_seconds";
}

/// The `outcome` labels of [`metric_names::MESSAGES`], in the order of [`Outcome`].
#[cfg(feature = "metrics")]
const OUTCOMES: [&str; 4] = ["acked", "redelivered", "dead_lettered", "abandoned"];

/// How a delivery ended, for the counters (the index of its counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Acked = 0,
    Redelivered = 1,
    DeadLettered = 2,
    Abandoned = 3,
}

#[cfg(feature = "metrics")]
const HELP: &[Help] = &[
    Help::counter(
        metric_names::MESSAGES,
        "Deliveries a consumer settled, by outcome (acked, redelivered, dead_lettered, abandoned).",
    ),
    Help::seconds(
        metric_names::HANDLING_DURATION,
        "Time from a delivery to its settlement: handler, dead-letter sink and broker included.",
    ),
];

/// One consumer's handles.
pub(crate) struct Metrics {
    #[cfg(feature = "metrics")]
    name: std::sync::Arc<str>,
    #[cfg(feature = "metrics")]
    bound: Lazy<Handles>,
}

#[cfg(feature = "metrics")]
struct Handles {
    messages: [metrics::Counter; 4],
    duration: metrics::Histogram,
}

impl Metrics {
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn new(name: std::sync::Arc<str>) -> Self {
        #[cfg(feature = "metrics")]
        {
            let m = Metrics {
                name,
                bound: Lazy::new(),
            };
            m.bound.bind_now(HELP, || m.make());
            m
        }
        #[cfg(not(feature = "metrics"))]
        Metrics {}
    }

    #[cfg(feature = "metrics")]
    fn make(&self) -> Handles {
        use metric_names::*;
        let n = self.name.to_string();
        Handles {
            messages: OUTCOMES
                .map(|o| metrics::counter!(MESSAGES, "consumer" => n.clone(), "outcome" => o)),
            duration: metrics::histogram!(HANDLING_DURATION, "consumer" => n),
        }
    }

    /// One delivery settled as `outcome`, `took` after it arrived (`None` when abandoned).
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn settled(&self, outcome: Outcome, took: Option<std::time::Duration>) {
        #[cfg(feature = "metrics")]
        if let Some(h) = self.bound.get_or_bind(HELP, || self.make()) {
            h.messages[outcome as usize].increment(1);
            if let Some(t) = took {
                h.duration.record(t.as_secs_f64());
            }
        }
    }
}
