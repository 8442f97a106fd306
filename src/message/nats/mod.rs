//! NATS JetStream (feature `nats`, async-nats 0.50, servers 2.9 and newer): a pull-consumer
//! [`Source`](crate::message::Source), dead letters to a stream, and a publisher as a tower
//! service.
//!
//! - [`JetStreamSource`]: a durable pull consumer with explicit acks, AckWait and MaxDeliver
//!   from a checked [`JetStreamConfig`]; never more than the consumer's concurrency delivered
//!   and unsettled; reports a lost connection and pulls again after the reconnect.
//! - [`JetStreamAcker`]: ack, nak with a delay, term, each confirmed by the server.
//! - [`NatsDeadLetters`]: a [`DeadLetterSink`](crate::message::DeadLetterSink) that publishes
//!   letters to a stream and waits for its PublishAck. JetStream has no dead-letter queue of
//!   its own: a termed message is gone but for an advisory, so dead-letter to a sink.
//! - [`JetStreamPublisher`]: `Service<Message>` publishing with `Nats-Msg-Id` = the message
//!   id, so the stream stores a retried publish once.
//!
//! Headers: the id travels as `Nats-Msg-Id`, the kind as [`KIND_HEADER`] (else the subject is
//! the kind), the correlation id as [`CORRELATION_HEADER`].
//!
//! ```no_run
//! use tower::ServiceExt;
//! use tower_rampart::message::{Acker, Message, Source};
//! use tower_rampart::message::nats::{JetStreamConfig, JetStreamPublisher, JetStreamSource};
//!
//! # async fn run() -> Result<(), tower_rampart::BoxError> {
//! let js = async_nats::jetstream::new(async_nats::connect("127.0.0.1:4222").await?);
//! js.get_or_create_stream(async_nats::jetstream::stream::Config {
//!     name: "ORDERS".into(),
//!     subjects: vec!["orders.>".into()],
//!     ..Default::default()
//! })
//! .await?;
//!
//! let publisher = JetStreamPublisher::new(js.clone(), "orders.placed")?;
//! publisher.oneshot(Message::new("order-42", "order.placed", "{}")).await?;
//!
//! let config = JetStreamConfig::builder("ORDERS", "billing").concurrency(4).build()?;
//! let mut source = JetStreamSource::bind(js, config).await?;
//! let delivery = source.next().await.expect("a source never ends")?;
//! assert_eq!(delivery.message.id(), "order-42");
//! delivery.acker.ack().await?;
//! # Ok(())
//! # }
//! ```

mod acker;
mod config;
mod dead_letters;
mod headers;
mod publisher;
mod source;

pub use acker::JetStreamAcker;
pub use config::{JetStreamConfig, JetStreamConfigBuilder, MAX_CONCURRENCY};
pub use dead_letters::NatsDeadLetters;
pub use publisher::{JetStreamPublisher, PublishError, PublishFuture, Published};
pub use source::JetStreamSource;

/// The header naming a message's kind (`order.placed`). Without it, the subject is the kind.
pub const KIND_HEADER: &str = "Rampart-Kind";

/// The header carrying a message's correlation id.
pub const CORRELATION_HEADER: &str = "Rampart-Correlation-Id";

/// JetStream's dedupe header, which carries the message id.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";

mod subject {
    use crate::ConfigError;

    /// A subject to publish to: tokens separated by dots, none empty, no wildcards or spaces.
    pub(crate) fn check_publish(
        layer: &'static str,
        field: &'static str,
        subject: &str,
    ) -> Result<(), ConfigError> {
        let ok = !subject.is_empty()
            && subject.split('.').all(|t| {
                !t.is_empty() && !t.contains(|c: char| c == '*' || c == '>' || c.is_whitespace())
            });
        if ok {
            Ok(())
        } else {
            Err(ConfigError::field(
                layer,
                field,
                format!("must be a subject without wildcards or spaces, got {subject:?}"),
            ))
        }
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn publish_subjects() {
            let c = |s| super::check_publish("t", "subject", s).is_ok();
            assert!(c("orders.placed") && c("dlq"));
            assert!(!c("") && !c("a..b") && !c("a.*") && !c("a.>") && !c("a b") && !c(".a"));
        }
    }
}
