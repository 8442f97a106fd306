//! An event on its way into the outbox.

use crate::message::Message;

/// A message and the aggregate it belongs to (the order, account, ... whose events must be
/// published in the order they were written).
///
/// ```
/// use tower_rampart::message::{Message, outbox::OutboxEvent};
///
/// let ev = OutboxEvent::new("order-42", Message::new("evt-1", "order.placed", "{}"));
/// assert_eq!(ev.aggregate(), "order-42");
/// // Without an aggregate: the correlation id, else the message id (no order with others).
/// let ev: OutboxEvent = Message::new("evt-2", "order.paid", "{}").into();
/// assert_eq!(ev.aggregate(), "evt-2");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    aggregate: String,
    message: Message,
}

impl OutboxEvent {
    /// `message`, published after every earlier event of `aggregate` has been.
    pub fn new(aggregate: impl Into<String>, message: Message) -> Self {
        OutboxEvent {
            aggregate: aggregate.into(),
            message,
        }
    }

    /// The aggregate (the ordering key).
    pub fn aggregate(&self) -> &str {
        &self.aggregate
    }

    /// The message to publish.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// The parts.
    pub fn into_parts(self) -> (String, Message) {
        (self.aggregate, self.message)
    }
}

impl From<Message> for OutboxEvent {
    fn from(message: Message) -> Self {
        let aggregate = message.correlation_id().unwrap_or(message.id()).to_owned();
        OutboxEvent { aggregate, message }
    }
}
