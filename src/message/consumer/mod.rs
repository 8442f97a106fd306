//! The consumer runner: pulls messages from a [`Source`](crate::message::Source) with bounded
//! concurrency, drives any `Service<Message>` (with every layer of this crate around it), and
//! settles each delivery: ack, redeliver later, or dead-letter.
//!
//! | the handler's answer | settled as |
//! |---|---|
//! | `Ok` classified success or ignore | ack |
//! | `Ok` classified a failure, `Err` classified a failure, a panic | redeliver after the backoff (or the failure's retry-after), dead letter `max-attempts` on the last attempt |
//! | `Err` classified ignore | dead letter `not-retryable` |
//! | `Err` with [`Poison`](crate::message::Poison) in its chain, or an unreadable delivery | dead letter `poison` |
//! | `Err` with [`KeyReused`] (the inbox) | dead letter `key-reused` |
//! | `Err` with [`RedeliverLater`] or a breaker's [`CircuitOpen`](crate::circuit_breaker::CircuitOpen) | redeliver after its delay, never dead-lettered for it (the broker still counts the delivery) |
//!
//! A dead letter goes to the sink chosen with [`Builder::dead_letters`] (the original is acked
//! only once the sink took it, redelivered later otherwise) or to the broker's own
//! dead-lettering ([`Builder::dead_letters_to_broker`]). Attempts are the broker's delivery
//! count ([`Message::deliveries`](crate::message::Message::deliveries)), so they add up across
//! redeliveries and consumer restarts.
//!
//! ```
//! use std::time::Duration;
//! use tower_rampart::message::{consumer::Consumer, memory, sink_fn, DeadLetter, Message, SinkError};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (publisher, source) = memory::channel(64);
//! publisher.publish(Message::new("m1", "order.placed", "12")).await;
//! publisher.close();
//!
//! let handler = tower::service_fn(|msg: Message| async move {
//!     let _total: u32 = std::str::from_utf8(msg.payload())?.parse()?;
//!     Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
//! });
//! let consumer = Consumer::builder()
//!     .concurrency(8)
//!     .max_attempts(3)
//!     .dead_letters(sink_fn(|letter: &DeadLetter| {
//!         eprintln!("dead letter: {letter:?}");
//!         std::future::ready(Ok::<(), SinkError>(()))
//!     }))
//!     .build(source, handler)?;
//! // Runs until the queue is closed and settled (or the shutdown future completes).
//! let summary = consumer.run_until(std::future::pending::<()>()).await;
//! assert_eq!(summary.acked, 1);
//! # Ok(())
//! # }
//! ```

mod builder;
mod decide;
mod error;
mod first_errors;
mod handle;
mod measures;
mod run;

use std::{sync::Arc, time::Duration};

pub use builder::{Builder, MAX_ATTEMPTS, MAX_CONCURRENCY, NoSink};
pub use error::{KeyReused, RedeliverLater};
pub use measures::metric_names;

use crate::backoff::Backoff;

/// Drives a `Service<Message>` with the messages of a [`Source`](crate::message::Source):
/// built with [`Consumer::builder`], run with [`Consumer::run_until`].
///
/// ```
/// use tower_rampart::message::{consumer::Consumer, memory, Message};
///
/// let (_publisher, source) = memory::channel(8);
/// let consumer = Consumer::builder()
///     .dead_letters_to_broker()
///     .build(source, tower::service_fn(|_: Message| async { Ok::<_, std::io::Error>(()) }))
///     .unwrap();
/// # let _ = consumer;
/// ```
pub struct Consumer<Src, S, C = crate::classify::AnyError, K = NoSink> {
    source: Src,
    service: S,
    shared: Arc<Shared<C, K>>,
}

impl<Src, S, C, K> std::fmt::Debug for Consumer<Src, S, C, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("name", &self.shared.name)
            .field("concurrency", &self.shared.concurrency)
            .field("max_attempts", &self.shared.max_attempts)
            .finish_non_exhaustive()
    }
}

impl Consumer<(), ()> {
    /// A builder with the defaults: concurrency 16, 5 attempts, 30 s shutdown grace,
    /// redeliveries backing off exponentially from 1 s to 5 min, every `Err` a failure, and
    /// no dead-letter destination yet (one must be chosen).
    pub fn builder() -> Builder {
        Builder::default()
    }
}

/// Everything the per-delivery tasks share.
pub(crate) struct Shared<C, K> {
    #[cfg_attr(not(feature = "tracing"), allow(dead_code))]
    pub(crate) name: Arc<str>,
    pub(crate) concurrency: usize,
    pub(crate) max_attempts: u32,
    pub(crate) shutdown_grace: Duration,
    pub(crate) backoff: Backoff,
    pub(crate) sink_failure_delay: Duration,
    pub(crate) classifier: C,
    pub(crate) route: builder::Route<K>,
    pub(crate) first_errors: first_errors::FirstErrors,
    pub(crate) metrics: measures::Metrics,
}

impl<C, K> Shared<C, K> {
    /// The backoff's delay before the `n`th redelivery (0 for the first), with its jitter.
    pub(crate) fn backoff_delay(&self, n: u32) -> Duration {
        self.backoff
            .delays()
            .nth(n as usize)
            .unwrap_or(self.backoff.max())
    }
}

/// What one run of a consumer did ([`Consumer::run_until`]).
///
/// ```
/// use tower_rampart::message::consumer::RunSummary;
///
/// let s = RunSummary::default();
/// assert_eq!(s.acked + s.redelivered + s.dead_lettered + s.abandoned, 0);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunSummary {
    /// Deliveries received from the source.
    pub received: u64,
    /// Deliveries acked (handled, or a duplicate the inbox skipped).
    pub acked: u64,
    /// Deliveries handed back for redelivery (failures, "not now", refused dead letters).
    pub redelivered: u64,
    /// Deliveries dead-lettered (to the sink, or rejected to the broker).
    pub dead_lettered: u64,
    /// Deliveries left unsettled (still running when the grace ended): the broker
    /// redelivers them.
    pub abandoned: u64,
    /// Handler panics (each a failed attempt).
    pub panicked: u64,
    /// Dead letters the sink refused (their originals were redelivered, not acked).
    pub sink_failures: u64,
    /// Acks, redeliveries or rejects the broker did not take (it redelivers those).
    pub settle_failures: u64,
    /// Errors from the source (each waited out, then the source asked again).
    pub source_errors: u64,
    /// Whether the source finished for good (answered `None`).
    pub source_finished: bool,
    /// The service's readiness error that stopped the run, if one did.
    pub service_error: Option<String>,
}
