//! Messages as tower services: consumers that drive any `Service<Message>`, an inbox that
//! applies each message's effect once, and dead-letter routing.
//!
//! - [`Message`]: what a consumer hands its service (id, kind, payload, headers, the broker's
//!   delivery count, a correlation id).
//! - [`Source`] and [`Acker`]: where messages come from and how each is settled (ack, redeliver
//!   later, reject). Brokers implement them behind features (`rabbitmq`, `nats`).
//! - [`DeadLetter`] and [`DeadLetterSink`]: a failed message with its reason, attempts and
//!   errors, and where it goes; [`sink_fn`] turns a closure into a sink.
//! - [`Poison`]: the error a handler returns for a message it can never process (it cannot be
//!   decoded): dead-lettered at once, never redelivered.
//!
//! A message is never lost: the original is acked only after its effect committed or its dead
//! letter was confirmed.

pub mod consumer;
pub mod inbox;
pub mod memory;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "postgres")]
pub mod outbox;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;

mod dead_letter;
mod envelope;
mod poison;
mod source;

pub use dead_letter::{DeadLetter, DeadLetterReason, DeadLetterSink, SinkError, SinkFn, sink_fn};
pub use envelope::{Headers, MAX_ID_LEN, Message};
pub use poison::Poison;
pub use source::{Acker, Delivery, Source, SourceError};

/// `s`, at most `max` bytes of it, cut at a character boundary: error texts kept in headers and
/// tables stay bounded.
pub(crate) fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
