//! The real RabbitMQ broker at 127.0.0.1:5672 for tests: per-test queue and exchange names, and
//! their deletion when the test ends (also when it fails: `Drop` deletes them on a fresh
//! connection).
//!
//! ```ignore
//! let rabbit = Rabbit::new("round-trip").await;
//! let queue = rabbit.classic_queue("orders").await; // "rampart-round-trip-<uuid>-orders"
//! rabbit.publish_raw(&queue, BasicProperties::default(), b"x").await;
//! assert_eq!(rabbit.count(&queue).await, 1);
//! ```

use std::time::Duration;

use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind,
    options::{
        BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
        ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::FieldTable,
};

/// The broker, as tests reach it.
pub const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A test's connection to the broker and the names it made.
pub struct Rabbit {
    prefix: String,
    pub conn: Connection,
    /// A confirm-mode channel for the test's own declarations and publishes.
    pub channel: Channel,
    queues: std::sync::Mutex<Vec<String>>,
    exchanges: std::sync::Mutex<Vec<String>>,
}

impl Rabbit {
    /// Connects; names made through this value start with `rampart-<test>-<random>-`.
    pub async fn new(test: &str) -> Rabbit {
        let conn = Connection::connect(URL, ConnectionProperties::default())
            .await
            .expect("RabbitMQ at 127.0.0.1:5672 (guest/guest)");
        let channel = conn.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let id = uuid::Uuid::new_v4().simple().to_string();
        Rabbit {
            prefix: format!("rampart-{test}-{}", &id[..8]),
            conn,
            channel,
            queues: Default::default(),
            exchanges: Default::default(),
        }
    }

    /// A unique name for this test (not declared).
    pub fn name(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.prefix)
    }

    /// Remembers a queue to delete at the end (one the code under test declared).
    pub fn track_queue(&self, name: &str) {
        self.queues.lock().unwrap().push(name.to_owned());
    }

    /// Declares a durable classic queue with these arguments.
    pub async fn queue_with(&self, suffix: &str, args: FieldTable) -> String {
        let name = self.name(suffix);
        self.track_queue(&name);
        self.channel
            .queue_declare(name.as_str().into(), QueueDeclareOptions::durable(), args)
            .await
            .unwrap();
        name
    }

    /// Declares a quorum queue; the retry queue `RabbitSource` declares beside it is removed at
    /// the end too.
    pub async fn quorum_queue(&self, suffix: &str) -> String {
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            lapin::types::AMQPValue::LongString("quorum".into()),
        );
        let queue = self.queue_with(suffix, args).await;
        self.track_queue(&format!("{queue}.retry"));
        queue
    }

    /// Declares a durable classic queue.
    pub async fn classic_queue(&self, suffix: &str) -> String {
        self.queue_with(suffix, FieldTable::default()).await
    }

    /// Declares an exchange.
    pub async fn exchange(&self, suffix: &str, kind: ExchangeKind) -> String {
        let name = self.name(suffix);
        self.exchanges.lock().unwrap().push(name.clone());
        self.channel
            .exchange_declare(
                name.as_str().into(),
                kind,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        name
    }

    /// Binds `queue` to `exchange` with `key`.
    pub async fn bind(&self, queue: &str, exchange: &str, key: &str) {
        self.channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }

    /// Publishes straight to `queue` (default exchange), confirmed.
    pub async fn publish_raw(&self, queue: &str, props: BasicProperties, payload: &[u8]) {
        let confirm = self
            .channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                payload,
                props,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack());
    }

    /// Ready messages in `queue` (not counting unacked ones).
    pub async fn count(&self, queue: &str) -> u32 {
        let ch = self.conn.create_channel().await.unwrap();
        let q = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions::default().passive(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        q.message_count()
    }

    /// Waits (at most 10 s) until `queue` holds `n` ready messages; returns what it holds.
    pub async fn wait_count(&self, queue: &str, n: u32) -> u32 {
        let mut last = 0;
        for _ in 0..500 {
            last = self.count(queue).await;
            if last == n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        last
    }

    /// Takes one message from `queue` (auto-acked), if any.
    pub async fn get(&self, queue: &str) -> Option<lapin::message::BasicGetMessage> {
        self.channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
    }
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        let queues = std::mem::take(&mut *self.queues.lock().unwrap());
        let exchanges = std::mem::take(&mut *self.exchanges.lock().unwrap());
        // Async cleanup from `Drop`, also while a failed test unwinds: a thread of its own with
        // a runtime of its own, joined.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let Ok(conn) = Connection::connect(URL, ConnectionProperties::default()).await
                else {
                    return;
                };
                for q in queues {
                    if let Ok(ch) = conn.create_channel().await {
                        let _ = ch
                            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                            .await;
                    }
                }
                for e in exchanges {
                    if let Ok(ch) = conn.create_channel().await {
                        let _ = ch
                            .exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default())
                            .await;
                    }
                }
                let _ = conn.close(200, "OK".into()).await;
            });
        })
        .join();
    }
}
