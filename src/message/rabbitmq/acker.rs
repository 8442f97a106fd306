use std::{collections::BTreeMap, fmt, sync::Arc, time::Duration};

use bytes::Bytes;
use lapin::{
    BasicProperties, Channel, Connection,
    options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions},
    types::{AMQPValue, FieldTable},
};

use super::{DELIVERIES_HEADER, QUORUM_DELIVERY_COUNT, link::publish, source::Settings};
use crate::message::{Acker, SourceError};

/// What one connection's deliveries are settled through. Ackers hold it: the connection and
/// its channels stay open until the last delivery taken on them is settled or dropped.
pub(crate) struct Link {
    pub(crate) connection: Arc<Connection>,
    /// Whether we opened the connection (from a URL), and so close it.
    pub(crate) owned: bool,
    pub(crate) consume: Channel,
    /// In confirm mode: delayed redeliveries' copies.
    pub(crate) publish: Channel,
    pub(crate) settings: Arc<Settings>,
    /// Becomes `true` when the consume channel failed.
    pub(crate) dead: tokio::sync::watch::Receiver<bool>,
}

impl Link {
    pub(crate) fn healthy(&self) -> bool {
        self.consume.status().connected() && self.publish.status().connected()
    }

    /// Settles with `op`, unless the channel dies first or nothing happens within the confirm
    /// timeout: lapin's settle of a delivery whose connection just died can wait forever.
    async fn settle(
        &self,
        op: impl std::future::Future<Output = lapin::Result<bool>>,
    ) -> Result<(), SourceError> {
        let mut dead = self.dead.clone();
        let died = async move {
            if dead.wait_for(|d| *d).await.is_err() {
                // The consumer is gone, not the channel: only the timeout applies.
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            biased;
            r = op => settled(r),
            _ = died => settled(Ok(false)),
            _ = tokio::time::sleep(self.settings.confirm_timeout) => Err(SourceError::new(
                format!("no answer from RabbitMQ within {:?}", self.settings.confirm_timeout),
            )),
        }
    }
}

impl Drop for Link {
    /// The source and every delivery of this connection are gone: close the channels (and the
    /// connection we opened) now, so that the broker requeues what was not settled. lapin's own
    /// handles would keep them open as long as the consumer stays registered.
    fn drop(&mut self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return; // no runtime left: the process is ending, and its sockets with it
        };
        let (consume, publish) = (self.consume.clone(), self.publish.clone());
        let connection = self.owned.then(|| self.connection.clone());
        rt.spawn(async move {
            let _ = consume.close(200, "OK".into()).await;
            let _ = publish.close(200, "OK".into()).await;
            if let Some(c) = connection {
                let _ = c.close(200, "OK".into()).await;
            }
        });
    }
}

/// Settles one [`RabbitSource`](super::RabbitSource) delivery, on the channel it came from.
///
/// - `ack`: `basic.ack`.
/// - `reject`: `basic.reject` without requeue: the queue's `x-dead-letter-exchange` takes it
///   (or the broker drops it when the queue has none).
/// - `redeliver(delay)`: a copy goes to the retry queue with `expiration` = `delay` and
///   [`DELIVERIES_HEADER`](super::DELIVERIES_HEADER) = this delivery's count + 1 (published with
///   a confirm), and the original is acked only after that confirm. When the delay expires the
///   broker dead-letters the copy back to the queue. A zero delay republishes the copy straight
///   to the queue (its tail). When the copy cannot be published the original is requeued at
///   once (`basic.nack` with requeue) and the error returned. Without a retry queue
///   ([`delayed_redelivery(false)`](super::RabbitSourceBuilder::delayed_redelivery)) a
///   redelivery is that requeue.
///
/// Every method fails, without effect, when the delivery's channel is gone (the connection was
/// lost): the broker delivers the message again by itself. None waits longer than the source's
/// [`confirm_timeout`](super::RabbitSourceBuilder::confirm_timeout), nor past the channel's
/// death.
///
/// ```no_run
/// use std::time::Duration;
/// use tower_rampart::message::{Acker, Source, rabbitmq::RabbitSource};
///
/// # async fn run(mut source: RabbitSource) -> Result<(), Box<dyn std::error::Error>> {
/// if let Some(Ok(delivery)) = source.next().await {
///     match delivery.message.deliveries() {
///         1..=4 => delivery.acker.redeliver(Duration::from_secs(10)).await?,
///         _ => delivery.acker.reject().await?, // to the queue's dead-letter exchange
///     }
/// }
/// # Ok(()) }
/// ```
pub struct RabbitAcker {
    inner: lapin::Acker,
    link: Arc<Link>,
    payload: Bytes,
    properties: BasicProperties,
    deliveries: u32,
}

