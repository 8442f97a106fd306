use std::{fmt, future::Future, time::SystemTime};

use super::{Headers, Message};
use crate::BoxError;

/// Why a message was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeadLetterReason {
    /// It failed on every one of its allowed attempts.
    MaxAttempts,
    /// It failed with an error the classifier does not retry.
    NotRetryable,
    /// It can never be processed: the handler said so with [`Poison`](super::Poison), or the
    /// source could not read it as a message.
    Poison,
    /// Its inbox key is already used by a different message (same key, other payload).
    KeyReused,
}

impl DeadLetterReason {
    /// The reason's stable name, as written in headers, tables and metrics.
    pub const fn as_str(&self) -> &'static str {
        match self {
            DeadLetterReason::MaxAttempts => "max-attempts",
            DeadLetterReason::NotRetryable => "not-retryable",
            DeadLetterReason::Poison => "poison",
            DeadLetterReason::KeyReused => "key-reused",
        }
    }

    /// The reason named `name` (as [`as_str`](Self::as_str) writes it).
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "max-attempts" => DeadLetterReason::MaxAttempts,
            "not-retryable" => DeadLetterReason::NotRetryable,
            "poison" => DeadLetterReason::Poison,
            "key-reused" => DeadLetterReason::KeyReused,
            _ => return None,
        })
    }
}

impl fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message that will not be processed, with everything needed to investigate and replay it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The original message, with its original headers.
    pub message: Message,
    /// Why it was dead-lettered.
    pub reason: DeadLetterReason,
    /// How many times it was delivered, as the broker counted.
    pub attempts: u32,
    /// The first error seen for it, when this consumer saw it (it may have failed first on
    /// another instance).
    pub first_error: Option<String>,
    /// The error that ended it.
    pub last_error: String,
    /// When it was dead-lettered.
    pub at: SystemTime,
}

/// Header names a dead letter carries when published to a broker.
impl DeadLetter {
    /// Header: the reason ([`DeadLetterReason::as_str`]).
    pub const REASON: &'static str = "x-rampart-dead-letter-reason";
    /// Header: attempts, in decimal.
    pub const ATTEMPTS: &'static str = "x-rampart-attempts";
    /// Header: the first error seen, when known.
    pub const FIRST_ERROR: &'static str = "x-rampart-first-error";
    /// Header: the last error.
    pub const LAST_ERROR: &'static str = "x-rampart-last-error";
    /// Header: the original message id.
    pub const ORIGINAL_ID: &'static str = "x-rampart-original-id";
    /// Header: the original message kind.
    pub const ORIGINAL_KIND: &'static str = "x-rampart-original-kind";

    /// The headers to publish the dead letter with: the original's, plus the reason, attempts,
    /// errors and original id and kind under the `x-rampart-*` names above (errors cut to 1,000
    /// bytes at a character boundary).
    ///
    /// ```
    /// use std::time::SystemTime;
    /// use tower_rampart::message::{DeadLetter, DeadLetterReason, Message};
    ///
    /// let letter = DeadLetter {
    ///     message: Message::new("m1", "order.placed", "{").with_header("tenant", "acme"),
    ///     reason: DeadLetterReason::Poison,
    ///     attempts: 1,
    ///     first_error: None,
    ///     last_error: "poison message: EOF while parsing".into(),
    ///     at: SystemTime::now(),
    /// };
    /// let headers = letter.headers();
    /// assert_eq!(headers["tenant"], "acme");
    /// assert_eq!(headers[DeadLetter::REASON], "poison");
    /// assert_eq!(headers[DeadLetter::ATTEMPTS], "1");
    /// ```
    pub fn headers(&self) -> Headers {
        let mut h = self.message.headers().clone();
        h.insert(Self::REASON.into(), self.reason.as_str().into());
        h.insert(Self::ATTEMPTS.into(), self.attempts.to_string());
        if let Some(first) = &self.first_error {
            h.insert(Self::FIRST_ERROR.into(), cut(first).into());
        }
        h.insert(Self::LAST_ERROR.into(), cut(&self.last_error).into());
        h.insert(Self::ORIGINAL_ID.into(), self.message.id().into());
        h.insert(Self::ORIGINAL_KIND.into(), self.message.kind().into());
        h
    }
}

/// At most 1,000 bytes, cut at a character boundary.
fn cut(s: &str) -> &str {
    super::cut(s, 1000)
}

/// Where dead letters go. `send` returns only once the letter is durably taken (a publisher
/// confirm, a committed row): the consumer acks the original only after that, and redelivers
/// it later when `send` fails.
pub trait DeadLetterSink: Send + Sync + 'static {
    /// Takes one dead letter.
    fn send(&self, letter: &DeadLetter) -> impl Future<Output = Result<(), SinkError>> + Send;
}

/// A dead-letter sink that failed: the original message is not acked.
#[derive(Debug)]
pub struct SinkError(BoxError);

impl SinkError {
    /// Wraps the sink's error.
    pub fn new(e: impl Into<BoxError>) -> Self {
        SinkError(e.into())
    }
}

impl fmt::Display for SinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dead-letter sink error: {}", self.0)
    }
}

impl std::error::Error for SinkError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// A sink made of a closure that returns a future (see [`sink_fn`]).
#[derive(Clone)]
pub struct SinkFn<F>(F);

impl<F> fmt::Debug for SinkFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SinkFn")
    }
}

/// A dead-letter sink from a closure: keep letters in a table of your own, a file, a channel.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use tower_rampart::message::{sink_fn, DeadLetter, SinkError};
///
/// let kept: Arc<Mutex<Vec<DeadLetter>>> = Arc::default();
/// let into = kept.clone();
/// let sink = sink_fn(move |letter: &DeadLetter| {
///     into.lock().unwrap().push(letter.clone());
///     std::future::ready(Ok::<(), SinkError>(()))
/// });
/// # let _ = sink;
/// ```
pub fn sink_fn<F, Fut>(f: F) -> SinkFn<F>
where
    F: Fn(&DeadLetter) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), SinkError>> + Send,
{
    SinkFn(f)
}

impl<F, Fut> DeadLetterSink for SinkFn<F>
where
    F: Fn(&DeadLetter) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), SinkError>> + Send,
{
    fn send(&self, letter: &DeadLetter) -> impl Future<Output = Result<(), SinkError>> + Send {
        (self.0)(letter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_round_trip_by_name() {
        for r in [
            DeadLetterReason::MaxAttempts,
            DeadLetterReason::NotRetryable,
            DeadLetterReason::Poison,
            DeadLetterReason::KeyReused,
        ] {
            assert_eq!(DeadLetterReason::from_name(r.as_str()), Some(r));
        }
        assert_eq!(DeadLetterReason::from_name("lost"), None);
    }

    #[test]
    fn long_errors_are_cut_at_a_char_boundary() {
        let long = "é".repeat(700); // 1,400 bytes
        let c = cut(&long);
        assert!(c.len() <= 1000 && c.len() >= 998);
        assert!(long.starts_with(c));
    }
}
