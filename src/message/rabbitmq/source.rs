use std::{fmt, future::Future, pin::Pin, sync::Arc, time::Duration};

use lapin::{
    Channel, Connection, Consumer, ConsumerDelegate,
    message::DeliveryResult,
    options::{BasicConsumeOptions, BasicNackOptions, BasicQosOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, LongString},
};
use tokio::sync::{mpsc, watch};

use super::{
    acker::{Link, RabbitAcker},
    check_name, check_timeout, convert, defaults,
    link::{Connector, confirm_channel},
};
use crate::{
    BoxError, ConfigError,
    message::{Delivery, Source, SourceError},
};

const LAYER: &str = "RabbitMQ source";

/// A [`Source`] consuming one RabbitMQ queue with manual acks and a prefetch equal to the
/// consumer's concurrency.
///
/// It connects on the first [`next`](Source::next) and after a lost connection reconnects by
/// itself (a bounded exponential backoff with jitter between attempts), reporting each failure
/// once as `Some(Err(..))`. Deliveries received on a lost connection cannot be settled on a new
/// one: their ackers fail, and the broker delivers them again. Dropping the source cancels the
/// consumer; deliveries still held are settled as long as their ackers live, then the channel
/// closes and the broker requeues whatever was not settled.
///
/// On connecting it declares the retry queue used by [`RabbitAcker`]'s delayed redeliveries
/// (`<queue>.retry` unless named otherwise: a durable classic queue with
/// `x-dead-letter-exchange: ""` and `x-dead-letter-routing-key: <queue>`), unless it exists:
/// then it is used as it is (declare your own with those two arguments, a quorum queue with
/// `x-dead-letter-strategy: at-least-once` say), or unless
/// [`delayed_redelivery(false)`](RabbitSourceBuilder::delayed_redelivery).
///
/// ```no_run
/// use std::time::Duration;
/// use tower_rampart::message::{Acker, Source, rabbitmq::RabbitSource};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let mut source = RabbitSource::builder("amqp://guest:guest@127.0.0.1:5672/%2f", "orders")
///     .prefetch(8)
///     .reconnect_backoff(Duration::from_millis(100), Duration::from_secs(5))
///     .build()?;
/// if let Some(Ok(delivery)) = source.next().await {
///     delivery.acker.redeliver(Duration::from_secs(30)).await?;
/// }
/// # Ok(()) }
/// ```
pub struct RabbitSource {
    settings: Arc<Settings>,
    connector: Connector,
    live: Option<Live>,
    /// Failed connection attempts in a row (the backoff's exponent).
    failures: u32,
    finished: bool,
}

#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) queue: String,
    pub(crate) retry_queue: Option<String>,
    prefetch: u16,
    consumer_tag: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) confirm_timeout: Duration,
    reconnect_min: Duration,
    reconnect_max: Duration,
}

/// One connection's consumer.
struct Live {
    link: Arc<Link>,
    deliveries: mpsc::UnboundedReceiver<DeliveryResult>,
    /// Dropping it cancels the consumer.
    _consumer: Consumer,
}

impl fmt::Debug for RabbitSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitSource")
            .field("queue", &self.settings.queue)
            .field("connected", &self.live.is_some())
            .field("failures", &self.failures)
            .finish_non_exhaustive()
    }
}

impl RabbitSource {
    /// A source for `queue`, connecting to `url` (`amqp://user:pass@host:5672/%2f`).
    pub fn builder(url: impl Into<String>, queue: impl Into<String>) -> RabbitSourceBuilder {
        RabbitSourceBuilder::new(Connector::Url(url.into().into()), queue.into())
    }

    /// A source for `queue` on a connection of yours. It opens new channels on it after a lost
    /// channel, but cannot reopen the connection: once that is closed, `next` reports the error
    /// and then `None`.
    pub fn builder_with_connection(
        connection: Connection,
        queue: impl Into<String>,
    ) -> RabbitSourceBuilder {
        RabbitSourceBuilder::new(Connector::Fixed(Arc::new(connection)), queue.into())
    }

    /// The queue consumed.
    pub fn queue(&self) -> &str {
        &self.settings.queue
    }

