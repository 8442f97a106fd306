//! The crate's call layers on message handlers: a timeout cuts a slow handler and the message is
//! redelivered; a retry layer retries inside one delivery with its own policy (the broker sees
//! one delivery); the consumer's attempt count stays the broker's. On the in-process broker and
//! tokio's paused clock. (Breaker refusals: tests/message_consumer.rs.)

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering::SeqCst},
    },
    time::Duration,
};

use tower::ServiceBuilder;
use tower_rampart::{
    BoxError,
    backoff::{Backoff, Jitter},
    message::{Message, consumer::Consumer, memory},
    retry::RetryLayer,
    timeout::{Elapsed, TimeoutLayer},
};

const MS: Duration = Duration::from_millis(1);

#[tokio::test(start_paused = true)]
async fn a_timeout_cuts_a_slow_handler_and_the_message_comes_back() {
    let (p, source) = memory::channel(8);
    p.publish(Message::new("slow", "k", "x")).await;
    p.close();
    let applied: Arc<Mutex<Vec<u32>>> = Arc::default();
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let (a, e) = (applied.clone(), errors.clone());
    let handler = ServiceBuilder::new()
        .map_err(move |err: BoxError| {
            e.lock().unwrap().push(format!(
                "{}{}",
                err,
                if err.is::<Elapsed>() {
                    " (elapsed)"
                } else {
                    ""
                }
            ));
            err
        })
        .layer(TimeoutLayer::new(100 * MS).unwrap())
        .service_fn(move |m: Message| {
            let a = a.clone();
            async move {
                if m.deliveries() == 1 {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                // The effect: reached only by a handler the timeout let finish.
                a.lock().unwrap().push(m.deliveries());
                Ok::<_, BoxError>(())
            }
        });
    let consumer = Consumer::builder()
        .max_attempts(3)
        .redelivery_backoff(Backoff::constant(10 * MS).jitter(Jitter::None))
        .dead_letters_to_broker()
        .build(source, handler)
        .unwrap();
    let summary = consumer.run_until(std::future::pending::<()>()).await;
    assert_eq!((summary.acked, summary.redelivered), (1, 1));
    assert_eq!(
        *applied.lock().unwrap(),
        vec![2],
        "the cut-off run applied nothing"
    );
    let errors = errors.lock().unwrap();
    assert_eq!(errors.len(), 1);
    assert!(errors[0].ends_with("(elapsed)"), "{errors:?}");
}

#[tokio::test(start_paused = true)]
async fn a_retry_layer_retries_inside_one_delivery() {
    let (p, source) = memory::channel(8);
    p.publish(Message::new("flaky", "k", "x")).await;
    p.close();
    let calls = Arc::new(AtomicU32::new(0));
    let deliveries: Arc<Mutex<Vec<u32>>> = Arc::default();
    let (c, d) = (calls.clone(), deliveries.clone());
    let retry = RetryLayer::builder()
        .name("ledger")
        .max_attempts(3)
        .backoff(Backoff::constant(5 * MS).jitter(Jitter::None))
        .build()
        .unwrap();
    let handler = ServiceBuilder::new()
        .layer(retry)
        .service_fn(move |m: Message| {
            let (c, d) = (c.clone(), d.clone());
            async move {
                d.lock().unwrap().push(m.deliveries());
                if c.fetch_add(1, SeqCst) < 2 {
                    return Err::<(), BoxError>("ledger timed out".into());
                }
                Ok(())
            }
        });
    let consumer = Consumer::builder()
        .max_attempts(1)
        .dead_letters_to_broker()
        .build(source, handler)
        .unwrap();
    let summary = consumer.run_until(std::future::pending::<()>()).await;
    assert_eq!(
        (summary.acked, summary.redelivered, summary.dead_lettered),
        (1, 0, 0)
    );
    assert_eq!(calls.load(SeqCst), 3);
    // Three calls, one delivery: the broker saw one attempt.
    assert_eq!(*deliveries.lock().unwrap(), vec![1, 1, 1]);
    assert!(p.rejected().is_empty());
}

#[tokio::test(start_paused = true)]
async fn retries_exhausted_in_process_count_as_one_attempt() {
    let (p, source) = memory::channel(8);
    p.publish(Message::new("down", "k", "x")).await;
    p.close();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let retry = RetryLayer::builder()
        .max_attempts(2)
        .backoff(Backoff::constant(5 * MS).jitter(Jitter::None))
        .build()
        .unwrap();
    let handler = ServiceBuilder::new()
        .layer(retry)
        .service_fn(move |_m: Message| {
            c.fetch_add(1, SeqCst);
            async { Err::<(), BoxError>("ledger unavailable".into()) }
        });
    let consumer = Consumer::builder()
        .max_attempts(2)
        .redelivery_backoff(Backoff::constant(10 * MS).jitter(Jitter::None))
        .dead_letters_to_broker()
        .build(source, handler)
        .unwrap();
    let summary = consumer.run_until(std::future::pending::<()>()).await;
    // Two deliveries of two calls each, then the broker's dead-lettering (reject).
    assert_eq!((summary.redelivered, summary.dead_lettered), (1, 1));
    assert_eq!(calls.load(SeqCst), 4);
    assert_eq!(p.rejected().len(), 1);
}
