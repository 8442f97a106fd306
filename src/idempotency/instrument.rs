//! Outcomes and store latency, as metrics and events; store calls bounded by the store timeout.

use std::{future::Future, time::Duration};

use super::{Event, EventKind, StoreError, layer::Options, redact::ShownKey};

/// Metric names of the Idempotency-Key layer.
pub mod metric_names {
    /// Counter of keyed requests by `outcome` (`new`, `replayed`, `conflict`, `mismatch`,
    /// `outcome_unknown`, `cut_off`, `refused`, `store_error`, `store_full`,
    /// `unreadable_record`, `lease_lost`, ...: every [`EventKind`](super::EventKind)).
    pub const REQUESTS: &str = "rampart_idempotency_requests_total";
    /// Histogram of store call latency in seconds, by `op` (`claim`, `complete`, `release`,
    /// `renew`).
    pub const STORE_SECONDS: &str = "rampart_idempotency_store_seconds";
    /// Counter of new keys the memory store refused because it was full.
    pub const STORE_FULL: &str = "rampart_idempotency_store_full_total";
    /// Counter of completed records the memory store dropped, oldest first, to make room for
    /// new keys (only records older than its retention floor).
    pub const STORE_EVICTED: &str = "rampart_idempotency_store_evicted_total";
}

/// Describes the metrics of [`metric_names`] (their `# HELP` text), once, when the first is
/// recorded: a description given before the recorder is installed would be lost.
#[cfg(feature = "metrics")]
pub(crate) fn describe() {
    static DESCRIBED: std::sync::Once = std::sync::Once::new();
    DESCRIBED.call_once(|| {
        use metrics::{Unit, describe_counter, describe_histogram};
        describe_counter!(
            metric_names::REQUESTS,
            Unit::Count,
            "Requests with an Idempotency-Key, and what the layer did with them, by outcome (new, replayed, conflict, mismatch, outcome_unknown, store_error, lease_lost, ...)"
        );
        describe_histogram!(
            metric_names::STORE_SECONDS,
            Unit::Seconds,
            "Latency of the Idempotency-Key store's calls, by op (claim, complete, release, renew)"
        );
        describe_counter!(
            metric_names::STORE_FULL,
            Unit::Count,
            "New keys the idempotency memory store refused because it was full"
        );
        describe_counter!(
            metric_names::STORE_EVICTED,
            Unit::Count,
            "Completed records the idempotency memory store dropped, oldest first, to make room"
        );
    });
}

/// Tells the listeners, the metrics and the log what happened to a request. The key is shown
/// redacted unless the layer logs raw keys; it is hashed only when a listener or the log wants
/// it.
pub(crate) fn outcome(options: &Options, key: Option<&str>, kind: EventKind) {
    let label = kind.as_str();
    #[cfg(feature = "metrics")]
    {
        describe();
        metrics::counter!(metric_names::REQUESTS, "outcome" => label).increment(1);
    }
    #[cfg(feature = "tracing")]
    let logged = tracing::enabled!(tracing::Level::DEBUG);
    #[cfg(not(feature = "tracing"))]
    let logged = false;
    if options.listeners.is_empty() && !logged {
        return;
    }
    let shown = key.map(|k| ShownKey::new(options, k));
    let key = shown.as_ref().map(ShownKey::as_str);
    #[cfg(feature = "tracing")]
    tracing::debug!(
        outcome = label,
        key,
        call_id = crate::call::CallId::current().map(crate::call::CallId::get),
        "idempotency"
    );
    let _ = label;
    if !options.listeners.is_empty() {
        let event = Event {
            key,
            call: crate::call::CallId::current(),
            kind,
        };
        for listener in &options.listeners {
            listener(&event);
        }
    }
}

/// One store call, bounded by the store timeout, its latency recorded.
pub(crate) async fn within<T>(
    op: &'static str,
    limit: Duration,
    f: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    #[cfg(feature = "metrics")]
    let start = tokio::time::Instant::now();
    let out = tokio::time::timeout(limit, f).await;
    #[cfg(feature = "metrics")]
    {
        describe();
        metrics::histogram!(metric_names::STORE_SECONDS, "op" => op)
            .record(start.elapsed().as_secs_f64());
    }
    let _ = op;
    match out {
        Ok(r) => r,
        Err(_) => Err(StoreError::new(
            "the idempotency store did not answer in time",
        )),
    }
}
