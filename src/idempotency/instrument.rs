//! Outcomes and store latency, as metrics and events; store calls bounded by the store timeout.

use std::{future::Future, task::Poll, time::Duration};

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
        count(kind);
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

/// Counts one outcome. Each kind's label is a literal (the one table in `events.rs`), so that
/// the metric's key is built without allocating.
#[cfg(feature = "metrics")]
fn count(kind: EventKind) {
    macro_rules! by_kind {
        ($($kind:ident => $label:literal,)*) => {
            match kind {
                $(EventKind::$kind => {
                    metrics::counter!(metric_names::REQUESTS, "outcome" => $label).increment(1)
                })*
            }
        };
    }
    super::events::event_kind_labels!(by_kind);
}

/// One store call, bounded by the store timeout, its latency recorded.
pub(crate) async fn within<T>(
    op: &'static str,
    limit: Duration,
    f: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    #[cfg(feature = "metrics")]
    let start = tokio::time::Instant::now();
    let mut f = std::pin::pin!(f);
    // A store that answers at once (the memory store) needs no timer.
    let out = match std::future::poll_fn(|cx| Poll::Ready(f.as_mut().poll(cx))).await {
        Poll::Ready(out) => Ok(out),
        Poll::Pending => tokio::time::timeout(limit, f).await,
    };
    #[cfg(feature = "metrics")]
    {
        describe();
        let seconds = start.elapsed().as_secs_f64();
        // Literal labels: the metric's key is built without allocating.
        let name = metric_names::STORE_SECONDS;
        match op {
            "claim" => metrics::histogram!(name, "op" => "claim").record(seconds),
            "complete" => metrics::histogram!(name, "op" => "complete").record(seconds),
            "release" => metrics::histogram!(name, "op" => "release").record(seconds),
            "renew" => metrics::histogram!(name, "op" => "renew").record(seconds),
            other => metrics::histogram!(name, "op" => other).record(seconds),
        }
    }
    let _ = op;
    match out {
        Ok(r) => r,
        Err(_) => Err(StoreError::new(
            "the idempotency store did not answer in time",
        )),
    }
}

#[cfg(all(test, feature = "metrics"))]
mod tests {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    use super::{EventKind, count, metric_names};

    /// Every kind is counted under its own `as_str` label.
    #[test]
    fn outcome_labels_are_the_kinds_names() {
        use EventKind::*;
        let kinds = [
            New,
            Replayed,
            NotReplayable,
            Conflict,
            OutcomeUnknown,
            CutOff,
            Refused,
            Mismatch,
            MissingKey,
            InvalidKey,
            NoPrincipal,
            TooLarge,
            UnreadableBody,
            StoreError,
            StoreFull,
            UnreadableRecord,
            FailOpen,
            HandlerPanicked,
            LeaseLost,
            CompleteLost,
            CompleteAbandoned,
            ResponseBodyTimeout,
            ReleaseShed,
            OwnerPanicked,
        ];
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || kinds.iter().for_each(|k| count(*k)));
        let mut seen: Vec<String> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter(|(k, ..)| k.key().name() == metric_names::REQUESTS)
            .map(|(k, _, _, v)| {
                assert_eq!(v, DebugValue::Counter(1));
                k.key().labels().map(|l| l.value().to_owned()).collect()
            })
            .collect();
        let mut expected: Vec<String> = kinds.iter().map(|k| k.as_str().to_owned()).collect();
        seen.sort();
        expected.sort();
        assert_eq!(seen, expected);
    }
}
