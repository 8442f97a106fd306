use std::{fmt, time::Duration};

use lapin::Connection;

use super::{RabbitPublisher, RabbitPublisherBuilder, convert, publisher::PublisherCore};
use crate::{
    ConfigError,
    message::{DeadLetter, DeadLetterSink, Message, SinkError},
};

const LAYER: &str = "RabbitMQ dead letters";

/// A [`DeadLetterSink`] publishing each letter to an exchange of your choice, persistent, and
/// returning only after the broker's confirm (an ack of a routed message: a negative confirm,
/// an unroutable letter, a lost channel or no confirm in time is an error, and the consumer
/// keeps the original).
///
/// The letter is the original message (id, kind as `type`, payload, correlation id) with
/// [`DeadLetter::headers`]: the original headers plus the reason, attempts and errors. The
/// routing key is the original kind unless [`routing_key`](RabbitDeadLettersBuilder::routing_key)
/// names one.
///
/// ```
/// use tower_rampart::message::rabbitmq::RabbitDeadLetters;
///
/// // Connects on its first letter.
/// let sink = RabbitDeadLetters::builder("amqp://guest:guest@127.0.0.1:5672/%2f", "orders.dead")
///     .routing_key("orders")
///     .build()
///     .unwrap();
/// # let _ = sink;
/// ```
pub struct RabbitDeadLetters {
    core: PublisherCore,
}

impl fmt::Debug for RabbitDeadLetters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitDeadLetters").finish_non_exhaustive()
    }
}

impl RabbitDeadLetters {
    /// Dead letters to `exchange`, connecting to `url`.
    pub fn builder(
        url: impl Into<String>,
        exchange: impl Into<String>,
    ) -> RabbitDeadLettersBuilder {
        RabbitDeadLettersBuilder(RabbitPublisher::builder(url, exchange))
    }

    /// Dead letters to `exchange` on a connection of yours.
    pub fn builder_with_connection(
        connection: Connection,
        exchange: impl Into<String>,
    ) -> RabbitDeadLettersBuilder {
        RabbitDeadLettersBuilder(RabbitPublisher::builder_with_connection(
            connection, exchange,
        ))
    }
}

impl DeadLetterSink for RabbitDeadLetters {
    async fn send(&self, letter: &DeadLetter) -> Result<(), SinkError> {
        let key = self.core.route(&letter.message);
        let props =
            convert::properties(&letter.message, &letter.headers()).map_err(SinkError::new)?;
        self.core
            .send(&key, letter.message.payload(), props)
            .await
            .map_err(SinkError::new)
    }
}

/// Settings of a [`RabbitDeadLetters`]; [`build`](Self::build) checks them.
///
/// ```
/// use std::time::Duration;
/// use tower_rampart::message::rabbitmq::RabbitDeadLetters;
///
/// let err = RabbitDeadLetters::builder("amqp://127.0.0.1:5672/%2f", "dead")
///     .confirm_timeout(Duration::ZERO)
///     .build()
///     .unwrap_err();
/// assert_eq!(err.setting(), Some("confirm_timeout"));
/// ```
pub struct RabbitDeadLettersBuilder(RabbitPublisherBuilder);

impl fmt::Debug for RabbitDeadLettersBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RabbitDeadLettersBuilder")
            .field(&self.0)
            .finish()
    }
}

impl RabbitDeadLettersBuilder {
    /// One routing key for every letter (instead of the original's kind).
    pub fn routing_key(self, key: impl Into<String>) -> Self {
        RabbitDeadLettersBuilder(self.0.routing_key(key))
    }

    /// The routing key as a function of the original message.
    pub fn routing_key_fn(self, f: impl Fn(&Message) -> String + Send + Sync + 'static) -> Self {
        RabbitDeadLettersBuilder(self.0.routing_key_fn(f))
    }

    /// Whether a letter no queue is bound for is an error (default `true`).
    pub fn mandatory(self, on: bool) -> Self {
        RabbitDeadLettersBuilder(self.0.mandatory(on))
    }

    /// How long opening a connection and channel may take (default 10 s).
    pub fn connect_timeout(self, d: Duration) -> Self {
        RabbitDeadLettersBuilder(self.0.connect_timeout(d))
    }

    /// How long to wait for a confirm (default 10 s).
    pub fn confirm_timeout(self, d: Duration) -> Self {
        RabbitDeadLettersBuilder(self.0.confirm_timeout(d))
    }

    /// The sink (it connects on its first letter).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first setting out of range.
    pub fn build(self) -> Result<RabbitDeadLetters, ConfigError> {
        Ok(RabbitDeadLetters {
            core: self.0.build_inner(LAYER)?,
        })
    }
}
