use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_nats::jetstream::{AckKind, message::Acker as NatsAcker};

use crate::message::{Acker, SourceError};

/// Settles one JetStream delivery. Each settlement waits for the server's confirmation (a
/// "double ack"), so `Ok` means the server has it; an `Err` means it may or may not (the
/// server then delivers again after AckWait, which the inbox absorbs).
///
/// - [`ack`](Acker::ack): `+ACK`, the message is done.
/// - [`redeliver`](Acker::redeliver): `-NAK` with the delay: delivered again after it.
/// - [`reject`](Acker::reject): `+TERM`, never delivered again. JetStream has no dead-letter
///   queue: a termed message survives only as a server advisory, so a consumer over NATS
///   should dead-letter to a sink ([`NatsDeadLetters`](super::NatsDeadLetters)) and ack,
///   rather than reject.
///
/// Dropping it unsettled leaves the message to AckWait.
///
/// ```no_run
/// use std::time::Duration;
/// use tower_rampart::message::{Acker, Source};
/// use tower_rampart::message::nats::{JetStreamConfig, JetStreamSource};
///
/// # async fn run() -> Result<(), tower_rampart::BoxError> {
/// let client = async_nats::connect("127.0.0.1:4222").await?;
/// let config = JetStreamConfig::builder("ORDERS", "billing").build()?;
/// let mut source = JetStreamSource::bind(async_nats::jetstream::new(client), config).await?;
/// if let Some(delivery) = source.next().await {
///     let delivery = delivery?;
///     delivery.acker.redeliver(Duration::from_secs(5)).await?;
/// }
/// # Ok(())
/// # }
/// ```
pub struct JetStreamAcker {
    inner: NatsAcker,
    _slot: Slot,
}

impl JetStreamAcker {
    pub(crate) fn new(inner: NatsAcker, slot: Slot) -> Self {
        JetStreamAcker { inner, _slot: slot }
    }

    async fn settle(self, kind: AckKind) -> Result<(), SourceError> {
        self.inner
            .double_ack_with(kind)
            .await
            .map_err(SourceError::new)
    }
}

impl fmt::Debug for JetStreamAcker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JetStreamAcker")
    }
}

impl Acker for JetStreamAcker {
    async fn ack(self) -> Result<(), SourceError> {
        self.settle(AckKind::Ack).await
    }

    async fn redeliver(self, delay: Duration) -> Result<(), SourceError> {
        // A zero delay is a plain nak: deliver again as soon as possible.
        let delay = (!delay.is_zero()).then_some(delay);
        self.settle(AckKind::Nak(delay)).await
    }

    async fn reject(self) -> Result<(), SourceError> {
        self.settle(AckKind::Term).await
    }
}

/// One delivery the source has handed out (or a pull request it has open): counted until
/// settled or dropped, so the source never pulls more than its concurrency.
pub(crate) struct Slot(Arc<AtomicUsize>);

impl Slot {
    pub(crate) fn take(count: &Arc<AtomicUsize>) -> Slot {
        count.fetch_add(1, Ordering::AcqRel);
        Slot(count.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
