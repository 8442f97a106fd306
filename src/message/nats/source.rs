use std::{
    collections::VecDeque,
    fmt,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_nats::{
    Client, Request, RequestError, RequestErrorKind, StatusCode,
    connection::State,
    jetstream::{
        self, Context,
        consumer::{AckPolicy, pull},
    },
};
use bytes::Bytes;
use tokio::task::JoinSet;

use super::{
    CORRELATION_HEADER, JetStreamAcker, JetStreamConfig, KIND_HEADER, MSG_ID_HEADER, acker::Slot,
    headers,
};
use crate::message::{Delivery, MAX_ID_LEN, Message, Source, SourceError};

/// How often a source waiting for messages looks at the connection: a reconnect abandons the
/// pull requests sent over the old one.
const CHECK_EVERY: Duration = Duration::from_millis(100);
/// How long `next` waits for a lost connection to come back before it reports it.
const RECONNECT_GRACE: Duration = Duration::from_secs(1);

/// A [`Source`] over a durable JetStream pull consumer (explicit acks).
///
/// [`bind`](Self::bind) creates the consumer on an existing stream, or updates it to the
/// [`JetStreamConfig`]. Each message becomes a [`Message`]:
///
/// - id: the `Nats-Msg-Id` header (the publisher's dedupe id). A message without one, or with
///   one longer than [`MAX_ID_LEN`], is handed out as [`Delivery::unreadable`] with the
///   placeholder id `nats:<stream>:<stream sequence>`, for the consumer to dead-letter;
/// - kind: the [`KIND_HEADER`] header, else the subject;
/// - correlation id: the [`CORRELATION_HEADER`] header;
/// - headers: the others, as text (a name sent twice has its values joined with ", ");
/// - deliveries: the server's count for this message (`num_delivered`).
///
/// The source keeps at most its `concurrency` messages delivered and unsettled, counting its
/// open pull requests (each asks for one message), so nothing waits in a local buffer while its
/// AckWait runs. The client reconnects by itself; a reconnect makes `next` answer
/// `Some(Err(..))` once, and the following call pulls over the new connection (messages
/// delivered into the lost one come back after AckWait). It never answers `None`.
///
/// ```no_run
/// use tower_rampart::message::{Acker, Source};
/// use tower_rampart::message::nats::{JetStreamConfig, JetStreamSource};
///
/// # async fn run() -> Result<(), tower_rampart::BoxError> {
/// let client = async_nats::connect("127.0.0.1:4222").await?;
/// let config = JetStreamConfig::builder("ORDERS", "billing").concurrency(8).build()?;
/// let mut source = JetStreamSource::bind(async_nats::jetstream::new(client), config).await?;
/// while let Some(delivery) = source.next().await {
///     let delivery = delivery?;
///     println!("{} ({})", delivery.message.id(), delivery.message.kind());
///     delivery.acker.ack().await?;
/// }
/// # Ok(())
/// # }
/// ```
pub struct JetStreamSource {
    context: Context,
    client: Client,
    stream: String,
    next_subject: String,
    pull_body: Bytes,
    pull_timeout: Duration,
    concurrency: usize,
    /// Ackers alive: handed out and not yet settled.
    handed_out: Arc<AtomicUsize>,
    pulls: JoinSet<Result<async_nats::Message, RequestError>>,
    /// Messages that arrived in pulls abandoned at a reconnect (still valid to hand out).
    ready: VecDeque<async_nats::Message>,
    /// The client's connection count when the open pulls were sent.
    connects: u64,
}

impl fmt::Debug for JetStreamSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JetStreamSource")
            .field("stream", &self.stream)
            .field("next_subject", &self.next_subject)
            .field("concurrency", &self.concurrency)
            .field("handed_out", &self.handed_out.load(Ordering::Relaxed))
            .field("pulls", &self.pulls.len())
            .finish()
    }
}

