//! A message consumer with no services needed: the in-process broker, an inbox over the memory
//! store, in-process retries, and dead letters kept by a closure.
//!
//! ```sh
//! cargo run --example consumer
//! ```
//!
//! Six orders go through: one is published twice (the inbox skips the copy), one fails once
//! (the retry layer tries again at once), one cannot be decoded (dead-lettered as poison at
//! once), one fails every time (redelivered, then dead-lettered after three deliveries).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering::SeqCst},
    },
    time::Duration,
};

use tower::ServiceBuilder;
use tower_rampart::{
    BoxError,
    backoff::Backoff,
    classify::{ClassifyFn, Outcome},
    idempotency::MemoryStore,
    message::{
        DeadLetter, Message, Poison, SinkError,
        consumer::Consumer,
        inbox::{InboxLayer, Inboxed},
        memory, sink_fn,
    },
    retry::RetryLayer,
};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let (publisher, source) = memory::channel(64);
    for (id, payload) in [
        ("order-1", "12"),
        ("order-2", "30"),
        ("order-1", "12"), // published twice
        ("order-3", "7"),  // fails once, retried in process
        ("order-4", "{"),  // poison
        ("order-5", "99"), // its downstream is down
    ] {
        publisher
            .publish(Message::new(id, "order.placed", payload))
            .await;
    }
    publisher.close();

    let flaky = Arc::new(AtomicU32::new(0));
    let handler = tower::service_fn(move |msg: Message| {
        let flaky = flaky.clone();
        async move {
            let total: u32 = std::str::from_utf8(msg.payload())
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| Poison::new("payload is not an amount"))?;
            if msg.id() == "order-3" && flaky.fetch_add(1, SeqCst) == 0 {
                return Err::<u32, BoxError>("ledger timed out".into());
            }
            if msg.id() == "order-5" {
                return Err("ledger unavailable".into());
            }
            println!(
                "applied {} (delivery {}): {total}",
                msg.id(),
                msg.deliveries()
            );
            Ok(total)
        }
    });
    // In-process retries, but never of poison.
    let retry = RetryLayer::builder()
        .name("ledger")
        .max_attempts(2)
        .backoff(Backoff::constant(Duration::from_millis(20)))
        .build()?
        .classify(ClassifyFn::new(|r: Result<&u32, &BoxError>| match r {
            Ok(_) => Outcome::Success,
            Err(e) if Poison::is_in(&**e) => Outcome::Ignore,
            Err(_) => Outcome::FAILURE,
        }));
    let stack = ServiceBuilder::new()
        .layer(InboxLayer::new(MemoryStore::new()))
        .layer(retry)
        .service(handler);

    let consumer = Consumer::builder()
        .name("orders")
        .concurrency(4)
        .max_attempts(3)
        .redelivery_backoff(Backoff::constant(Duration::from_millis(200)))
        .classifier(ClassifyFn::new(|r: Result<&Inboxed<u32>, &BoxError>| {
            if let Ok(Inboxed::Duplicate) = r {
                println!("skipped a duplicate");
            }
            match r {
                Ok(_) => Outcome::Success,
                Err(_) => Outcome::FAILURE,
            }
        }))
        .dead_letters(sink_fn(|letter: &DeadLetter| {
            println!(
                "dead letter {} ({}, {} deliveries): first error {:?}, last {:?}",
                letter.message.id(),
                letter.reason,
                letter.attempts,
                letter.first_error.as_deref().unwrap_or("-"),
                letter.last_error,
            );
            std::future::ready(Ok::<(), SinkError>(()))
        }))
        .build(source, stack)?;

    // Runs until the closed queue is settled; a service would pass its shutdown signal.
    let summary = consumer.run_until(tokio::signal::ctrl_c()).await;
    println!(
        "received {}, acked {}, redelivered {}, dead-lettered {}",
        summary.received, summary.acked, summary.redelivered, summary.dead_lettered
    );
    Ok(())
}
