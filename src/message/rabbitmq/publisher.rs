use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use lapin::Connection;
use tower_service::Service;

use super::{
    PublishError, check_name, check_timeout, convert, defaults,
    link::{Connector, Slot, publish},
};
use crate::{ConfigError, message::Message};

const LAYER: &str = "RabbitMQ publisher";

type RouteFn = dyn Fn(&Message) -> String + Send + Sync;

/// How a message's routing key is chosen.
#[derive(Clone)]
enum Route {
    Kind,
    Fixed(String),
    Func(Arc<RouteFn>),
}

/// A `tower::Service<Message>` that publishes each message to one exchange and answers only
/// after the broker's publisher confirm: `Ok(())` is an ack of a routed message; a negative
/// confirm, an unroutable message (published as mandatory), a lost channel or no confirm in
/// time is an error, never a silent success.
///
/// The message is persistent (`delivery_mode` 2) with `message_id`, `type` (its kind),
/// `correlation_id`, a timestamp and its headers (as long strings). The routing key is the
/// message's kind unless [`routing_key`](RabbitPublisherBuilder::routing_key) or
/// [`routing_key_fn`](RabbitPublisherBuilder::routing_key_fn) say otherwise.
///
/// Clones share one confirm channel; a lost one is reopened (on a new connection when the
/// connection is gone) by the next call. Put retry, breaker and timeout layers in front of it:
/// [`PublishError::is_retryable`] tells which failures may pass on a second try.
///
/// ```no_run
/// use tower::ServiceExt;
/// use tower_rampart::message::{Message, rabbitmq::RabbitPublisher};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let publisher = RabbitPublisher::builder("amqp://guest:guest@127.0.0.1:5672/%2f", "events")
///     .build()?;
/// let msg = Message::new("order-42", "order.placed", r#"{"total":12}"#);
/// publisher.oneshot(msg).await?; // confirmed by the broker
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RabbitPublisher {
    inner: Arc<PublisherCore>,
}

/// What a publisher and a dead-letter sink share: the channel, the exchange and the route.
pub(crate) struct PublisherCore {
    slot: Slot,
    exchange: String,
    route: Route,
    mandatory: bool,
    confirm_timeout: Duration,
}

impl fmt::Debug for RabbitPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitPublisher")
            .field("exchange", &self.inner.exchange)
            .field("mandatory", &self.inner.mandatory)
            .finish_non_exhaustive()
    }
}

impl RabbitPublisher {
    /// A publisher to `exchange` (`""` is the default exchange: the routing key is a queue
    /// name), connecting to `url`.
    pub fn builder(url: impl Into<String>, exchange: impl Into<String>) -> RabbitPublisherBuilder {
        RabbitPublisherBuilder::new(Connector::Url(url.into().into()), exchange.into())
    }

    /// A publisher to `exchange` on a connection of yours (new channels on it after a lost
    /// channel; once the connection is closed every call fails).
    pub fn builder_with_connection(
        connection: Connection,
        exchange: impl Into<String>,
    ) -> RabbitPublisherBuilder {
        RabbitPublisherBuilder::new(Connector::Fixed(Arc::new(connection)), exchange.into())
    }

    /// Publishes one message and waits for its confirm.
    pub async fn publish(&self, msg: &Message) -> Result<(), PublishError> {
        let key = self.inner.route(msg);
        let props = convert::properties(msg, msg.headers()).map_err(PublishError::Invalid)?;
        self.inner.send(&key, msg.payload(), props).await
    }
}

impl PublisherCore {
    pub(crate) async fn send(
        &self,
        routing_key: &str,
        payload: &[u8],
        props: lapin::BasicProperties,
    ) -> Result<(), PublishError> {
        let (ch, generation) = self.slot.channel().await?;
        let result = publish(
            &ch,
            &self.exchange,
            routing_key,
            self.mandatory,
            payload,
            props,
            self.confirm_timeout,
        )
        .await;
        if matches!(
            result,
            Err(PublishError::Lost(_) | PublishError::Unconfirmed(_))
        ) {
            self.slot.forget(generation).await;
        }
        result
    }
}

impl Service<Message> for RabbitPublisher {
    type Response = ();
    type Error = PublishError;
    type Future = PublishFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), PublishError>> {
        // Connections are opened by calls: readiness would only hide the error.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, msg: Message) -> PublishFuture {
        let this = self.clone();
        PublishFuture {
            inner: Box::pin(async move { this.publish(&msg).await }),
        }
    }
}

