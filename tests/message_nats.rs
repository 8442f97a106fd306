//! The NATS JetStream adapter against the machine's real nats-server (2.9, JetStream on):
//! publisher, source, acker and dead-letter sink, each test on a stream of its own.

#[allow(dead_code)]
#[path = "common/nats.rs"]
mod nats_support;
#[allow(dead_code)]
#[path = "common/proxy.rs"]
mod proxy;

use std::{
    collections::BTreeSet,
    time::{Duration, Instant, SystemTime},
};

use async_nats::jetstream::{Context, consumer::pull};
use nats_support::TestStream;
use tower::ServiceExt;
use tower_rampart::message::{
    Acker, DeadLetter, DeadLetterReason, DeadLetterSink, Delivery, Message, Source,
    nats::{
        JetStreamAcker, JetStreamConfig, JetStreamConfigBuilder, JetStreamPublisher,
        JetStreamSource, NatsDeadLetters,
    },
};

const WAIT: Duration = Duration::from_secs(5);

async fn bind(
    js: &Context,
    stream: &TestStream,
    settings: impl FnOnce(JetStreamConfigBuilder) -> JetStreamConfigBuilder,
) -> JetStreamSource {
    let config = settings(JetStreamConfig::builder(&stream.name, "worker"))
        .build()
        .unwrap();
    JetStreamSource::bind(js.clone(), config).await.unwrap()
}

async fn next(source: &mut JetStreamSource) -> Delivery<JetStreamAcker> {
    tokio::time::timeout(WAIT, source.next())
        .await
        .expect("a message within 5 s")
        .expect("a source never ends")
        .expect("no source error")
}

async fn consumer_info(js: &Context, stream: &TestStream) -> async_nats::jetstream::consumer::Info {
    let mut consumer: async_nats::jetstream::consumer::Consumer<pull::Config> = js
        .get_stream(&stream.name)
        .await
        .unwrap()
        .get_consumer("worker")
        .await
        .unwrap();
    consumer.info().await.unwrap().clone()
}

async fn publish(js: &Context, subject: String, msg: Message) {
    JetStreamPublisher::new(js.clone(), subject)
        .unwrap()
        .oneshot(msg)
        .await
        .unwrap();
}

#[tokio::test]
async fn round_trip_publish_pull_ack_leaves_nothing_pending() {
    let js = nats_support::connect().await;
    let s = TestStream::new(&js, "round_trip").await;
    let placed = format!("{}.placed", s.subject);
    publish(
        &js,
        placed.clone(),
        Message::new("m-1", "order.placed", "{\"total\":12}")
            .with_header("tenant", "acme")
            .with_correlation_id("checkout-7"),
    )
    .await;
    // By kind: the subject is the kind.
    let shipped = format!("{}.shipped", s.subject);
    JetStreamPublisher::by_kind(js.clone())
        .oneshot(Message::new("m-2", shipped.clone(), "x"))
        .await
        .unwrap();
    // Published by another client, with the id only: the subject is the kind.
    let mut h = async_nats::HeaderMap::new();
    h.insert("Nats-Msg-Id", "m-3");
    js.publish_with_headers(placed.clone(), h, "y".into())
        .await
        .unwrap()
        .await
        .unwrap();

    let mut source = bind(&js, &s, |b| b.concurrency(3)).await;
    let d1 = next(&mut source).await;
    assert_eq!(d1.poison, None);
    assert_eq!(d1.message.id(), "m-1");
    assert_eq!(d1.message.kind(), "order.placed");
    assert_eq!(d1.message.payload().as_ref(), b"{\"total\":12}");
    assert_eq!(d1.message.correlation_id(), Some("checkout-7"));
    assert_eq!(d1.message.deliveries(), 1);
    // Only the user's headers: id, kind and correlation travel in their own fields.
    assert_eq!(
        d1.message.headers().iter().collect::<Vec<_>>(),
        [(&"tenant".to_string(), &"acme".to_string())]
    );
    let d2 = next(&mut source).await;
    assert_eq!(
        (d2.message.id(), d2.message.kind()),
        ("m-2", shipped.as_str())
    );
    let d3 = next(&mut source).await;
    assert_eq!(
        (d3.message.id(), d3.message.kind()),
        ("m-3", placed.as_str())
    );
    assert_eq!(d3.message.correlation_id(), None);
    for d in [d1, d2, d3] {
        d.acker.ack().await.unwrap();
    }
    // Acks are confirmed by the server before `ack` returns: no waiting here.
    let info = consumer_info(&js, &s).await;
    assert_eq!(
        info.config.ack_policy,
        async_nats::jetstream::consumer::AckPolicy::Explicit
    );
    assert_eq!((info.num_ack_pending, info.num_pending), (0, 0));
    assert_eq!(info.ack_floor.stream_sequence, 3);
}

