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

/// Describes the metrics of [`metric_names`] (their `# HELP` text) to the first recorder
/// found, for the memory store's counters (full, evicted), which have no layer to bind with:
/// looked for at each use until one is (these are its rare paths).
#[cfg(feature = "metrics")]
pub(crate) fn describe() {
    static DESCRIBED: crate::telemetry::Lazy<()> = crate::telemetry::Lazy::new();
    let _ = DESCRIBED.bind_now(HELP, || ());
}

/// Tells the listeners, the metrics and the log what happened to a request. The key is shown
/// redacted unless the layer logs raw keys; it is hashed only when a listener or the log wants
/// it.
pub(crate) fn outcome(options: &Options, key: Option<&str>, kind: EventKind) {
    let label = kind.as_str();
    #[cfg(feature = "metrics")]
    if let Some(m) = options.meters.bound() {
        m.requests[kind as usize].increment(1);
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

/// The layer's metric handles: bound when the layer is built if a recorder exists, else at a
/// later use that finds one (see `crate::telemetry`). While none is bound, a request builds no
/// metric key and reads no clock for the store's latency.
#[derive(Default)]
pub(crate) struct Meters {
    #[cfg(feature = "metrics")]
    bound: crate::telemetry::Lazy<Handles>,
}

impl Clone for Meters {
    /// A builder's copy: bound again by the layer it builds.
    fn clone(&self) -> Self {
        Meters::default()
    }
}

#[cfg(feature = "metrics")]
pub(crate) struct Handles {
    /// One counter per [`EventKind`], in declaration order.
    requests: [metrics::Counter; EventKind::COUNT],
    /// One histogram per [`Op`].
    store: [metrics::Histogram; 4],
}

/// A store call, for its latency histogram's `op` label.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Op {
    Claim = 0,
    Complete = 1,
    Release = 2,
    Renew = 3,
}

/// Help text of every metric of [`metric_names`], sent when the layer's handles bind.
#[cfg(feature = "metrics")]
const HELP: &[crate::telemetry::Help] = &[
    crate::telemetry::Help::counter(
        metric_names::REQUESTS,
        "Requests with an Idempotency-Key, and what the layer did with them, by outcome (new, replayed, conflict, mismatch, outcome_unknown, store_error, lease_lost, ...)",
    ),
    crate::telemetry::Help::seconds(
        metric_names::STORE_SECONDS,
        "Latency of the Idempotency-Key store's calls, by op (claim, complete, release, renew)",
    ),
    crate::telemetry::Help::counter(
        metric_names::STORE_FULL,
        "New keys the idempotency memory store refused because it was full",
    ),
    crate::telemetry::Help::counter(
        metric_names::STORE_EVICTED,
        "Completed records the idempotency memory store dropped, oldest first, to make room",
    ),
];

impl Meters {
    /// Binds the handles now if a recorder is installed (when the layer is built).
    pub(crate) fn bind_now(&self) {
        #[cfg(feature = "metrics")]
        self.bound.bind_now(HELP, make);
    }

    /// The handles, bound now if they were not and a recorder has appeared since.
    #[cfg(feature = "metrics")]
    #[inline]
    pub(crate) fn bound(&self) -> Option<&Handles> {
        self.bound.get_or_bind(HELP, make)
    }
}

/// Every handle, with literal labels (the one table in `events.rs`): keys built without
/// allocating.
#[cfg(feature = "metrics")]
fn make() -> Handles {
    macro_rules! by_kind {
        ($($kind:ident => $label:literal,)*) => {
            [$(metrics::counter!(metric_names::REQUESTS, "outcome" => $label),)*]
        };
    }
    let name = metric_names::STORE_SECONDS;
    Handles {
        requests: super::events::event_kind_labels!(by_kind),
        store: [
            metrics::histogram!(name, "op" => "claim"),
            metrics::histogram!(name, "op" => "complete"),
            metrics::histogram!(name, "op" => "release"),
            metrics::histogram!(name, "op" => "renew"),
        ],
    }
}

/// One store call, bounded by the store timeout, its latency recorded when a recorder listens.
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) async fn within<T>(
    meters: &Meters,
    op: Op,
    limit: Duration,
    f: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    #[cfg(feature = "metrics")]
    let timed = meters
        .bound()
        .map(|m| (&m.store[op as usize], tokio::time::Instant::now()));
    let mut f = std::pin::pin!(f);
    // A store that answers at once (the memory store) needs no timer.
    let out = match std::future::poll_fn(|cx| Poll::Ready(f.as_mut().poll(cx))).await {
        Poll::Ready(out) => Ok(out),
        Poll::Pending => tokio::time::timeout(limit, f).await,
    };
    #[cfg(feature = "metrics")]
    if let Some((histogram, start)) = timed {
        histogram.record(start.elapsed().as_secs_f64());
    }
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

    use super::{EventKind, Meters, metric_names};

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
        // Kind i counted i + 1 times: each label must carry its own kind's count.
        metrics::with_local_recorder(&recorder, || {
            let meters = Meters::default();
            let handles = meters.bound().expect("a recorder is in scope");
            for (i, k) in kinds.iter().enumerate() {
                handles.requests[*k as usize].increment(i as u64 + 1);
            }
        });
        let mut seen: Vec<(String, u64)> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter(|(k, ..)| k.key().name() == metric_names::REQUESTS)
            .map(|(k, _, _, v)| {
                let DebugValue::Counter(n) = v else {
                    panic!("not a counter: {v:?}")
                };
                (k.key().labels().map(|l| l.value().to_owned()).collect(), n)
            })
            .collect();
        let mut expected: Vec<(String, u64)> = kinds
            .iter()
            .enumerate()
            .map(|(i, k)| (k.as_str().to_owned(), i as u64 + 1))
            .collect();
        assert_eq!(kinds.len(), EventKind::COUNT);
        seen.sort();
        expected.sort();
        assert_eq!(seen, expected);
    }
}