impl JetStreamSource {
    /// Creates the durable pull consumer `config.durable()` on the existing stream
    /// `config.stream()` (ack policy explicit, the config's AckWait and MaxDeliver), or
    /// updates it to them, and returns a source pulling from it. Fails when the stream does not
    /// exist or the server refuses the consumer (a setting it cannot change on an existing
    /// consumer, say).
    pub async fn bind(context: Context, config: JetStreamConfig) -> Result<Self, SourceError> {
        let consumer = pull::Config {
            durable_name: Some(config.durable.clone()),
            ack_policy: AckPolicy::Explicit,
            ack_wait: config.ack_wait,
            max_deliver: config.max_deliver.map_or(-1, i64::from),
            filter_subject: config.filter_subject.clone().unwrap_or_default(),
            ..Default::default()
        };
        context
            .create_consumer_on_stream(consumer, &config.stream)
            .await
            .map_err(SourceError::new)?;
        let client = context.client();
        let connects = client.statistics().connects.load(Ordering::Acquire);
        // One message per pull; the server ends an idle pull with a 408 at `expires`.
        let pull_body = format!(
            r#"{{"batch":1,"expires":{}}}"#,
            config.pull_expires.as_nanos()
        );
        Ok(JetStreamSource {
            context,
            client,
            next_subject: format!(
                "{}.CONSUMER.MSG.NEXT.{}.{}",
                config.api_prefix, config.stream, config.durable
            ),
            stream: config.stream,
            pull_body: pull_body.into(),
            // Past `expires` with no answer, the pull was lost (a reconnect, a restart).
            pull_timeout: config.pull_expires.saturating_add(Duration::from_secs(5)),
            concurrency: config.concurrency,
            handed_out: Arc::default(),
            pulls: JoinSet::new(),
            ready: VecDeque::new(),
            connects,
        })
    }