#[tokio::test]
async fn redeliver_naks_with_the_delay_and_the_server_counts_deliveries() {
    let js = nats_support::connect().await;
    let s = TestStream::new(&js, "nak_delay").await;
    publish(
        &js,
        format!("{}.a", s.subject),
        Message::new("m-1", "k", "p"),
    )
    .await;
    // AckWait far longer than the test: a redelivery here comes from the nak.
    let mut source = bind(&js, &s, |b| b.ack_wait(Duration::from_secs(60))).await;
    let delay = Duration::from_millis(300);
    let mut d = next(&mut source).await;
    assert_eq!(d.message.deliveries(), 1);
    for n in 2..=3 {
        // From before the nak is sent: the server starts the delay when it takes the nak.
        let naked = Instant::now();
        d.acker.redeliver(delay).await.unwrap();
        d = next(&mut source).await;
        assert!(naked.elapsed() >= delay, "came back before its delay");
        assert_eq!((d.message.id(), d.message.deliveries()), ("m-1", n));
    }
    d.acker.ack().await.unwrap();
    let info = consumer_info(&js, &s).await;
    assert_eq!((info.num_ack_pending, info.num_pending), (0, 0));
}

#[tokio::test]
async fn reject_terms_the_message_and_it_never_comes_back() {
    let js = nats_support::connect().await;
    let s = TestStream::new(&js, "term").await;
    publish(
        &js,
        format!("{}.a", s.subject),
        Message::new("bad", "k", "p"),
    )
    .await;
    let ack_wait = Duration::from_secs(1);
    let mut source = bind(&js, &s, |b| b.ack_wait(ack_wait)).await;
    next(&mut source).await.acker.reject().await.unwrap();
    // Past AckWait: an unsettled message would be redelivered now, ahead of new ones.
    tokio::time::sleep(ack_wait + Duration::from_millis(300)).await;
    publish(
        &js,
        format!("{}.a", s.subject),
        Message::new("good", "k", "p"),
    )
    .await;
    let d = next(&mut source).await;
    assert_eq!((d.message.id(), d.message.deliveries()), ("good", 1));
    d.acker.ack().await.unwrap();
    let more = tokio::time::timeout(Duration::from_millis(300), source.next()).await;
    assert!(more.is_err(), "the termed message came back");
    let info = consumer_info(&js, &s).await;
    assert_eq!((info.num_ack_pending, info.num_pending), (0, 0));
}

#[tokio::test]
async fn an_unsettled_message_comes_back_after_ack_wait() {
    let js = nats_support::connect().await;
    let s = TestStream::new(&js, "ack_wait").await;
    publish(
        &js,
        format!("{}.a", s.subject),
        Message::new("m-1", "k", "p"),
    )
    .await;
    let mut source = bind(&js, &s, |b| b.ack_wait(Duration::from_secs(1))).await;
    let d = next(&mut source).await;
    assert_eq!(d.message.deliveries(), 1);
    drop(d); // the consumer died mid-handler: no ack, no nak
    let again = next(&mut source).await;
    assert_eq!((again.message.id(), again.message.deliveries()), ("m-1", 2));
    again.acker.ack().await.unwrap();
}

