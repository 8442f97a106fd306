//! The RabbitMQ adapter against the real broker at 127.0.0.1:5672: source, acker, dead-letter
//! sink and publisher, with connection faults through the in-process TCP proxy.
//!
//! Run: `cargo test --all-features --test message_rabbitmq`
#![cfg(feature = "rabbitmq")]

#[path = "common/proxy.rs"]
#[allow(dead_code)]
mod proxy;
#[path = "common/rabbitmq.rs"]
#[allow(dead_code)]
mod rabbit;

use std::{
    collections::{BTreeSet, HashSet},
    time::{Duration, SystemTime},
};

use lapin::{
    BasicProperties, ExchangeKind,
    types::{AMQPValue, ByteArray, FieldArray, FieldTable, LongString},
};
use tokio::time::{Instant, timeout};
use tower::ServiceExt;
use tower_rampart::message::{
    Acker, DeadLetter, DeadLetterReason, DeadLetterSink, Delivery, Message, Source,
    rabbitmq::{
        DELIVERIES_HEADER, PublishError, RabbitAcker, RabbitDeadLetters, RabbitPublisher,
        RabbitSource, declare_quorum_queue,
    },
};

use proxy::FaultProxy;
use rabbit::{Rabbit, URL};

/// The next delivery, failing the test after 10 s.
async fn next(source: &mut RabbitSource) -> Delivery<RabbitAcker> {
    timeout(Duration::from_secs(10), source.next())
        .await
        .expect("a delivery within 10 s")
        .expect("the source is not finished")
        .expect("a delivery, not an error")
}

fn source(queue: &str, prefetch: u32) -> RabbitSource {
    RabbitSource::builder(URL, queue)
        .prefetch(prefetch)
        .build()
        .unwrap()
}

fn props(id: &str) -> BasicProperties {
    BasicProperties::default()
        .with_message_id(id.into())
        .with_delivery_mode(2)
}