    /// Opens a connection, declares the retry queue and starts consuming.
    async fn connect(&self) -> Result<Live, BoxError> {
        let s = &self.settings;
        let conn = self.connector.connection(s.connect_timeout).await?;
        let setup = async {
            let publish = confirm_channel(&conn).await?;
            if let Some(retry) = &s.retry_queue {
                declare_retry_queue(&conn, &publish, retry, &s.queue).await?;
            }
            let consume: Channel = conn.create_channel().await?;
            consume
                .basic_qos(s.prefetch, BasicQosOptions::default())
                .await?;
            let consumer = consume
                .basic_consume(
                    s.queue.as_str().into(),
                    s.consumer_tag.as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            Ok::<_, lapin::Error>((publish, consume, consumer))
        };
        let (publish, consume, consumer) = tokio::time::timeout(s.connect_timeout, setup)
            .await
            .map_err(|_| {
            format!(
                "RabbitMQ consumer not set up within {:?}",
                s.connect_timeout
            )
        })??;
        let (tx, rx) = mpsc::unbounded_channel();
        let (dead_tx, dead) = watch::channel(false);
        consumer.set_delegate(Forward { tx, dead: dead_tx });
        Ok(Live {
            link: Arc::new(Link {
                owned: self.connector.reconnects(),
                connection: conn,
                consume,
                publish,
                settings: self.settings.clone(),
                dead,
            }),
            deliveries: rx,
            _consumer: consumer,
        })
    }

    /// How long to wait before connection attempt number `failures + 1`.
    fn backoff(&self) -> Duration {
        let s = &self.settings;
        let exp = self.failures.saturating_sub(1).min(20);
        let nominal = s
            .reconnect_min
            .saturating_mul(1 << exp)
            .min(s.reconnect_max);
        // Equal jitter: between half and all of it, so that consumers do not reconnect in step.
        let half = nominal / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

impl Source for RabbitSource {
    type Acker = RabbitAcker;

    async fn next(&mut self) -> Option<Result<Delivery<RabbitAcker>, SourceError>> {
        loop {
            if self.finished {
                return None;
            }
            let Some(live) = self.live.as_mut() else {
                if self.failures > 0 {
                    tokio::time::sleep(self.backoff()).await;
                }
                match self.connect().await {
                    Ok(live) => {
                        self.live = Some(live);
                        self.failures = 0;
                        continue;
                    }
                    Err(e) => {
                        self.failures = self.failures.saturating_add(1);
                        self.finished = !self.connector.reconnects();
                        return Some(Err(SourceError::new(e)));
                    }
                }
            };
            if !live.link.healthy() {
                self.live = None;
                return Some(Err(SourceError::new("RabbitMQ channel closed")));
            }
            match live.deliveries.recv().await {
                Some(Ok(Some(d))) => {
                    let payload = bytes::Bytes::from(d.data);
                    let (message, poison) = convert::to_message(
                        d.routing_key.as_str(),
                        d.redelivered,
                        &d.properties,
                        payload.clone(),
                    );
                    let acker = RabbitAcker::new(
                        d.acker,
                        live.link.clone(),
                        payload,
                        d.properties,
                        message.deliveries(),
                    );
                    return Some(Ok(match poison {
                        None => Delivery::new(message, acker),
                        Some(why) => Delivery::unreadable(message, acker, why),
                    }));
                }
                Some(Err(e)) => {
                    self.live = None;
                    return Some(Err(SourceError::new(e)));
                }
                Some(Ok(None)) | None => {
                    self.live = None;
                    return Some(Err(SourceError::new("RabbitMQ consumer cancelled")));
                }
            }
        }
    }
}

/// Declares the retry queue unless it exists (then it is used as it is: yours, say a quorum
/// queue with at-least-once dead-lettering). A passive declare of a missing queue closes its
/// channel, hence a channel of its own.
async fn declare_retry_queue(
    conn: &Connection,
    publish: &Channel,
    retry: &str,
    queue: &str,
) -> Result<(), lapin::Error> {
    let probe = conn.create_channel().await?;
    let exists = probe
        .queue_declare(
            retry.into(),
            QueueDeclareOptions::default().passive(),
            FieldTable::default(),
        )
        .await
        .is_ok();
    if exists {
        let _ = probe.close(200, "OK".into()).await;
        return Ok(());
    }
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(LongString::from("")),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(LongString::from(queue)),
    );
    publish
        .queue_declare(retry.into(), QueueDeclareOptions::durable(), args)
        .await?;
    Ok(())
}

/// Hands lapin's deliveries to the source in the order they arrive (sent here, synchronously,
/// rather than from the task lapin spawns). A delivery arriving after the source is gone goes
/// back to the queue at once.
struct Forward {
    tx: mpsc::UnboundedSender<DeliveryResult>,
    /// Set when the channel fails: ackers waiting on it give up (not when the consumer is
    /// cancelled: its deliveries can still be settled).
    dead: watch::Sender<bool>,
}

impl ConsumerDelegate for Forward {
    fn on_new_delivery(
        &self,
        delivery: DeliveryResult,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        if delivery.is_err() {
            self.dead.send_replace(true);
        }
        match self.tx.send(delivery) {
            Err(mpsc::error::SendError(Ok(Some(d)))) => Box::pin(async move {
                let requeue = BasicNackOptions {
                    multiple: false,
                    requeue: true,
                };
                let _ = d.acker.nack(requeue).await;
            }),
            _ => Box::pin(std::future::ready(())),
        }
    }
}

/// Settings of a [`RabbitSource`]; [`build`](Self::build) checks them.
///
/// ```
/// use tower_rampart::message::rabbitmq::RabbitSource;
///
/// let err = RabbitSource::builder("amqp://127.0.0.1:5672/%2f", "orders")
///     .prefetch(0)
///     .build()
///     .unwrap_err();
/// assert_eq!(err.setting(), Some("prefetch"));
/// ```
#[derive(Debug)]
pub struct RabbitSourceBuilder {
    connector: Connector,
    queue: String,
    retry_queue: Option<String>,
    delayed: bool,
    prefetch: u32,
    consumer_tag: String,
    connect_timeout: Duration,
    confirm_timeout: Duration,
    reconnect_min: Duration,
    reconnect_max: Duration,
}

impl RabbitSourceBuilder {
    fn new(connector: Connector, queue: String) -> Self {
        RabbitSourceBuilder {
            connector,
            queue,
            retry_queue: None,
            delayed: true,
            prefetch: 1,
            consumer_tag: String::new(),
            connect_timeout: defaults::CONNECT_TIMEOUT,
            confirm_timeout: defaults::CONFIRM_TIMEOUT,
            reconnect_min: defaults::RECONNECT_MIN,
            reconnect_max: defaults::RECONNECT_MAX,
        }
    }

    /// How many unacked deliveries the broker may hand this consumer at once: set it to the
    /// consumer's concurrency (1 to 65,535; default 1).
    pub fn prefetch(mut self, n: u32) -> Self {
        self.prefetch = n;
        self
    }

    /// The queue delayed redeliveries wait in (default `<queue>.retry`).
    pub fn retry_queue(mut self, name: impl Into<String>) -> Self {
        self.retry_queue = Some(name.into());
        self
    }

    /// Whether `redeliver(delay)` waits in the retry queue (default `true`). With `false` no
    /// retry queue is declared and a redelivery is a requeue at once (`basic.nack` with
    /// requeue), whatever the delay: for brokers where you may not declare queues.
    pub fn delayed_redelivery(mut self, on: bool) -> Self {
        self.delayed = on;
        self
    }

    /// The consumer tag (default: one the broker makes up).
    pub fn consumer_tag(mut self, tag: impl Into<String>) -> Self {
        self.consumer_tag = tag.into();
        self
    }

    /// How long connecting and setting up the consumer may take (default 10 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// How long a delayed redelivery waits for the confirm of its copy, and an ack, reject or
    /// requeue for lapin to take it (default 10 s).
    pub fn confirm_timeout(mut self, d: Duration) -> Self {
        self.confirm_timeout = d;
        self
    }

    /// The wait between reconnection attempts: from `min`, doubling, up to `max` (defaults
    /// 100 ms and 5 s), each with jitter (between half and all of it).
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect_min = min;
        self.reconnect_max = max;
        self
    }

    /// The source (it connects on its first `next`).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first setting out of range.
    pub fn build(self) -> Result<RabbitSource, ConfigError> {
        let prefetch = u16::try_from(self.prefetch)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| {
                ConfigError::field(
                    LAYER,
                    "prefetch",
                    format!("must be between 1 and 65535, got {}", self.prefetch),
                )
            })?;
        if self.queue.is_empty() {
            return Err(ConfigError::field(LAYER, "queue", "must not be empty"));
        }
        check_name(LAYER, "queue", &self.queue)?;
        let retry_queue = match (self.delayed, self.retry_queue) {
            (false, _) => None,
            (true, Some(name)) => Some(name),
            (true, None) => Some(format!("{}.retry", self.queue)),
        };
        if let Some(retry) = &retry_queue {
            if retry.is_empty() || *retry == self.queue {
                return Err(ConfigError::field(
                    LAYER,
                    "retry_queue",
                    "must be named, and not the queue itself",
                ));
            }
            check_name(LAYER, "retry_queue", retry)?;
        }
        check_name(LAYER, "consumer_tag", &self.consumer_tag)?;
        check_timeout(LAYER, "connect_timeout", self.connect_timeout)?;
        check_timeout(LAYER, "confirm_timeout", self.confirm_timeout)?;
        check_timeout(LAYER, "reconnect_min", self.reconnect_min)?;
        check_timeout(LAYER, "reconnect_max", self.reconnect_max)?;
        if self.reconnect_max < self.reconnect_min {
            return Err(ConfigError::field(
                LAYER,
                "reconnect_max",
                "must be at least reconnect_min",
            ));
        }
        Ok(RabbitSource {
            settings: Arc::new(Settings {
                queue: self.queue,
                retry_queue,
                prefetch,
                consumer_tag: self.consumer_tag,
                connect_timeout: self.connect_timeout,
                confirm_timeout: self.confirm_timeout,
                reconnect_min: self.reconnect_min,
                reconnect_max: self.reconnect_max,
            }),
            connector: self.connector,
            live: None,
            failures: 0,
            finished: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builder() -> RabbitSourceBuilder {
        RabbitSource::builder("amqp://127.0.0.1:5672/%2f", "orders")
    }

    #[test]
    fn every_setting_is_checked() {
        let field = |b: RabbitSourceBuilder| b.build().unwrap_err().setting();
        assert_eq!(field(builder().prefetch(0)), Some("prefetch"));
        assert_eq!(field(builder().prefetch(70_000)), Some("prefetch"));
        assert_eq!(field(RabbitSource::builder("amqp://x", "")), Some("queue"));
        assert_eq!(
            field(RabbitSource::builder("amqp://x", "q".repeat(256))),
            Some("queue")
        );
        assert_eq!(
            field(RabbitSource::builder("amqp://x", "q".repeat(250))),
            Some("retry_queue")
        );
        assert_eq!(field(builder().retry_queue("orders")), Some("retry_queue"));
        assert_eq!(
            field(builder().connect_timeout(Duration::ZERO)),
            Some("connect_timeout")
        );
        assert_eq!(
            field(builder().confirm_timeout(Duration::MAX)),
            Some("confirm_timeout")
        );
        assert_eq!(
            field(builder().reconnect_backoff(Duration::from_secs(2), Duration::from_secs(1))),
            Some("reconnect_max")
        );
        assert!(builder().prefetch(65_535).build().is_ok());
        let s = RabbitSource::builder("amqp://x", "q".repeat(250))
            .delayed_redelivery(false)
            .build()
            .unwrap();
        assert!(s.settings.retry_queue.is_none());
    }

    #[test]
    fn backoff_is_bounded_and_grows() {
        let mut s = builder()
            .reconnect_backoff(Duration::from_millis(100), Duration::from_secs(1))
            .build()
            .unwrap();
        for failures in [1, 2, 5, 40, u32::MAX] {
            s.failures = failures;
            let d = s.backoff();
            assert!(d <= Duration::from_secs(1), "{failures}: {d:?}");
            assert!(d >= Duration::from_millis(50), "{failures}: {d:?}");
        }
        s.failures = u32::MAX;
        assert!(s.backoff() >= Duration::from_millis(500));
    }
}
