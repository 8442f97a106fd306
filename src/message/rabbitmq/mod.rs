//! RabbitMQ (through [`lapin`]): a consumer [`Source`](crate::message::Source) with manual acks
//! and prefetch, delayed redelivery through a retry queue, dead letters and publishes answered
//! only after the broker's publisher confirm.
//!
//! - [`RabbitSource`]: consumes one queue; each delivery becomes a [`Message`] (id from the
//!   `message_id` property, kind from `type` or else the routing key, headers as text,
//!   `correlation_id`, the delivery count). It reconnects by itself with a bounded backoff.
//! - [`RabbitAcker`]: `ack` is `basic.ack`; `reject` is `basic.reject` without requeue (the
//!   queue's `x-dead-letter-exchange` takes it); `redeliver(delay)` publishes a copy to the retry
//!   queue `<queue>.retry`, which hands it back to the queue when its per-message TTL (= delay)
//!   expires, and acks the original only after the copy's confirm.
//! - [`RabbitDeadLetters`]: a [`DeadLetterSink`](crate::message::DeadLetterSink) publishing
//!   each letter to an exchange of your choice, persistent, confirmed.
//! - [`RabbitPublisher`]: a `tower::Service<Message>` that answers only after the confirm, for
//!   publishing behind retry, breaker and timeout layers.
//! - [`declare_quorum_queue`]: a durable quorum queue with an optional dead-letter exchange.
//!
//! # Delivery counts
//!
//! [`Message::deliveries`] is ours plus the broker's: [`DELIVERIES_HEADER`]
//! (`x-rampart-deliveries`, written on each delayed redelivery's copy; 1 when absent) plus the
//! broker's redeliveries of this copy: `x-delivery-count` on quorum queues, else 1 when the
//! `redelivered` flag is set (classic queues count no further: a classic-queue message
//! requeued many times by dying consumers reads as one more delivery).
//!
//! # Caveats
//!
//! - Delays ride on per-message TTL, and RabbitMQ expires messages only at the head of a queue:
//!   a short delay queued behind a longer one waits for it. With one delay per queue (a constant
//!   backoff) there is no such wait.
//! - A delayed redelivery is at least once: when the ack of the original fails after the copy
//!   was confirmed, both come back. The inbox dedupes them.
//! - The hop from the retry queue back to the queue is RabbitMQ's own dead-lettering.
//!
//! ```no_run
//! use tower_rampart::message::{Source, rabbitmq::RabbitSource};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let mut source = RabbitSource::builder("amqp://guest:guest@127.0.0.1:5672/%2f", "orders")
//!     .prefetch(16) // the consumer's concurrency
//!     .build()?;
//! while let Some(delivery) = source.next().await {
//!     let Ok(delivery) = delivery else { continue }; // reconnects on the next call
//!     println!("{} {}", delivery.message.id(), delivery.message.deliveries());
//!     tower_rampart::message::Acker::ack(delivery.acker).await?;
//! }
//! # Ok(()) }
//! ```
//!
//! [`Message`]: crate::message::Message
//! [`Message::deliveries`]: crate::message::Message::deliveries

mod acker;
mod convert;
mod dead_letters;
mod declare;
mod error;
mod link;
mod publisher;
mod source;

pub use acker::RabbitAcker;
pub use dead_letters::{RabbitDeadLetters, RabbitDeadLettersBuilder};
pub use declare::declare_quorum_queue;
pub use error::PublishError;
pub use publisher::{PublishFuture, RabbitPublisher, RabbitPublisherBuilder};
pub use source::{RabbitSource, RabbitSourceBuilder};

/// The header a delayed redelivery's copy carries: which delivery the copy will be (the
/// original's count plus one). Read back into [`Message::deliveries`](crate::message::Message::deliveries).
pub const DELIVERIES_HEADER: &str = "x-rampart-deliveries";

/// The header in which quorum queues count a message's earlier deliveries.
pub(crate) const QUORUM_DELIVERY_COUNT: &str = "x-delivery-count";

/// Settings shared by the builders.
pub(crate) mod defaults {
    use std::time::Duration;

    pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
    pub(crate) const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
    pub(crate) const RECONNECT_MIN: Duration = Duration::from_millis(100);
    pub(crate) const RECONNECT_MAX: Duration = Duration::from_secs(5);
}

/// A positive duration of at most a year.
pub(crate) fn check_timeout(
    layer: &'static str,
    field: &'static str,
    d: std::time::Duration,
) -> Result<(), crate::ConfigError> {
    if d.is_zero() {
        return Err(crate::ConfigError::field(
            layer,
            field,
            "must be more than zero",
        ));
    }
    crate::ConfigError::check_duration(layer, field, d).map(|_| ())
}

/// A name AMQP can carry (at most 255 bytes).
pub(crate) fn check_name(
    layer: &'static str,
    field: &'static str,
    name: &str,
) -> Result<(), crate::ConfigError> {
    if name.len() > 255 {
        return Err(crate::ConfigError::field(
            layer,
            field,
            format!("must be at most 255 bytes, got {}", name.len()),
        ));
    }
    Ok(())
}