async fn quorum_queue(rabbit: &Rabbit, suffix: &str, dlx: Option<&str>) -> String {
    let name = rabbit.name(suffix);
    rabbit.track_queue(&name);
    declare_quorum_queue(&rabbit.channel, &name, dlx)
        .await
        .unwrap();
    name
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_messages_arrive_whole_and_acked_ones_leave_the_queue() {
    let rabbit = Rabbit::new("round-trip").await;
    let queue = rabbit.classic_queue("orders").await;
    let publisher = RabbitPublisher::builder(URL, "")
        .routing_key(queue.as_str())
        .build()
        .unwrap();
    for i in 0..3 {
        let msg = Message::new(format!("m{i}"), "order.placed", format!("{{\"n\":{i}}}"))
            .with_header("tenant", "acme")
            .with_correlation_id("checkout-7");
        publisher.clone().oneshot(msg).await.unwrap();
    }
    assert_eq!(rabbit.count(&queue).await, 3);

    let mut source = source(&queue, 3);
    let mut ids = BTreeSet::new();
    for _ in 0..3 {
        let d = next(&mut source).await;
        assert!(d.poison.is_none());
        let m = &d.message;
        assert_eq!(m.kind(), "order.placed");
        assert_eq!(m.headers()["tenant"], "acme");
        assert_eq!(m.correlation_id(), Some("checkout-7"));
        assert_eq!(m.deliveries(), 1);
        assert_eq!(
            m.payload().as_ref(),
            format!("{{\"n\":{}}}", &m.id()[1..]).as_bytes()
        );
        ids.insert(m.id().to_owned());
        d.acker.ack().await.unwrap();
    }
    assert_eq!(ids, BTreeSet::from(["m0".into(), "m1".into(), "m2".into()]));
    drop(source);
    // Acked, not merely unacked: nothing returns once the consumer's connection is gone.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(rabbit.count(&queue).await, 0);
    assert_eq!(rabbit.count(&format!("{queue}.retry")).await, 0);
    rabbit.track_queue(&format!("{queue}.retry"));
}

/// Redelivery with a delay counts 1, 2, 3 and waits at least the delay, on a classic and a
/// quorum queue (whose own `x-delivery-count` must not be counted twice).
async fn redeliveries_count(rabbit: &Rabbit, queue: &str) {
    rabbit.track_queue(&format!("{queue}.retry"));
    rabbit.publish_raw(queue, props("r1"), b"retry me").await;
    let mut source = source(queue, 1);

    let first = next(&mut source).await;
    assert_eq!(first.message.deliveries(), 1);
    let delay = Duration::from_millis(300);
    let asked = Instant::now();
    first.acker.redeliver(delay).await.unwrap();

    let second = next(&mut source).await;
    assert!(
        asked.elapsed() >= delay,
        "came back after {:?}",
        asked.elapsed()
    );
    assert_eq!(second.message.id(), "r1");
    assert_eq!(second.message.payload().as_ref(), b"retry me");
    assert_eq!(second.message.deliveries(), 2);
    assert_eq!(second.message.headers()[DELIVERIES_HEADER], "2");
    second.acker.redeliver(Duration::ZERO).await.unwrap();

    let third = next(&mut source).await;
    assert_eq!(third.message.deliveries(), 3);
    third.acker.ack().await.unwrap();
    drop(source);
    assert_eq!(rabbit.wait_count(queue, 0).await, 0);
    assert_eq!(rabbit.count(&format!("{queue}.retry")).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_redeliveries_count_one_two_three_on_a_classic_queue() {
    let rabbit = Rabbit::new("redeliver-classic").await;
    let queue = rabbit.classic_queue("work").await;
    redeliveries_count(&rabbit, &queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_redeliveries_count_one_two_three_on_a_quorum_queue() {
    let rabbit = Rabbit::new("redeliver-quorum").await;
    let queue = quorum_queue(&rabbit, "work", None).await;
    // A retry queue of the user's own (quorum, at-least-once dead-lettering) is used as it is.
    let mut args = FieldTable::default();
    for (k, v) in [
        ("x-queue-type", "quorum"),
        ("x-dead-letter-exchange", ""),
        ("x-dead-letter-routing-key", queue.as_str()),
        ("x-dead-letter-strategy", "at-least-once"),
        ("x-overflow", "reject-publish"),
    ] {
        args.insert(k.into(), AMQPValue::LongString(LongString::from(v)));
    }
    rabbit
        .channel
        .queue_declare(
            format!("{queue}.retry").as_str().into(),
            lapin::options::QueueDeclareOptions::durable(),
            args,
        )
        .await
        .unwrap();
    redeliveries_count(&rabbit, &queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_message_goes_to_the_queues_dead_letter_exchange() {
    let rabbit = Rabbit::new("reject").await;
    let dlx = rabbit.exchange("dlx", ExchangeKind::Fanout).await;
    let dead = rabbit.classic_queue("dead").await;
    rabbit.bind(&dead, &dlx, "").await;
    let queue = quorum_queue(&rabbit, "work", Some(&dlx)).await;
    rabbit.track_queue(&format!("{queue}.retry"));
    rabbit.publish_raw(&queue, props("bad-1"), b"{").await;

    let mut source = source(&queue, 1);
    next(&mut source).await.acker.reject().await.unwrap();
    assert_eq!(rabbit.wait_count(&dead, 1).await, 1);
    let got = rabbit.get(&dead).await.unwrap();
    assert_eq!(
        got.delivery
            .properties
            .message_id()
            .as_ref()
            .unwrap()
            .as_str(),
        "bad-1"
    );
    assert_eq!(rabbit.count(&queue).await, 0);
}

fn letter(id: &str) -> DeadLetter {
    DeadLetter {
        message: Message::new(id, "order.placed", "{")
            .with_header("tenant", "acme")
            .with_correlation_id("flow-1"),
        reason: DeadLetterReason::Poison,
        attempts: 3,
        first_error: Some("timeout".into()),
        last_error: "EOF while parsing".into(),
        at: SystemTime::now(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_confirmed_with_their_headers_and_unroutable_ones_fail() {
    let rabbit = Rabbit::new("dead-letters").await;
    let exchange = rabbit.exchange("dead", ExchangeKind::Direct).await;
    let dead = rabbit.classic_queue("dead").await;
    rabbit.bind(&dead, &exchange, "orders").await;

    let sink = RabbitDeadLetters::builder(URL, exchange.as_str())
        .routing_key("orders")
        .build()
        .unwrap();
    sink.send(&letter("m1")).await.unwrap();
    // Confirmed means queued: no waiting needed.
    assert_eq!(rabbit.count(&dead).await, 1);
    let got = rabbit.get(&dead).await.unwrap().delivery;
    let p = &got.properties;
    assert_eq!(p.message_id().as_ref().unwrap().as_str(), "m1");
    assert_eq!(p.kind().as_ref().unwrap().as_str(), "order.placed");
    assert_eq!(p.correlation_id().as_ref().unwrap().as_str(), "flow-1");
    assert_eq!(*p.delivery_mode(), Some(2));
    assert_eq!(got.data, b"{");
    let h = p.headers().as_ref().unwrap().inner();
    let text = |k: &str| match h.get(k) {
        Some(AMQPValue::LongString(s)) => s.to_string(),
        other => panic!("{k}: {other:?}"),
    };
    assert_eq!(text("tenant"), "acme");
    assert_eq!(text(DeadLetter::REASON), "poison");
    assert_eq!(text(DeadLetter::ATTEMPTS), "3");
    assert_eq!(text(DeadLetter::FIRST_ERROR), "timeout");
    assert_eq!(text(DeadLetter::LAST_ERROR), "EOF while parsing");
    assert_eq!(text(DeadLetter::ORIGINAL_ID), "m1");

    // Bound to nothing: an error, never a silent success.
    let nowhere = RabbitDeadLetters::builder(URL, exchange.as_str())
        .routing_key("nobody-listens")
        .build()
        .unwrap();
    let err = nowhere.send(&letter("m2")).await.unwrap_err();
    assert!(err.to_string().contains("no queue bound"), "{err}");
    // An exchange that does not exist: the broker closes the channel; an error too, and the
    // sink's next letter gets a new channel.
    let missing = RabbitDeadLetters::builder(URL, rabbit.name("missing"))
        .build()
        .unwrap();
    assert!(missing.send(&letter("m3")).await.is_err());
    assert!(missing.send(&letter("m4")).await.is_err());
    sink.send(&letter("m5")).await.unwrap();
    assert_eq!(rabbit.count(&dead).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_without_an_id_is_unreadable_and_headers_of_every_type_are_text() {
    let rabbit = Rabbit::new("unreadable").await;
    let queue = rabbit.classic_queue("work").await;
    rabbit.track_queue(&format!("{queue}.retry"));
    let mut death = FieldTable::default();
    death.insert("count".into(), AMQPValue::LongLongInt(1));
    let mut headers = FieldTable::default();
    headers.insert(
        "x-death".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
    );
    headers.insert(
        "bin".into(),
        AMQPValue::ByteArray(ByteArray::from(vec![1u8, 0xab])),
    );
    headers.insert("n".into(), AMQPValue::LongInt(7));
    headers.insert("s".into(), AMQPValue::LongString(LongString::from("text")));
    rabbit
        .publish_raw(
            &queue,
            BasicProperties::default().with_headers(headers),
            b"?",
        )
        .await;

    let mut source = source(&queue, 1);
    let d = next(&mut source).await;
    assert!(d.poison.as_deref().unwrap().contains("message_id"));
    assert!(d.message.id().starts_with("unreadable-"));
    assert_eq!(d.message.kind(), queue, "no type: the routing key");
    let h = d.message.headers();
    assert_eq!(h["x-death"], r#"[{"count":1}]"#);
    assert_eq!(h["bin"], "01ab");
    assert_eq!(h["n"], "7");
    assert_eq!(h["s"], "text");
    d.acker.ack().await.unwrap();
}

/// Deliveries held unacked come back when their consumer dies (source and ackers dropped),
/// counted as second deliveries.
async fn unacked_come_back(rabbit: &Rabbit, queue: &str) {
    rabbit.track_queue(&format!("{queue}.retry"));
    for i in 0..5 {
        rabbit
            .publish_raw(queue, props(&format!("u{i}")), b"x")
            .await;
    }
    let mut first = source(queue, 5);
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(next(&mut first).await);
    }
    assert_eq!(rabbit.count(queue).await, 0, "all five are out, unacked");
    drop(first);
    drop(held); // the consumer dies

    let mut second = source(queue, 5);
    let mut ids = HashSet::new();
    for _ in 0..5 {
        let d = next(&mut second).await;
        assert_eq!(d.message.deliveries(), 2);
        ids.insert(d.message.id().to_owned());
        d.acker.ack().await.unwrap();
    }
    assert_eq!(ids.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_deliveries_come_back_when_the_consumer_dies() {
    let rabbit = Rabbit::new("consumer-death").await;
    let classic = rabbit.classic_queue("classic").await;
    unacked_come_back(&rabbit, &classic).await;
    let quorum = quorum_queue(&rabbit, "quorum", None).await;
    unacked_come_back(&rabbit, &quorum).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_cut_connection_the_source_reconnects_and_no_message_is_lost() {
    const N: usize = 300;
    let rabbit = Rabbit::new("cut").await;
    let queue = rabbit.classic_queue("work").await;
    rabbit.track_queue(&format!("{queue}.retry"));
    for i in 0..N {
        rabbit
            .publish_raw(&queue, props(&format!("c{i}")), b"x")
            .await;
    }
    let proxy = FaultProxy::start("127.0.0.1:5672").await;
    let url = format!("amqp://guest:guest@{}/%2f", proxy.addr());
    let mut source = RabbitSource::builder(url, queue.as_str())
        .prefetch(10)
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .build()
        .unwrap();

    let mut acked = HashSet::new();
    let mut errors = 0;
    let mut stale = None;
    let mut received = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.len() < N {
        assert!(
            Instant::now() < deadline,
            "only {} of {N} acked",
            acked.len()
        );
        let d = match timeout(Duration::from_secs(10), source.next())
            .await
            .unwrap()
        {
            Some(Ok(d)) => d,
            Some(Err(_)) => {
                errors += 1;
                if errors == 3 {
                    proxy.refuse(false); // the network is back
                }
                continue;
            }
            None => panic!("a URL source never finishes"),
        };
        received += 1;
        if received == 100 {
            // Held across the cut: its channel dies with the connection.
            stale = Some(d);
            proxy.refuse(true); // reconnections fail for a while
            proxy.cut();
            continue;
        }
        let id = d.message.id().to_owned();
        if d.acker.ack().await.is_ok() {
            acked.insert(id);
        }
    }
    assert!(
        errors >= 3,
        "the loss and each failed reconnection were reported"
    );
    assert!(proxy.accepted() >= 2, "the source reconnected");
    // A delivery of the dead channel is never acked on the new one: its acker fails cleanly
    // (its message was delivered again and acked above).
    let stale = stale.unwrap();
    assert!(acked.contains(stale.message.id()));
    assert!(stale.acker.ack().await.is_err());
    drop(source);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(rabbit.count(&queue).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_whose_confirm_never_came_is_an_error_and_the_next_reconnects() {
    let rabbit = Rabbit::new("publish-cut").await;
    let queue = rabbit.classic_queue("out").await;
    let proxy = FaultProxy::start("127.0.0.1:5672").await;
    let url = format!("amqp://guest:guest@{}/%2f", proxy.addr());
    let publisher = RabbitPublisher::builder(url, "")
        .routing_key(queue.as_str())
        .confirm_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let msg = |id: &str| Message::new(id, "k", "x");
    publisher.clone().oneshot(msg("p1")).await.unwrap();

    // Silent network: no confirm arrives in time.
    proxy.stall(true);
    tokio::time::sleep(Duration::from_millis(50)).await; // the proxy checks every 5 ms
    let err = publisher.clone().oneshot(msg("p2")).await.unwrap_err();
    assert!(matches!(err, PublishError::Unconfirmed(_)), "{err}");

    // Cut while waiting for the confirm: an error at once, not after the timeout.
    proxy.stall(false);
    proxy.cut();
    let slow = RabbitPublisher::builder(format!("amqp://guest:guest@{}/%2f", proxy.addr()), "")
        .routing_key(queue.as_str())
        .confirm_timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    slow.clone().oneshot(msg("p3")).await.unwrap();
    proxy.stall(true);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let pending = tokio::spawn(slow.clone().oneshot(msg("p4")));
    tokio::time::sleep(Duration::from_millis(100)).await;
    proxy.cut();
    proxy.stall(false);
    let err = timeout(Duration::from_secs(5), pending)
        .await
        .expect("the cut ends the wait")
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, PublishError::Lost(_)), "{err}");

    // Both publishers reconnect on their next call.
    publisher.clone().oneshot(msg("p5")).await.unwrap();
    slow.clone().oneshot(msg("p6")).await.unwrap();
    let mut ids = BTreeSet::new();
    while let Some(m) = rabbit.get(&queue).await {
        ids.insert(
            m.delivery
                .properties
                .message_id()
                .clone()
                .unwrap()
                .to_string(),
        );
    }
    for confirmed in ["p1", "p3", "p5", "p6"] {
        assert!(
            ids.contains(confirmed),
            "{confirmed} confirmed but not queued: {ids:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publisher_routes_by_kind_or_function_and_refuses_what_amqp_cannot_carry() {
    let rabbit = Rabbit::new("publisher").await;
    let exchange = rabbit.exchange("events", ExchangeKind::Topic).await;
    let placed = rabbit.classic_queue("placed").await;
    let tenant = rabbit.classic_queue("tenant").await;
    rabbit.bind(&placed, &exchange, "order.placed").await;
    rabbit.bind(&tenant, &exchange, "tenant.acme").await;

    let by_kind = RabbitPublisher::builder(URL, exchange.as_str())
        .build()
        .unwrap();
    by_kind
        .clone()
        .oneshot(Message::new("k1", "order.placed", "x"))
        .await
        .unwrap();
    let by_fn = RabbitPublisher::builder(URL, exchange.as_str())
        .routing_key_fn(|m| format!("tenant.{}", m.headers()["tenant"]))
        .build()
        .unwrap();
    by_fn
        .clone()
        .oneshot(Message::new("k2", "order.placed", "x").with_header("tenant", "acme"))
        .await
        .unwrap();
    assert_eq!(rabbit.count(&placed).await, 1);
    assert_eq!(rabbit.count(&tenant).await, 1);

    let err = by_kind
        .clone()
        .oneshot(Message::new("k3", "k".repeat(300), "x"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, PublishError::Invalid(_)) && !err.is_retryable(),
        "{err}"
    );
    let err = by_kind
        .clone()
        .oneshot(Message::new("k4", "order.cancelled", "x"))
        .await
        .unwrap_err();
    assert!(matches!(err, PublishError::Unroutable { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_stay_exact_across_requeues_consumer_deaths_and_delayed_redeliveries() {
    let rabbit = Rabbit::new("counts").await;
    let queue = quorum_queue(&rabbit, "work", None).await;
    rabbit.track_queue(&format!("{queue}.retry"));
    rabbit.publish_raw(&queue, props("q1"), b"x").await;

    // Redelivery by requeue: the quorum queue counts it.
    let mut requeuing = RabbitSource::builder(URL, queue.as_str())
        .delayed_redelivery(false)
        .build()
        .unwrap();
    for n in 1..=2 {
        let d = next(&mut requeuing).await;
        assert_eq!(d.message.deliveries(), n);
        d.acker.redeliver(Duration::from_secs(60)).await.unwrap(); // no delay without a retry queue
    }
    let held = next(&mut requeuing).await;
    assert_eq!(held.message.deliveries(), 3);
    drop((held, requeuing)); // the consumer dies holding it

    // Then a delayed redelivery: the copy is a new message to the broker, whose count of the
    // original must not ride along in its headers.
    let mut source = source(&queue, 1);
    let d = next(&mut source).await;
    assert_eq!(d.message.deliveries(), 4);
    d.acker.redeliver(Duration::from_millis(50)).await.unwrap();
    let d = next(&mut source).await;
    assert_eq!(d.message.deliveries(), 5);
    assert!(!d.message.headers().contains_key("x-delivery-count"));
    d.acker.ack().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivery_whose_copy_cannot_be_published_requeues_the_original() {
    let rabbit = Rabbit::new("copy-fails").await;
    let queue = rabbit.classic_queue("work").await;
    let retry = format!("{queue}.retry");
    rabbit.track_queue(&retry);
    rabbit.publish_raw(&queue, props("f1"), b"x").await;
    let mut source = source(&queue, 1);
    let d = next(&mut source).await;
    // The retry queue disappears: the copy is unroutable.
    rabbit
        .channel
        .queue_delete(retry.as_str().into(), Default::default())
        .await
        .unwrap();
    let err = d
        .acker
        .redeliver(Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no queue bound"), "{err}");
    // Not stuck unacked: back at once.
    let again = next(&mut source).await;
    assert_eq!((again.message.id(), again.message.deliveries()), ("f1", 2));
    again.acker.ack().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_on_a_given_connection_finishes_when_that_connection_closes() {
    let rabbit = Rabbit::new("given-connection").await;
    let queue = rabbit.classic_queue("work").await;
    rabbit.track_queue(&format!("{queue}.retry"));
    rabbit.publish_raw(&queue, props("g1"), b"x").await;
    let proxy = FaultProxy::start("127.0.0.1:5672").await;
    let conn = lapin::Connection::connect(
        &format!("amqp://guest:guest@{}/%2f", proxy.addr()),
        Default::default(),
    )
    .await
    .unwrap();
    let mut source = RabbitSource::builder_with_connection(conn, queue.as_str())
        .build()
        .unwrap();
    let d = next(&mut source).await;
    assert_eq!(d.message.id(), "g1");
    proxy.cut();
    let mut errors = 0;
    loop {
        match timeout(Duration::from_secs(10), source.next())
            .await
            .unwrap()
        {
            Some(Err(_)) => errors += 1,
            Some(Ok(_)) => panic!("a delivery on a closed connection"),
            None => break,
        }
    }
    assert!((1..=2).contains(&errors), "{errors} errors");
    assert!(d.acker.ack().await.is_err(), "its channel is gone");
    assert_eq!(rabbit.wait_count(&queue, 1).await, 1, "the broker kept it");
}
