//! Connections (made from a URL, or the caller's), channels in confirm mode, and one publish
//! that answers only after the broker's confirm.

use std::{fmt, sync::Arc, time::Duration};

use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions},
};

use super::{PublishError, convert::short};
use crate::BoxError;

/// Where connections come from.
#[derive(Clone)]
pub(crate) enum Connector {
    /// A URL: every reconnection is a new connection.
    Url(Arc<str>),
    /// The caller's connection: new channels on it while it lives; no reconnection after.
    Fixed(Arc<Connection>),
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The URL may carry a password: never printed.
            Connector::Url(_) => f.write_str("Url(..)"),
            Connector::Fixed(_) => f.write_str("Fixed(..)"),
        }
    }
}

impl Connector {
    /// A live connection (opened within `timeout` for a URL).
    pub(crate) async fn connection(&self, timeout: Duration) -> Result<Arc<Connection>, BoxError> {
        match self {
            Connector::Url(url) => {
                let props =
                    ConnectionProperties::default().with_connection_name("tower-rampart".into());
                match tokio::time::timeout(timeout, Connection::connect(url, props)).await {
                    Ok(Ok(c)) => Ok(Arc::new(c)),
                    Ok(Err(e)) => Err(e.into()),
                    Err(_) => Err(format!("no connection to RabbitMQ within {timeout:?}").into()),
                }
            }
            Connector::Fixed(c) if c.status().connected() => Ok(c.clone()),
            Connector::Fixed(_) => {
                Err("the RabbitMQ connection passed in is closed (it cannot be reopened)".into())
            }
        }
    }

    /// Whether a lost connection can be replaced.
    pub(crate) fn reconnects(&self) -> bool {
        matches!(self, Connector::Url(_))
    }
}

/// A channel in confirm mode on a live connection.
pub(crate) async fn confirm_channel(conn: &Connection) -> Result<Channel, lapin::Error> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(ch)
}

/// One publish on a confirm-mode channel, answered by the broker's confirm: `Ok` only for an ack
/// of a routed message.
pub(crate) async fn publish(
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
    mandatory: bool,
    payload: &[u8],
    props: BasicProperties,
    confirm_timeout: Duration,
) -> Result<(), PublishError> {
    let ex = short("exchange name", exchange).map_err(PublishError::Invalid)?;
    let rk = short("routing key", routing_key).map_err(PublishError::Invalid)?;
    let options = BasicPublishOptions {
        mandatory,
        immediate: false,
    };
    let confirm = async {
        let pending = ch
            .basic_publish(ex, rk, options, payload, props)
            .await
            .map_err(|e| PublishError::Lost(e.into()))?;
        pending.await.map_err(|e| PublishError::Lost(e.into()))
    };
    match tokio::time::timeout(confirm_timeout, confirm).await {
        Err(_) => Err(PublishError::Unconfirmed(confirm_timeout)),
        Ok(Err(e)) => Err(e),
        Ok(Ok(Confirmation::Ack(None))) => Ok(()),
        Ok(Ok(Confirmation::Ack(Some(_)))) => Err(PublishError::Unroutable {
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
        }),
        Ok(Ok(Confirmation::Nack(_))) => Err(PublishError::Nacked),
        // Only a channel without confirm mode answers this: ours always have it.
        Ok(Ok(Confirmation::NotRequested)) => Err(PublishError::Lost(
            "the channel is not in confirm mode".into(),
        )),
    }
}

/// The confirm channel a publisher or sink shares between its calls, reopened after a loss.
pub(crate) struct Slot {
    connector: Connector,
    connect_timeout: Duration,
    /// The connection is kept with its channel (a connection we opened lives while we use it),
    /// and a generation, to forget exactly the channel a failed publish used.
    current: tokio::sync::Mutex<Option<(Arc<Connection>, Channel, u64)>>,
    generation: std::sync::atomic::AtomicU64,
}

impl Slot {
    pub(crate) fn new(connector: Connector, connect_timeout: Duration) -> Self {
        Slot {
            connector,
            connect_timeout,
            current: tokio::sync::Mutex::new(None),
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Forgets the channel of generation `generation` (its publish was lost or unconfirmed:
    /// the connection may be silently dead), so that the next call opens a new one.
    pub(crate) async fn forget(&self, generation: u64) {
        let mut current = self.current.lock().await;
        if matches!(current.as_ref(), Some((_, _, g)) if *g == generation) {
            *current = None;
        }
    }

    fn next_generation(&self) -> u64 {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// The live channel, or a new one (on a new connection when the old one is gone). Only our
    /// own I/O runs under the lock: callers serialise on reconnection, not on publishing.
    pub(crate) async fn channel(&self) -> Result<(Channel, u64), PublishError> {
        let mut current = self.current.lock().await;
        if let Some((conn, ch, generation)) = current.as_ref() {
            if ch.status().connected() {
                return Ok((ch.clone(), *generation));
            }
            if conn.status().connected() {
                let ch = tokio::time::timeout(self.connect_timeout, confirm_channel(conn))
                    .await
                    .map_err(|_| PublishError::Connect("no channel within the timeout".into()))?
                    .map_err(|e| PublishError::Connect(e.into()))?;
                let generation = self.next_generation();
                *current = Some((conn.clone(), ch.clone(), generation));
                return Ok((ch, generation));
            }
        }
        *current = None;
        let conn = self
            .connector
            .connection(self.connect_timeout)
            .await
            .map_err(PublishError::Connect)?;
        let ch = tokio::time::timeout(self.connect_timeout, confirm_channel(&conn))
            .await
            .map_err(|_| PublishError::Connect("no channel within the timeout".into()))?
            .map_err(|e| PublishError::Connect(e.into()))?;
        let generation = self.next_generation();
        *current = Some((conn, ch.clone(), generation));
        Ok((ch, generation))
    }
}

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slot")
            .field("connector", &self.connector)
            .finish_non_exhaustive()
    }
}
