use std::{fmt, future::Future, time::Duration};

use super::Message;
use crate::BoxError;

/// Where a consumer's messages come from: a broker subscription (RabbitMQ, NATS JetStream behind
/// their features) or anything else that hands out messages one at a time.
///
/// A source reconnects by itself: after an `Err`, the consumer waits a little and asks again.
/// `None` means the source is finished (closed for good) and the consumer stops pulling.
pub trait Source: Send + 'static {
    /// How each delivery is settled.
    type Acker: Acker;

    /// The next delivery, waiting for one.
    fn next(
        &mut self,
    ) -> impl Future<Output = Option<Result<Delivery<Self::Acker>, SourceError>>> + Send;
}

/// How one delivery is settled with its broker. Each method consumes the acker: a delivery is
/// settled once.
pub trait Acker: Send + 'static {
    /// Done: the broker forgets the message.
    fn ack(self) -> impl Future<Output = Result<(), SourceError>> + Send;

    /// Deliver it again after `delay` (the broker counts another delivery).
    fn redeliver(self, delay: Duration) -> impl Future<Output = Result<(), SourceError>> + Send;

    /// Never deliver it again, and let the broker's own dead-lettering take it (RabbitMQ: reject
    /// to the queue's `x-dead-letter-exchange`; NATS: `Term`). Used when the consumer's
    /// dead letters go to the broker rather than to a [`DeadLetterSink`](super::DeadLetterSink).
    fn reject(self) -> impl Future<Output = Result<(), SourceError>> + Send;
}

/// One message and how to settle it.
#[derive(Debug)]
pub struct Delivery<A> {
    /// The message.
    pub message: Message,
    /// Settles it.
    pub acker: A,
    /// Why the source could not read this delivery as a message (no id, an id longer than
    /// [`MAX_ID_LEN`](super::MAX_ID_LEN), headers it cannot represent): the consumer
    /// dead-letters it without calling the service. `message` then carries what could be read,
    /// with a placeholder id.
    pub poison: Option<String>,
}

impl<A> Delivery<A> {
    /// A readable message.
    pub fn new(message: Message, acker: A) -> Self {
        Delivery {
            message,
            acker,
            poison: None,
        }
    }

    /// A delivery that could not be read as a message, and why.
    pub fn unreadable(message: Message, acker: A, why: impl Into<String>) -> Self {
        Delivery {
            message,
            acker,
            poison: Some(why.into()),
        }
    }
}

/// A broker call that failed (connection lost, channel closed, refused).
#[derive(Debug)]
pub struct SourceError(BoxError);

impl SourceError {
    /// Wraps the broker client's error.
    pub fn new(e: impl Into<BoxError>) -> Self {
        SourceError(e.into())
    }
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "message source error: {}", self.0)
    }
}

impl std::error::Error for SourceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}