/// The future of [`RabbitPublisher`]'s `call`: resolves when the broker confirmed (or refused)
/// the message. A network round trip dwarfs its one allocation. Nothing is sent until it is
/// polled.
///
/// ```
/// use tower::Service;
/// use tower_rampart::message::{
///     Message,
///     rabbitmq::{PublishFuture, RabbitPublisher},
/// };
///
/// let mut publisher = RabbitPublisher::builder("amqp://127.0.0.1:5672/%2f", "events")
///     .build()
///     .unwrap();
/// let future: PublishFuture = publisher.call(Message::new("m1", "order.placed", "{}"));
/// drop(future); // never polled: never published
/// ```
#[must_use = "futures do nothing unless polled"]
pub struct PublishFuture {
    inner: Pin<Box<dyn Future<Output = Result<(), PublishError>> + Send>>,
}

impl fmt::Debug for PublishFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PublishFuture")
    }
}

impl Future for PublishFuture {
    type Output = Result<(), PublishError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

/// Settings of a [`RabbitPublisher`]; [`build`](Self::build) checks them.
///
/// ```
/// use tower_rampart::message::rabbitmq::RabbitPublisher;
///
/// let err = RabbitPublisher::builder("amqp://127.0.0.1:5672/%2f", "e".repeat(300))
///     .build()
///     .unwrap_err();
/// assert_eq!(err.setting(), Some("exchange"));
/// ```
pub struct RabbitPublisherBuilder {
    connector: Connector,
    exchange: String,
    route: Route,
    mandatory: bool,
    connect_timeout: Duration,
    confirm_timeout: Duration,
}

impl fmt::Debug for RabbitPublisherBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitPublisherBuilder")
            .field("exchange", &self.exchange)
            .finish_non_exhaustive()
    }
}

impl RabbitPublisherBuilder {
    fn new(connector: Connector, exchange: String) -> Self {
        RabbitPublisherBuilder {
            connector,
            exchange,
            route: Route::Kind,
            mandatory: true,
            connect_timeout: defaults::CONNECT_TIMEOUT,
            confirm_timeout: defaults::CONFIRM_TIMEOUT,
        }
    }

    /// One routing key for every message (instead of its kind).
    pub fn routing_key(mut self, key: impl Into<String>) -> Self {
        self.route = Route::Fixed(key.into());
        self
    }

    /// The routing key as a function of the message (a key over 255 bytes fails that publish
    /// with [`PublishError::Invalid`]).
    pub fn routing_key_fn(
        mut self,
        f: impl Fn(&Message) -> String + Send + Sync + 'static,
    ) -> Self {
        self.route = Route::Func(Arc::new(f));
        self
    }

    /// Whether a message no queue is bound for is an error (default `true`: it is
    /// [`PublishError::Unroutable`]; with `false` the broker drops it and confirms).
    pub fn mandatory(mut self, on: bool) -> Self {
        self.mandatory = on;
        self
    }

    /// How long opening a connection and channel may take (default 10 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// How long to wait for a confirm (default 10 s); then the call fails with
    /// [`PublishError::Unconfirmed`] and the next one opens a new channel.
    pub fn confirm_timeout(mut self, d: Duration) -> Self {
        self.confirm_timeout = d;
        self
    }

    /// The publisher (it connects on its first call).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first setting out of range.
    pub fn build(self) -> Result<RabbitPublisher, ConfigError> {
        Ok(RabbitPublisher {
            inner: Arc::new(self.build_inner(LAYER)?),
        })
    }

    pub(crate) fn build_inner(self, layer: &'static str) -> Result<PublisherCore, ConfigError> {
        check_name(layer, "exchange", &self.exchange)?;
        if let Route::Fixed(k) = &self.route {
            check_name(layer, "routing_key", k)?;
        }
        check_timeout(layer, "connect_timeout", self.connect_timeout)?;
        check_timeout(layer, "confirm_timeout", self.confirm_timeout)?;
        Ok(PublisherCore {
            slot: Slot::new(self.connector, self.connect_timeout),
            exchange: self.exchange,
            route: self.route,
            mandatory: self.mandatory,
            confirm_timeout: self.confirm_timeout,
        })
    }
}

impl PublisherCore {
    /// The routing key for `msg` (user code, run outside any lock).
    pub(crate) fn route(&self, msg: &Message) -> String {
        match &self.route {
            Route::Kind => msg.kind().to_owned(),
            Route::Fixed(k) => k.clone(),
            Route::Func(f) => f(msg),
        }
    }
}