    /// The stream this source pulls from.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    async fn pull(&mut self) -> Result<Delivery<JetStreamAcker>, SourceError> {
        loop {
            self.check_connection().await?;
            if let Some(msg) = self.ready.pop_front() {
                if let Some(d) = self.read(msg)? {
                    return Ok(d);
                }
                continue;
            }
            self.top_up();
            let joined = tokio::select! {
                joined = self.pulls.join_next() => joined,
                _ = tokio::time::sleep(CHECK_EVERY) => continue,
            };
            let answer = match joined {
                None => continue,
                Some(Err(e)) if e.is_cancelled() => continue,
                Some(Err(e)) => return Err(SourceError::new(e)),
                Some(Ok(answer)) => answer,
            };
            match answer {
                Ok(msg) => {
                    if let Some(d) = self.read(msg)? {
                        return Ok(d);
                    }
                }
                // Unanswered past `expires`: lost on the way; pull again.
                Err(e) if e.kind() == RequestErrorKind::TimedOut => {}
                Err(e) if e.kind() == RequestErrorKind::NoResponders => {
                    return Err(SourceError::new(format!(
                        "no JetStream answers on {} (is JetStream enabled, does the stream \
                         exist?)",
                        self.next_subject
                    )));
                }
                Err(e) => return Err(SourceError::new(e)),
            }
        }
    }

    /// Sends pull requests until deliveries out plus pulls open reach the concurrency (at least
    /// one pull, so that a caller holding every slot still makes progress).
    fn top_up(&mut self) {
        let out = self.handed_out.load(Ordering::Acquire) + self.pulls.len() + self.ready.len();
        let mut want = self.concurrency.saturating_sub(out);
        if want == 0 && self.pulls.is_empty() {
            want = 1;
        }
        for _ in 0..want {
            let client = self.client.clone();
            let subject = self.next_subject.clone();
            // An inbox of its own: JetStream delivers a message under its stream subject, which
            // the client's shared request inbox cannot route back.
            let request = Request::new()
                .inbox(client.new_inbox())
                .payload(self.pull_body.clone())
                .timeout(Some(self.pull_timeout));
            self.pulls
                .spawn(async move { client.send_request(subject, request).await });
        }
    }

    /// Reports a reconnect once (keeping what already arrived, abandoning open pulls), and a
    /// connection still down after a short grace.
    async fn check_connection(&mut self) -> Result<(), SourceError> {
        let connects = self.client.statistics().connects.load(Ordering::Acquire);
        if connects != self.connects {
            self.connects = connects;
            while let Some(done) = self.pulls.try_join_next() {
                if let Ok(Ok(msg)) = done {
                    self.ready.push_back(msg);
                }
            }
            self.pulls.abort_all();
            return Err(SourceError::new(
                "NATS connection lost and re-established; pulling again",
            ));
        }
        let mut waited = Duration::ZERO;
        while self.client.connection_state() != State::Connected {
            if waited >= RECONNECT_GRACE {
                return Err(SourceError::new(format!(
                    "NATS connection is {}",
                    self.client.connection_state()
                )));
            }
            tokio::time::sleep(CHECK_EVERY).await;
            waited += CHECK_EVERY;
        }
        Ok(())
    }

    /// A message as a delivery; `None` for a pull that ended without one (408 expired, 404);
    /// an error for the server's refusal (409: consumer deleted, too many pulls waiting...).
    fn read(
        &self,
        msg: async_nats::Message,
    ) -> Result<Option<Delivery<JetStreamAcker>>, SourceError> {
        match msg.status {
            None | Some(StatusCode::OK) if msg.reply.is_some() => {}
            None | Some(StatusCode::OK) => {
                return Err(SourceError::new("a pull answered with no ack subject"));
            }
            Some(StatusCode::TIMEOUT | StatusCode::NOT_FOUND) => return Ok(None),
            Some(status) => {
                return Err(SourceError::new(format!(
                    "JetStream refused the pull: {status} {}",
                    msg.description.as_deref().unwrap_or("")
                )));
            }
        }
        Ok(Some(self.delivery(msg)))
    }

    fn delivery(&self, msg: async_nats::Message) -> Delivery<JetStreamAcker> {
        let msg = jetstream::Message {
            message: msg,
            context: self.context.clone(),
        };
        let (delivered, sequence) = msg
            .info()
            .map(|i| (i.delivered, i.stream_sequence))
            .unwrap_or((1, 0));
        let deliveries = u32::try_from(delivered.max(1)).unwrap_or(u32::MAX);
        let (msg, acker) = msg.split();
        let acker = JetStreamAcker::new(acker, Slot::take(&self.handed_out));
        let mut headers = headers::from_nats(msg.headers.as_ref());
        let id = headers.remove(MSG_ID_HEADER);
        let kind = headers
            .remove(KIND_HEADER)
            .unwrap_or_else(|| msg.subject.to_string());
        let correlation = headers.remove(CORRELATION_HEADER);
        let placeholder = || format!("nats:{}:{sequence}", self.stream);
        let (id, poison) = match id {
            Some(id) if id.is_empty() => (placeholder(), Some("empty Nats-Msg-Id header".into())),
            Some(id) if id.len() > MAX_ID_LEN => (
                placeholder(),
                Some(format!(
                    "Nats-Msg-Id is {} bytes, longer than {MAX_ID_LEN}",
                    id.len()
                )),
            ),
            Some(id) => (id, None),
            None => (placeholder(), Some("no Nats-Msg-Id header".to_string())),
        };
        let mut message = Message::new(id, kind, msg.payload)
            .with_headers(headers)
            .with_deliveries(deliveries);
        if let Some(c) = correlation {
            message = message.with_correlation_id(c);
        }
        match poison {
            Some(why) => Delivery::unreadable(message, acker, why),
            None => Delivery::new(message, acker),
        }
    }
}

impl Source for JetStreamSource {
    type Acker = JetStreamAcker;

    async fn next(&mut self) -> Option<Result<Delivery<JetStreamAcker>, SourceError>> {
        Some(self.pull().await)
    }
}