impl fmt::Debug for RabbitAcker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitAcker")
            .field("queue", &self.link.settings.queue)
            .field("deliveries", &self.deliveries)
            .field("usable", &self.inner.usable())
            .finish_non_exhaustive()
    }
}

impl RabbitAcker {
    pub(crate) fn new(
        inner: lapin::Acker,
        link: Arc<Link>,
        payload: Bytes,
        properties: BasicProperties,
        deliveries: u32,
    ) -> Self {
        RabbitAcker {
            inner,
            link,
            payload,
            properties,
            deliveries,
        }
    }

    /// The copy a delayed redelivery publishes: the original's properties and headers, without
    /// the broker's count (the copy is a new message to the broker), with ours.
    fn copy_properties(&self, expiration: Option<Duration>) -> BasicProperties {
        let mut headers: BTreeMap<_, _> = self
            .properties
            .headers()
            .as_ref()
            .map(|t| t.inner().clone())
            .unwrap_or_default();
        headers.remove(QUORUM_DELIVERY_COUNT);
        headers.insert(
            DELIVERIES_HEADER.into(),
            AMQPValue::LongLongInt(i64::from(self.deliveries.saturating_add(1))),
        );
        let props = self
            .properties
            .clone()
            .with_headers(FieldTable::from(headers));
        match expiration {
            Some(d) => {
                let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
                props.with_expiration(ms.to_string().into())
            }
            None => props,
        }
    }

    async fn requeue(&self) -> Result<(), SourceError> {
        let requeue = BasicNackOptions {
            multiple: false,
            requeue: true,
        };
        self.link.settle(self.inner.nack(requeue)).await
    }
}

/// `Ok(false)` from lapin means the acker was poisoned (its channel closed) or already used.
fn settled(r: lapin::Result<bool>) -> Result<(), SourceError> {
    match r {
        Ok(true) => Ok(()),
        Ok(false) => Err(SourceError::new(
            "the delivery's channel is closed: the broker will deliver it again",
        )),
        Err(e) => Err(SourceError::new(e)),
    }
}

impl Acker for RabbitAcker {
    async fn ack(self) -> Result<(), SourceError> {
        self.link
            .settle(self.inner.ack(BasicAckOptions::default()))
            .await
    }

    async fn redeliver(self, delay: Duration) -> Result<(), SourceError> {
        let settings = &self.link.settings;
        let Some(retry_queue) = settings.retry_queue.as_deref() else {
            return self.requeue().await;
        };
        if !self.inner.usable() {
            // The original comes back by itself: a copy now would be a duplicate.
            return settled(Ok(false));
        }
        let (target, expiration) = if delay.is_zero() {
            (settings.queue.as_str(), None)
        } else {
            (retry_queue, Some(delay))
        };
        let props = self.copy_properties(expiration);
        let published = publish(
            &self.link.publish,
            "",
            target,
            true,
            &self.payload,
            props,
            settings.confirm_timeout,
        )
        .await;
        match published {
            Ok(()) => {
                self.link
                    .settle(self.inner.ack(BasicAckOptions::default()))
                    .await
            }
            Err(e) => {
                let _ = self.requeue().await;
                Err(SourceError::new(e))
            }
        }
    }

    async fn reject(self) -> Result<(), SourceError> {
        self.link
            .settle(self.inner.reject(BasicRejectOptions { requeue: false }))
            .await
    }
}