#[tokio::test]
async fn messages_without_a_usable_id_are_unreadable() {
    let js = nats_support::connect().await;
    let s = TestStream::new(&js, "no_id").await;
    let subject = format!("{}.raw", s.subject);
    js.publish(subject.clone(), "no headers".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let mut h = async_nats::HeaderMap::new();
    h.insert("Nats-Msg-Id", "x".repeat(300).as_str());
    h.insert("tenant", "acme");
    js.publish_with_headers(subject.clone(), h, "long id".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let mut source = bind(&js, &s, |b| b.concurrency(2)).await;
    let d1 = next(&mut source).await;
    assert_eq!(d1.message.id(), format!("nats:{}:1", s.name));
    assert_eq!(d1.poison.as_deref(), Some("no Nats-Msg-Id header"));
    assert_eq!(d1.message.kind(), subject);
    let d2 = next(&mut source).await;
    assert_eq!(d2.message.id(), format!("nats:{}:2", s.name));
    assert!(d2.poison.as_deref().unwrap().contains("300 bytes"));
    assert_eq!(d2.message.headers()["tenant"], "acme");
    d1.acker.ack().await.unwrap();
    d2.acker.ack().await.unwrap();
}

#[tokio::test]
async fn never_more_than_the_concurrency_delivered_and_unsettled() {
    let js = nats_support::connect().await;
    let s = TestStream::new(&js, "bounded").await;
    for i in 0..6 {
        publish(
            &js,
            format!("{}.a", s.subject),
            Message::new(format!("m-{i}"), "k", "p"),
        )
        .await;
    }
    let mut source = bind(&js, &s, |b| b.concurrency(3)).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(next(&mut source).await);
    }
    // Time for any prefetch to land: none may.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let info = consumer_info(&js, &s).await;
    assert_eq!((info.num_ack_pending, info.num_pending), (3, 3));
    held.remove(0).acker.ack().await.unwrap();
    held.push(next(&mut source).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let info = consumer_info(&js, &s).await;
    assert_eq!((info.num_ack_pending, info.num_pending), (3, 2));
    let ids: Vec<_> = held.iter().map(|d| d.message.id().to_string()).collect();
    assert_eq!(ids, ["m-1", "m-2", "m-3"]);
}

#[tokio::test]
async fn dead_letters_land_in_the_dlq_stream_with_their_headers() {
    let js = nats_support::connect().await;
    let s = TestStream::new(&js, "dlq").await;
    // The helper's stream, deleted with this guard.
    let dlq = s.sibling("dlq");
    NatsDeadLetters::create_stream(&js, &dlq.name, &dlq.subject)
        .await
        .unwrap();
    let sink = NatsDeadLetters::new(js.clone(), dlq.subject.clone()).unwrap();
    let letter = DeadLetter {
        message: Message::new("m-1", "order.placed", "{")
            .with_header("tenant", "acme")
            .with_header("Nats-Expected-Stream", "ELSEWHERE")
            .with_correlation_id("flow-9"),
        reason: DeadLetterReason::Poison,
        attempts: 3,
        first_error: Some("timeout\nafter 2 s".into()),
        last_error: "poison message: EOF while parsing".into(),
        at: SystemTime::now(),
    };
    sink.send(&letter).await.unwrap();
    // A second send of the same letter (the original's ack was lost) is stored once.
    sink.send(&letter).await.unwrap();

    let mut stream = js.get_stream(&dlq.name).await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 1);
    let stored = stream.get_raw_message(1).await.unwrap();
    assert_eq!(stored.payload.as_ref(), b"{");
    let h = |name: &str| stored.headers.get(name).map(|v| v.as_str().to_string());
    assert_eq!(h(DeadLetter::REASON).as_deref(), Some("poison"));
    assert_eq!(h(DeadLetter::ATTEMPTS).as_deref(), Some("3"));
    assert_eq!(h(DeadLetter::ORIGINAL_ID).as_deref(), Some("m-1"));
    assert_eq!(
        h(DeadLetter::ORIGINAL_KIND).as_deref(),
        Some("order.placed")
    );
    assert_eq!(
        h(DeadLetter::FIRST_ERROR).as_deref(),
        Some("timeout after 2 s")
    );
    assert_eq!(
        h(DeadLetter::LAST_ERROR).as_deref(),
        Some("poison message: EOF while parsing")
    );
    assert_eq!(h("tenant").as_deref(), Some("acme"));
    assert_eq!(h("Nats-Msg-Id").as_deref(), Some("m-1"));
    assert_eq!(h("Rampart-Correlation-Id").as_deref(), Some("flow-9"));
    assert_eq!(h("Nats-Expected-Stream"), None);

    // No stream on the subject: the publish is not acknowledged, and that is an error.
    let nowhere =
        NatsDeadLetters::new(js.clone(), format!("{}.nowhere", s.name.to_lowercase())).unwrap();
    assert!(nowhere.send(&letter).await.is_err());
}

#[tokio::test]
async fn the_publisher_dedupes_by_message_id() {
    let js = nats_support::connect().await;
    let s = TestStream::new(&js, "dedupe").await;
    let publisher = JetStreamPublisher::new(js.clone(), format!("{}.a", s.subject)).unwrap();
    let first = publisher
        .clone()
        .oneshot(Message::new("m-1", "k", "one"))
        .await
        .unwrap();
    let second = publisher
        .clone()
        .oneshot(Message::new("m-1", "k", "one again"))
        .await
        .unwrap();
    assert_eq!((first.sequence, first.duplicate), (1, false));
    assert_eq!((second.sequence, second.duplicate), (1, true));
    let mut stream = js.get_stream(&s.name).await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 1);

    // What NATS cannot carry is refused before the broker, as not worth retrying.
    let bad = publisher
        .clone()
        .oneshot(Message::new("m-2", "k", "").with_header("a", "two\nlines"))
        .await
        .unwrap_err();
    assert!(bad.is_invalid_message(), "{bad}");
    let empty = publisher
        .clone()
        .oneshot(Message::new("", "k", ""))
        .await
        .unwrap_err();
    assert!(empty.is_invalid_message());
    let no_stream = JetStreamPublisher::new(js.clone(), "rampart.no.stream.here")
        .unwrap()
        .oneshot(Message::new("m-3", "k", ""))
        .await
        .unwrap_err();
    assert!(!no_stream.is_invalid_message());
}

