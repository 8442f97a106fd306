//! The errors a handler (or a layer around it) returns to steer the consumer.

use std::{fmt, time::Duration};

use crate::BoxError;

/// "Not now": the consumer redelivers the message after `after`, whatever its attempts so
/// far (it did not fail). The inbox returns it for a message whose key is in flight on another
/// consumer, or when its store does not answer; a circuit breaker's
/// [`CircuitOpen`](crate::circuit_breaker::CircuitOpen) refusal is read the same way.
///
/// ```
/// use std::time::Duration;
/// use tower_rampart::message::consumer::RedeliverLater;
///
/// let later = RedeliverLater::new(Duration::from_secs(2)).because("ledger busy");
/// assert_eq!(later.after, Duration::from_secs(2));
/// assert_eq!(later.to_string(), "redeliver later (after 2s): ledger busy");
/// ```
#[derive(Debug)]
pub struct RedeliverLater {
    /// How long to wait before the next delivery.
    pub after: Duration,
    why: Option<BoxError>,
}

impl RedeliverLater {
    /// Redeliver after `after`.
    pub fn new(after: Duration) -> Self {
        RedeliverLater { after, why: None }
    }

    /// The same, with the reason (kept as the error's source).
    pub fn because(mut self, why: impl Into<BoxError>) -> Self {
        self.why = Some(why.into());
        self
    }
}

impl fmt::Display for RedeliverLater {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "redeliver later (after {:?})", self.after)?;
        if let Some(why) = &self.why {
            write!(f, ": {why}")?;
        }
        Ok(())
    }
}

impl std::error::Error for RedeliverLater {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.why.as_deref().map(|e| e as _)
    }
}

/// The message's inbox key is already used by a different message (same key, another kind or
/// payload): the consumer dead-letters it with reason
/// [`KeyReused`](crate::message::DeadLetterReason::KeyReused), never running it.
///
/// ```
/// use tower_rampart::message::consumer::KeyReused;
///
/// let e = KeyReused::new("inbox:order-42");
/// assert_eq!(e.key(), "inbox:order-42");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyReused {
    key: String,
}

impl KeyReused {
    /// The key `key` is taken by another message.
    pub fn new(key: impl Into<String>) -> Self {
        KeyReused { key: key.into() }
    }

    /// The key.
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl fmt::Display for KeyReused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "inbox key {:?} already used by a different message",
            self.key
        )
    }
}

impl std::error::Error for KeyReused {}

/// The first error of type `T` in `e`'s chain of sources, `e` included.
pub(crate) fn find_in_chain<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<T>() {
            return Some(t);
        }
        cur = err.source();
    }
    None
}
