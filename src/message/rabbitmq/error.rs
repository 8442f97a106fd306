use std::{fmt, time::Duration};

use crate::BoxError;

/// A publish the broker did not confirm. Only [`Invalid`](Self::Invalid) is certain not to have
/// reached the broker; after [`Lost`](Self::Lost) or [`Unconfirmed`](Self::Unconfirmed) it may
/// have, so a retry can publish it twice (consumers dedupe by message id).
///
/// ```
/// use tower_rampart::message::rabbitmq::PublishError;
///
/// let e = PublishError::Nacked;
/// assert!(e.is_retryable());
/// assert!(!PublishError::Invalid("message id is 300 bytes".into()).is_retryable());
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum PublishError {
    /// No connection or channel could be opened.
    Connect(BoxError),
    /// The message cannot be written as AMQP (a name or property over 255 bytes): never sent.
    Invalid(String),
    /// The broker refused it (a negative confirm).
    Nacked,
    /// No queue is bound for it (a mandatory publish the broker returned).
    Unroutable {
        /// Where it was published.
        exchange: String,
        /// With which routing key.
        routing_key: String,
    },
    /// The channel or connection closed before the confirm arrived.
    Lost(BoxError),
    /// No confirm within the confirm timeout.
    Unconfirmed(Duration),
}

impl PublishError {
    /// Whether publishing again may succeed: everything but [`Invalid`](Self::Invalid).
    pub fn is_retryable(&self) -> bool {
        !matches!(self, PublishError::Invalid(_))
    }
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublishError::Connect(e) => write!(f, "RabbitMQ connection failed: {e}"),
            PublishError::Invalid(why) => write!(f, "message cannot be published: {why}"),
            PublishError::Nacked => f.write_str("RabbitMQ refused the message (nack)"),
            PublishError::Unroutable {
                exchange,
                routing_key,
            } => write!(
                f,
                "no queue bound for exchange {exchange:?} and routing key {routing_key:?}"
            ),
            PublishError::Lost(e) => write!(f, "channel lost before the publish confirm: {e}"),
            PublishError::Unconfirmed(d) => write!(f, "no publish confirm within {d:?}"),
        }
    }
}

impl std::error::Error for PublishError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PublishError::Connect(e) | PublishError::Lost(e) => Some(&**e),
            _ => None,
        }
    }
}
