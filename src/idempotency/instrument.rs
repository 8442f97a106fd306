//! Outcomes and store latency, as metrics and events; store calls bounded by the store timeout.

use std::{future::Future, time::Duration};

use super::{Event, EventKind, StoreError, layer::Options};

/// Metric names of the Idempotency-Key layer.
pub mod metric_names {
    /// Counter of keyed requests by `outcome` (`new`, `replayed`, `conflict`, `mismatch`,
    /// `store_error`, `store_full`, `unreadable_record`, `lease_lost`, ...).
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

/// Tells the listeners, the metrics and the log what happened to a request.
pub(crate) fn outcome(options: &Options, key: Option<&str>, kind: EventKind) {
    let label = kind.as_str();
    #[cfg(feature = "metrics")]
    metrics::counter!(metric_names::REQUESTS, "outcome" => label).increment(1);
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
    metrics::histogram!(metric_names::STORE_SECONDS, "op" => op)
        .record(start.elapsed().as_secs_f64());
    let _ = op;
    match out {
        Ok(r) => r,
        Err(_) => Err(StoreError::new(
            "the idempotency store did not answer in time",
        )),
    }
}
