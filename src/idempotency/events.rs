//! What the Idempotency-Key layer did with a request, for listeners, metrics and logs.

use std::{fmt, sync::Arc};

/// Something the Idempotency-Key layer did.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    /// The key, once the request has one: redacted by default (`blake3:` and 12 hex digits of
    /// the hash of the key as stored, scope included), as stored (the scope, then the client's
    /// key) with [`Builder::log_raw_keys`](super::Builder::log_raw_keys).
    pub key: Option<&'a str>,
    /// The logical call, when a breaker, retry, timeout or fallback layer around this one
    /// opened it (a server pipeline's timeout, say): the id their events carry. `None` when
    /// this layer is the outermost, and for what happens after the response (a lease lost in
    /// the background).
    pub call: Option<crate::call::CallId>,
    /// What happened.
    pub kind: EventKind,
}

/// The kinds of [`Event`]. Each is also the `outcome` label of
/// [`metric_names::REQUESTS`](super::metric_names::REQUESTS) ([`EventKind::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EventKind {
    /// A new key: the handler runs as its owner.
    New,
    /// A completed key: its response was replayed.
    Replayed,
    /// A completed key whose response could not be kept: 409, not run again.
    NotReplayable,
    /// The key's first request is still running: 409.
    Conflict,
    /// The key's first request was cut off part-way, its outcome unknown: 409
    /// [`OUTCOME_UNKNOWN`](super::problem_types::OUTCOME_UNKNOWN), not run again.
    OutcomeUnknown,
    /// The handler was cut off part-way by the crate's own timeout inside the layer (its
    /// caller got the timeout's answer): the key was completed as "outcome unknown", never
    /// replayed and never run again.
    CutOff,
    /// A circuit breaker inside the layer refused the call: the handler never ran, so the key
    /// was released and a retry may run it.
    Refused,
    /// The key was used for another request: 422.
    Mismatch,
    /// No key where one is required: 400.
    MissingKey,
    /// A malformed or repeated key: 400.
    InvalidKey,
    /// Keys are scoped and the request has no principal: 400.
    NoPrincipal,
    /// The request body is over the limit: 413.
    TooLarge,
    /// The request body could not be read: 400.
    UnreadableBody,
    /// The store failed or did not answer: 503.
    StoreError,
    /// The store is full and took no new key: 503.
    StoreFull,
    /// The key's record cannot be read: 500, not run.
    UnreadableRecord,
    /// The store failed and the layer fails open: the handler runs unprotected.
    FailOpen,
    /// The handler panicked before it returned: its key was released (a panic after it
    /// returned is [`EventKind::OwnerPanicked`]).
    HandlerPanicked,
    /// The owner's lease was lost (or could no longer be confirmed) before completion.
    LeaseLost,
    /// Another owner held the key when the completion was stored: this one was not kept.
    CompleteLost,
    /// The store never took the completion within the TTL: the key may run again.
    CompleteAbandoned,
    /// The response body was still streaming after the body timeout: kept as not replayable.
    ResponseBodyTimeout,
    /// A claim whose answer was lost (or whose caller gave up) was not released in the
    /// background, because too many such releases were already running against a failing
    /// store: its lease frees the key.
    ReleaseShed,
    /// A panic in the layer's own work after the handler returned (its response body, a
    /// `keep_response_if` function, a listener): the key is completed as not replayable, never
    /// run again.
    OwnerPanicked,
}

/// Every kind with its label, once: `$then!(Kind => "label", ...)`. `as_str` and the metric
/// counter (which needs literal labels to build its key without allocating) both expand it.
macro_rules! event_kind_labels {
    ($then:ident) => {
        $then!(
            New => "new",
            Replayed => "replayed",
            NotReplayable => "not_replayable",
            Conflict => "conflict",
            OutcomeUnknown => "outcome_unknown",
            CutOff => "cut_off",
            Refused => "refused",
            Mismatch => "mismatch",
            MissingKey => "missing_key",
            InvalidKey => "invalid_key",
            NoPrincipal => "no_principal",
            TooLarge => "too_large",
            UnreadableBody => "unreadable_body",
            StoreError => "store_error",
            StoreFull => "store_full",
            UnreadableRecord => "unreadable_record",
            FailOpen => "fail_open",
            HandlerPanicked => "handler_panicked",
            LeaseLost => "lease_lost",
            CompleteLost => "complete_lost",
            CompleteAbandoned => "complete_abandoned",
            ResponseBodyTimeout => "response_body_timeout",
            ReleaseShed => "release_shed",
            OwnerPanicked => "owner_panicked",
        )
    };
}
#[cfg(feature = "metrics")]
pub(crate) use event_kind_labels;

impl EventKind {
    /// The kind as a metric label.
    pub const fn as_str(&self) -> &'static str {
        macro_rules! labels {
            ($($kind:ident => $label:literal,)*) => {
                match self {
                    $(EventKind::$kind => $label,)*
                }
            };
        }
        event_kind_labels!(labels)
    }
}

/// How many kinds there are: the metric counters are an array indexed by `kind as usize`.
#[cfg(feature = "metrics")]
impl EventKind {
    pub(crate) const COUNT: usize = {
        macro_rules! count {
            ($($kind:ident => $label:literal,)*) => {
                [$(EventKind::$kind),*].len()
            };
        }
        event_kind_labels!(count)
    };
}

// The table lists the kinds in declaration order, so `kind as usize` finds a kind's counter.
#[cfg(feature = "metrics")]
const _: () = {
    macro_rules! in_order {
        ($($kind:ident => $label:literal,)*) => {{
            let kinds = [$(EventKind::$kind as usize),*];
            let mut i = 0;
            while i < kinds.len() {
                assert!(kinds[i] == i, "event_kind_labels! must list the kinds in declaration order");
                i += 1;
            }
        }};
    }
    event_kind_labels!(in_order)
};

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

pub(crate) type Listener = Arc<dyn Fn(&Event<'_>) + Send + Sync>;
