//! Spans of a retried call (feature `tracing`): one `rampart.call` span per logical call, one
//! `rampart.attempt` child span per attempt, with OpenTelemetry's field names where they apply.
//! Without the feature every type here is zero-sized and every method empty; with it but no
//! subscriber interested, making a span is a callsite interest check.

#[cfg(feature = "tracing")]
use tracing::{Span, field::Empty};

/// The spans of one call: none when no subscriber wants them (the feature on, nobody
/// listening costs a callsite check per call, and a word in the future).
#[cfg(feature = "tracing")]
pub(crate) struct Spans(Option<Box<Live>>);

#[cfg(feature = "tracing")]
struct Live {
    call: Span,
    attempt: Span,
}

/// The spans of one call (none without the `tracing` feature).
#[cfg(not(feature = "tracing"))]
pub(crate) struct Spans;

/// Keeps a span entered while alive. Its drop checks inline whether there is a span: the drop
/// of an `Option<EnteredSpan>` is a call even when it holds none (four per call, 40
/// instructions with nobody listening).
#[cfg(feature = "tracing")]
pub(crate) struct Entered(std::mem::ManuallyDrop<Option<tracing::span::EnteredSpan>>);

#[cfg(feature = "tracing")]
impl Entered {
    #[inline(always)]
    fn new(span: Option<tracing::span::EnteredSpan>) -> Self {
        Entered(std::mem::ManuallyDrop::new(span))
    }
}

#[cfg(feature = "tracing")]
impl Drop for Entered {
    #[inline(always)]
    fn drop(&mut self) {
        if self.0.is_some() {
            exit(&mut self.0);
        }
    }
}

/// Exits and drops the entered span, leaving `None` (which `ManuallyDrop` never drops).
#[cfg(feature = "tracing")]
#[inline(never)]
fn exit(entered: &mut Option<tracing::span::EnteredSpan>) {
    drop(entered.take());
}

/// Keeps a span entered while alive (nothing without the `tracing` feature).
#[cfg(not(feature = "tracing"))]
pub(crate) struct Entered;

#[cfg(feature = "tracing")]
impl Spans {
    /// The call span of the retry layer `retry`, and its first attempt's span.
    #[inline]
    pub(crate) fn start(retry: &str) -> Self {
        let call = tracing::info_span!(
            "rampart.call",
            "rampart.retry" = retry,
            "rampart.attempts" = Empty,
            "error.type" = Empty,
            "otel.status_code" = Empty,
        );
        if call.is_disabled() {
            return Spans(None);
        }
        Spans(Some(Box::new(Live::start(call))))
    }

    /// Enters the call span (for a poll of the call).
    #[inline]
    pub(crate) fn enter_call(&self) -> Entered {
        Entered::new(self.0.as_ref().map(|l| l.call.clone().entered()))
    }

    /// Enters the current attempt's span (while it is polled, and its outcome handled).
    #[inline]
    pub(crate) fn enter_attempt(&self) -> Entered {
        Entered::new(self.0.as_ref().map(|l| l.attempt.clone().entered()))
    }

    /// The attempt failed with `error_type`: recorded on its span, which then ends.
    pub(crate) fn attempt_failed(&mut self, error_type: &str) {
        if let Some(l) = self.0.as_mut() {
            failed(&l.attempt, error_type);
            l.attempt = Span::none();
        }
    }

    /// The call ends after `attempts` attempts, failed with `error_type` if any.
    #[inline]
    pub(crate) fn end(&mut self, attempts: u64, error_type: Option<&str>) {
        if let Some(l) = self.0.as_mut() {
            l.end(attempts, error_type);
        }
    }

    /// A new attempt, the `resend`-th resend of the request: its span, entered while the
    /// request is sent.
    pub(crate) fn resend(&mut self, resend: u64) -> Entered {
        let Some(l) = self.0.as_mut() else {
            return Entered::new(None);
        };
        l.attempt = tracing::info_span!(
            parent: &l.call,
            "rampart.attempt",
            "http.request.resend_count" = otel_int(resend),
            "error.type" = Empty,
            "otel.status_code" = Empty,
        );
        Entered::new(Some(l.attempt.clone().entered()))
    }
}

#[cfg(feature = "tracing")]
impl Live {
    #[inline(never)]
    fn start(call: Span) -> Self {
        let attempt = tracing::info_span!(
            parent: &call,
            "rampart.attempt",
            "http.request.resend_count" = Empty,
            "error.type" = Empty,
            "otel.status_code" = Empty,
        );
        Live { call, attempt }
    }

    #[inline(never)]
    fn end(&mut self, attempts: u64, error_type: Option<&str>) {
        self.call.record("rampart.attempts", otel_int(attempts));
        if let Some(e) = error_type {
            failed(&self.attempt, e);
            failed(&self.call, e);
        }
    }
}

/// A failed span: `error.type`, and the OpenTelemetry status `tracing-opentelemetry` reads.
#[cfg(feature = "tracing")]
fn failed(span: &Span, error_type: &str) {
    span.record("error.type", error_type);
    span.record("otel.status_code", "error");
}

/// OpenTelemetry's integers are i64 (`tracing-opentelemetry` turns a u64 into text).
#[cfg(feature = "tracing")]
fn otel_int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(not(feature = "tracing"))]
impl Spans {
    #[inline(always)]
    pub(crate) fn start(_retry: &str) -> Self {
        Spans
    }

    #[inline(always)]
    pub(crate) fn enter_call(&self) -> Entered {
        Entered
    }

    #[inline(always)]
    pub(crate) fn enter_attempt(&self) -> Entered {
        Entered
    }

    #[inline(always)]
    pub(crate) fn attempt_failed(&mut self, _error_type: &str) {}

    #[inline(always)]
    pub(crate) fn end(&mut self, _attempts: u64, _error_type: Option<&str>) {}

    #[inline(always)]
    pub(crate) fn resend(&mut self, _resend: u64) -> Entered {
        Entered
    }
}
