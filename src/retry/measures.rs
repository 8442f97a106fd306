//! The retry layer's metrics: names, help text, and handles bound at first use once a recorder
//! exists (see `crate::telemetry`).

#[cfg(feature = "metrics")]
use std::sync::Arc;

#[cfg(feature = "metrics")]
use crate::telemetry::{Help, Lazy};

/// Metric names, all labelled with `retry` (the layer's name).
pub mod metric_names {
    /// Counter of attempts made, first attempts included.
    pub const ATTEMPTS: &str = "rampart_retry_attempts_total";
    /// Counter of retries, labelled `reason` = `error` | `response`.
    pub const RETRIES: &str = "rampart_retry_retries_total";
    /// Counter of calls that stopped while failing, labelled `reason` (see `GiveUp::as_str`).
    pub const GAVE_UP: &str = "rampart_retry_gave_up_total";
    /// Histogram of the delays chosen before retries, in seconds.
    pub const DELAY: &str = "rampart_retry_delay_seconds";
    /// Histogram of whole logical calls, every attempt and delay included, in seconds (measured
    /// only while a recorder is installed).
    pub const CALL_DURATION: &str = "rampart_retry_call_duration_seconds";
    /// Histogram of single attempts, in seconds (measured only while a recorder is installed).
    pub const ATTEMPT_DURATION: &str = "rampart_retry_attempt_duration_seconds";
}

/// Help text of the retry layer's metrics.
#[cfg(feature = "metrics")]
const HELP: &[Help] = {
    use metric_names::*;
    &[
        Help::counter(
            ATTEMPTS,
            "Attempts a retry layer sent, first attempts included.",
        ),
        Help::counter(
            RETRIES,
            "Retries a retry layer made, by reason (error, response).",
        ),
        Help::counter(
            GAVE_UP,
            "Calls a retry layer stopped retrying while failing, by reason.",
        ),
        Help::seconds(DELAY, "Delays a retry layer waited before retries."),
        Help::seconds(
            CALL_DURATION,
            "Whole calls through a retry layer, every attempt and delay included.",
        ),
        Help::seconds(ATTEMPT_DURATION, "Single attempts through a retry layer."),
    ]
};

/// The reasons of `GiveUp`, in declaration order (the index of a reason's counter).
#[cfg(feature = "metrics")]
const GIVE_UP: [super::GiveUp; 7] = {
    use super::GiveUp::*;
    [
        Attempts,
        Elapsed,
        Budget,
        NotRetryable,
        RetryAfter,
        CircuitOpen,
        Deadline,
    ]
};

/// A retry layer's handles, inline in its policy (no pointer to follow per call). A version made
/// by a reload binds its own handles to the same metrics.
#[cfg(feature = "metrics")]
pub(crate) struct Metrics {
    name: Arc<str>,
    bound: Lazy<Handles>,
}

#[cfg(feature = "metrics")]
impl Clone for Metrics {
    fn clone(&self) -> Self {
        Metrics::new(self.name.clone())
    }
}

#[cfg(feature = "metrics")]
pub(crate) struct Handles {
    pub(crate) attempts: metrics::Counter,
    pub(crate) retry_error: metrics::Counter,
    pub(crate) retry_response: metrics::Counter,
    pub(crate) delay: metrics::Histogram,
    pub(crate) gave_up: [metrics::Counter; 7],
    pub(crate) call: metrics::Histogram,
    pub(crate) attempt: metrics::Histogram,
}

#[cfg(feature = "metrics")]
impl Metrics {
    pub(crate) fn new(name: Arc<str>) -> Self {
        let m = Metrics {
            name,
            bound: Lazy::new(),
        };
        // Bound at once when a recorder exists.
        m.bound.bind_now(HELP, || m.make());
        m
    }

    /// The handles, bound now if a recorder appeared; `None` while there is none.
    #[inline]
    pub(crate) fn handles(&self) -> Option<&Handles> {
        self.bound.get_or_bind(HELP, || self.make())
    }

    fn make(&self) -> Handles {
        use metric_names::*;
        let n = self.name.to_string();
        Handles {
            attempts: metrics::counter!(ATTEMPTS, "retry" => n.clone()),
            retry_error: metrics::counter!(RETRIES, "retry" => n.clone(), "reason" => "error"),
            retry_response: metrics::counter!(RETRIES, "retry" => n.clone(), "reason" => "response"),
            delay: metrics::histogram!(DELAY, "retry" => n.clone()),
            gave_up: GIVE_UP
                .map(|r| metrics::counter!(GAVE_UP, "retry" => n.clone(), "reason" => r.as_str())),
            call: metrics::histogram!(CALL_DURATION, "retry" => n.clone()),
            attempt: metrics::histogram!(ATTEMPT_DURATION, "retry" => n),
        }
    }
}

#[cfg(all(test, feature = "metrics"))]
mod tests {
    #[test]
    fn give_up_reasons_index_their_counters() {
        for (i, r) in super::GIVE_UP.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r}");
        }
    }
}