#[tokio::test]
async fn binding_again_takes_the_new_settings() {
    let js = nats_support::connect().await;
    let s = TestStream::new(&js, "rebind").await;
    let first = bind(&js, &s, |b| {
        b.ack_wait(Duration::from_secs(10)).max_deliver(5)
    })
    .await;
    let info = consumer_info(&js, &s).await;
    assert_eq!(
        (info.config.ack_wait, info.config.max_deliver),
        (Duration::from_secs(10), 5)
    );
    drop(first);
    // A restarted consumer with new settings binds to the same durable consumer.
    let _second = bind(&js, &s, |b| b.ack_wait(Duration::from_secs(20))).await;
    let info = consumer_info(&js, &s).await;
    assert_eq!(
        (info.config.ack_wait, info.config.max_deliver),
        (Duration::from_secs(20), -1)
    );
}

#[tokio::test]
async fn binding_fails_without_the_stream() {
    let js = nats_support::connect().await;
    let config = JetStreamConfig::builder("RAMPART_NO_SUCH_STREAM", "worker")
        .build()
        .unwrap();
    assert!(JetStreamSource::bind(js, config).await.is_err());
}

#[tokio::test]
async fn a_cut_connection_loses_nothing() {
    const N: usize = 300;
    let js = nats_support::connect().await;
    let s = TestStream::new(&js, "cut").await;
    let publisher = JetStreamPublisher::new(js.clone(), format!("{}.a", s.subject)).unwrap();
    let expected: BTreeSet<String> = (0..N).map(|i| format!("m-{i:03}")).collect();
    for id in &expected {
        publisher
            .clone()
            .oneshot(Message::new(id.clone(), "k", "p"))
            .await
            .unwrap();
    }

    let proxy = proxy::FaultProxy::start(nats_support::addr()).await;
    let client = async_nats::ConnectOptions::new()
        .reconnect_delay_callback(|_| Duration::from_millis(50))
        .connect(format!("nats://{}", proxy.addr()))
        .await
        .unwrap();
    let via_proxy = async_nats::jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(2))
        .build(client);
    let config = JetStreamConfig::builder(&s.name, "worker")
        .concurrency(8)
        .ack_wait(Duration::from_secs(1))
        .pull_expires(Duration::from_secs(1))
        .build()
        .unwrap();
    let mut source = JetStreamSource::bind(via_proxy, config).await.unwrap();

    let mut seen = BTreeSet::new();
    let (mut source_errors, mut cut) = (0, false);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            Instant::now() < deadline,
            "{} of {N} seen by the deadline",
            seen.len()
        );
        if seen.len() == N {
            // Every id seen: done once the server has every ack (a lost ack redelivers).
            let info = consumer_info(&js, &s).await;
            if (info.num_ack_pending, info.num_pending) == (0, 0) {
                break;
            }
        }
        if !cut && seen.len() >= N / 3 {
            proxy.cut();
            cut = true;
        }
        match tokio::time::timeout(Duration::from_millis(500), source.next()).await {
            Err(_) => {}
            Ok(Some(Ok(d))) => {
                assert_eq!(d.poison, None);
                seen.insert(d.message.id().to_string());
                let _ = d.acker.ack().await; // a failed ack: redelivered, acked again
            }
            Ok(Some(Err(_))) => {
                source_errors += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(None) => panic!("a source never ends"),
        }
    }
    assert_eq!(seen, expected, "every message delivered, no other");
    assert!(source_errors >= 1, "the cut surfaced as a source error");
    assert!(
        proxy.accepted() >= 2,
        "the client reconnected through the proxy"
    );
}
