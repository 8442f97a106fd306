use lapin::{
    Channel,
    options::QueueDeclareOptions,
    types::{AMQPValue, FieldTable, LongString},
};

use super::convert::short;
use crate::BoxError;

/// Declares `queue` as a durable quorum queue (idempotent: an existing queue with the same
/// arguments is kept), with `dead_letter_exchange` as its `x-dead-letter-exchange` when given:
/// messages rejected without requeue go there, keeping their routing key (bind the exchange's
/// queue by that key, or use a fanout exchange).
///
/// Quorum queues count deliveries (`x-delivery-count`), so
/// [`Message::deliveries`](crate::message::Message::deliveries) is exact on them.
///
/// ```no_run
/// use lapin::{Connection, ConnectionProperties};
/// use tower_rampart::message::rabbitmq::declare_quorum_queue;
///
/// # async fn run() -> Result<(), tower_rampart::BoxError> {
/// let conn = Connection::connect("amqp://127.0.0.1:5672/%2f", ConnectionProperties::default())
///     .await?;
/// let channel = conn.create_channel().await?;
/// declare_quorum_queue(&channel, "orders", Some("orders.dlx")).await?;
/// # Ok(()) }
/// ```
pub async fn declare_quorum_queue(
    channel: &Channel,
    queue: &str,
    dead_letter_exchange: Option<&str>,
) -> Result<(), BoxError> {
    let name = short("queue name", queue)?;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    if let Some(dlx) = dead_letter_exchange {
        short("dead-letter exchange name", dlx)?;
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(LongString::from(dlx)),
        );
    }
    channel
        .queue_declare(name, QueueDeclareOptions::durable(), args)
        .await?;
    Ok(())
}
