use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context as TaskContext, Poll},
};

use async_nats::jetstream::{Context, context::PublishErrorKind};
use tower_service::Service;

use super::{CORRELATION_HEADER, KIND_HEADER, MSG_ID_HEADER, headers, subject};
use crate::{BoxError, ConfigError, message::Message};

/// A `tower_service::Service<Message>` that publishes each message to JetStream and answers
/// once the stream has stored it (its PublishAck), so retry, timeout and breaker layers can sit
/// in front of the broker.
///
/// The message id goes out as `Nats-Msg-Id`: the server drops a second message with the same
/// id within the stream's duplicate window (two minutes by default) and answers
/// [`Published::duplicate`], so a retried publish is stored once. The kind goes out as
/// [`KIND_HEADER`], the correlation id as [`CORRELATION_HEADER`], the other headers as they
/// are (`Nats-*` headers included: `Nats-Expected-Stream` and the like are honoured).
///
/// ```no_run
/// use tower::ServiceExt;
/// use tower_rampart::message::Message;
/// use tower_rampart::message::nats::JetStreamPublisher;
///
/// # async fn run() -> Result<(), tower_rampart::BoxError> {
/// let client = async_nats::connect("127.0.0.1:4222").await?;
/// let publisher = JetStreamPublisher::new(async_nats::jetstream::new(client), "orders.placed")?;
/// let ack = publisher
///     .oneshot(Message::new("order-42", "order.placed", r#"{"total":12}"#))
///     .await?;
/// println!("stored as {} in {}", ack.sequence, ack.stream);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct JetStreamPublisher {
    context: Context,
    /// `Some`: every message to this subject; `None`: to the message's kind.
    subject: Option<String>,
}

impl JetStreamPublisher {
    /// Publishes every message to `subject` (no wildcards).
    pub fn new(context: Context, subject: impl Into<String>) -> Result<Self, ConfigError> {
        let subject = subject.into();
        subject::check_publish("NATS JetStream publisher", "subject", &subject)?;
        Ok(JetStreamPublisher {
            context,
            subject: Some(subject),
        })
    }

    /// Publishes each message to the subject named by its kind (`order.placed`); a kind that
    /// is not a valid subject fails that call.
    pub fn by_kind(context: Context) -> Self {
        JetStreamPublisher {
            context,
            subject: None,
        }
    }
}

/// What the stream answered for a published message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Published {
    /// The stream that stored it.
    pub stream: String,
    /// Its sequence number in that stream (the first copy's, for a duplicate).
    pub sequence: u64,
    /// The stream already had a message with this id in its duplicate window: nothing new was
    /// stored.
    pub duplicate: bool,
}

/// A publish that failed. [`is_invalid_message`](Self::is_invalid_message) tells a message
/// NATS can never carry (retrying will not help) from a broker failure.
///
/// ```no_run
/// use tower::ServiceExt;
/// use tower_rampart::message::Message;
/// use tower_rampart::message::nats::JetStreamPublisher;
///
/// # async fn run(js: async_nats::jetstream::Context) -> Result<(), tower_rampart::BoxError> {
/// let publisher = JetStreamPublisher::new(js, "orders.placed")?;
/// let msg = Message::new("order-42", "order.placed", "{}").with_header("note", "two\nlines");
/// let err = publisher.oneshot(msg).await.unwrap_err();
/// assert!(err.is_invalid_message()); // a line break cannot travel in a NATS header
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct PublishError {
    inner: BoxError,
    invalid: bool,
}

impl PublishError {
    fn invalid(why: impl Into<BoxError>) -> Self {
        PublishError {
            inner: why.into(),
            invalid: true,
        }
    }

    fn broker(e: impl Into<BoxError>) -> Self {
        PublishError {
            inner: e.into(),
            invalid: false,
        }
    }

    /// The message itself cannot be published (empty id, a header NATS cannot carry, a kind
    /// that is not a subject); any retry fails the same way.
    pub fn is_invalid_message(&self) -> bool {
        self.invalid
    }
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JetStream publish failed: {}", self.inner)
    }
}

impl std::error::Error for PublishError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.inner)
    }
}

/// The future of [`JetStreamPublisher`]'s `call`. Boxed: async-nats's own PublishAck future is
/// boxed, and a broker round trip dwarfs one allocation.
pub struct PublishFuture {
    inner: Pin<Box<dyn Future<Output = Result<Published, PublishError>> + Send>>,
}

impl fmt::Debug for PublishFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PublishFuture")
    }
}

impl Future for PublishFuture {
    type Output = Result<Published, PublishError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl Service<Message> for JetStreamPublisher {
    type Response = Published;
    type Error = PublishError;
    type Future = PublishFuture;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, message: Message) -> Self::Future {
        let context = self.context.clone();
        let fixed = self.subject.clone();
        PublishFuture {
            inner: Box::pin(async move {
                let (id, kind, payload, hdrs, correlation) = message.into_parts();
                if id.is_empty() {
                    return Err(PublishError::invalid("the message id is empty"));
                }
                let subject = match fixed {
                    Some(s) => s,
                    None => {
                        subject::check_publish("NATS JetStream publisher", "kind", &kind)
                            .map_err(PublishError::invalid)?;
                        kind.clone()
                    }
                };
                // Ours last: they replace a header of the same name.
                let all = hdrs
                    .iter()
                    .filter(|(n, _)| {
                        ![MSG_ID_HEADER, KIND_HEADER, CORRELATION_HEADER].contains(&n.as_str())
                    })
                    .map(|(n, v)| (n.as_str(), v.as_str()))
                    .chain([(MSG_ID_HEADER, id.as_str()), (KIND_HEADER, kind.as_str())])
                    .chain(correlation.as_deref().map(|c| (CORRELATION_HEADER, c)));
                let nats_headers = headers::to_nats_strict(all).map_err(PublishError::invalid)?;
                let ack = context
                    .publish_with_headers(subject, nats_headers, payload)
                    .await
                    .map_err(|e| match e.kind() {
                        PublishErrorKind::MaxPayloadExceeded => PublishError::invalid(e),
                        _ => PublishError::broker(e),
                    })?
                    .await
                    .map_err(PublishError::broker)?;
                Ok(Published {
                    stream: ack.stream,
                    sequence: ack.sequence,
                    duplicate: ack.duplicate,
                })
            }),
        }
    }
}
