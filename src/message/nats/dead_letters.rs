use async_nats::jetstream::{
    Context,
    stream::{Config as StreamConfig, StorageType},
};
use std::time::Duration;

use super::{CORRELATION_HEADER, KIND_HEADER, MSG_ID_HEADER, headers, subject};
use crate::{
    ConfigError,
    message::{DeadLetter, DeadLetterSink, SinkError},
};

/// A [`DeadLetterSink`] that publishes each letter to a JetStream subject and returns once the
/// stream has stored it (its PublishAck). JetStream has no dead-letter queue of its own: create
/// a stream over the subject ([`NatsDeadLetters::create_stream`] makes a plain one), and replay
/// from it after a fix.
///
/// Each letter carries the original payload and [`DeadLetter::headers`] (the original headers
/// and the `x-rampart-*` reason, attempts, errors, id and kind), plus:
///
/// - `Nats-Msg-Id`: the original message id, so the same message dead-lettered twice within
///   the stream's duplicate window (a redelivery after a lost ack) is stored once;
/// - [`KIND_HEADER`] and [`CORRELATION_HEADER`], as the publisher writes them.
///
/// The original's own `Nats-*` headers are left out (they are instructions to JetStream, such
/// as an expected stream, that would refuse the letter), and what NATS cannot carry is mended:
/// line breaks in values become spaces, other characters in names `_`.
///
/// ```no_run
/// use tower_rampart::message::nats::NatsDeadLetters;
///
/// # async fn run() -> Result<(), tower_rampart::BoxError> {
/// let client = async_nats::connect("127.0.0.1:4222").await?;
/// let js = async_nats::jetstream::new(client);
/// NatsDeadLetters::create_stream(&js, "ORDERS_DLQ", "dlq.orders").await?;
/// let sink = NatsDeadLetters::new(js, "dlq.orders")?;
/// # let _ = sink;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct NatsDeadLetters {
    context: Context,
    subject: String,
}

impl NatsDeadLetters {
    /// Publishes letters to `subject` (no wildcards), which a stream must capture.
    pub fn new(context: Context, subject: impl Into<String>) -> Result<Self, ConfigError> {
        let subject = subject.into();
        subject::check_publish("NATS dead letters", "subject", &subject)?;
        Ok(NatsDeadLetters { context, subject })
    }

    /// Creates the stream `name` over `subject` (file storage, two-minute duplicate window,
    /// no limits: dead letters stay until you remove them), or leaves an existing stream of
    /// that name as it is.
    pub async fn create_stream(
        context: &Context,
        name: &str,
        subject: &str,
    ) -> Result<(), SinkError> {
        context
            .get_or_create_stream(StreamConfig {
                name: name.into(),
                subjects: vec![subject.into()],
                storage: StorageType::File,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .map(drop)
            .map_err(SinkError::new)
    }

    /// The subject letters are published to.
    pub fn subject(&self) -> &str {
        &self.subject
    }
}

impl DeadLetterSink for NatsDeadLetters {
    async fn send(&self, letter: &DeadLetter) -> Result<(), SinkError> {
        let all = letter.headers();
        let m = &letter.message;
        let kept = all
            .iter()
            .filter(|(name, _)| !name.starts_with("Nats-"))
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .chain([(MSG_ID_HEADER, m.id()), (KIND_HEADER, m.kind())])
            .chain(m.correlation_id().map(|c| (CORRELATION_HEADER, c)));
        let nats_headers = headers::to_nats_lossy(kept);
        self.context
            .publish_with_headers(self.subject.clone(), nats_headers, m.payload().clone())
            .await
            .map_err(SinkError::new)?
            .await
            .map(drop)
            .map_err(SinkError::new)
    }
}
