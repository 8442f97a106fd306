//! The run loop: pull when a slot is free, start the handler, settle in tasks, stop and drain.

use std::{
    future::{Future, poll_fn},
    pin::{Pin, pin},
    sync::Arc,
    time::Duration,
};

use tokio::task::{JoinError, JoinSet};
use tower_service::Service;

use super::{
    Consumer, RunSummary, Shared,
    handle::{Done, Work, handle, note},
    measures::Outcome as Settled,
};
use crate::{
    BoxError,
    classify::Classify,
    message::{DeadLetterSink, Delivery, Message, Source, SourceError},
};

type Pulled<Src> = (
    Src,
    Option<Result<Delivery<<Src as Source>::Acker>, SourceError>>,
);
type Pull<Src> = Pin<Box<dyn Future<Output = Pulled<Src>> + Send>>;

/// Asks `source` for its next delivery after `wait`, handing the source back with it (so that
/// the pull can stay pending while the runner does other things, and be dropped unpolled).
fn pull<Src: Source>(mut source: Src, wait: Duration) -> Pull<Src> {
    Box::pin(async move {
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let next = source.next().await;
        (source, next)
    })
}

/// The wait before asking a source again after its `n`th error in a row: 100 ms doubling, at
/// most 5 s.
fn source_backoff(n: u32) -> Duration {
    Duration::from_millis(100)
        .saturating_mul(1 << n.min(6))
        .min(Duration::from_secs(5))
}

enum End {
    Shutdown,
    Finished,
    ServiceFailed,
}

impl<Src, S, C, K> Consumer<Src, S, C, K>
where
    Src: Source,
    S: Service<Message> + Send,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Into<BoxError> + Send + 'static,
    C: Classify<S::Response, BoxError> + Send + Sync + 'static,
    K: DeadLetterSink,
{
    /// Consumes until `shutdown` completes (or the source finishes for good), then waits up to
    /// the shutdown grace for messages in flight to settle, leaves the rest unsettled for the
    /// broker to redeliver, and says what happened.
    ///
    /// A delivery is asked for only when fewer than `concurrency` are in flight. Each is
    /// settled in a task of its own: acked on success, redelivered after a delay on a
    /// retryable failure (or on "not now": [`RedeliverLater`](super::RedeliverLater), a
    /// breaker's refusal), dead-lettered on poison, a reused inbox key, a failure not to
    /// retry, or the last attempt. A panicking handler is a failed attempt. A source error is
    /// waited out (100 ms doubling to 5 s) and the source asked again.
    ///
    /// The source's `next` future may be dropped before it completes (at shutdown): a broker
    /// source hands out nothing it has not returned, so that nothing is lost then.
    pub async fn run_until<F: Future>(self, shutdown: F) -> RunSummary {
        let Consumer {
            source,
            mut service,
            shared,
        } = self;
        let mut summary = RunSummary::default();
        let mut tasks: JoinSet<Done> = JoinSet::new();
        let mut idle = Some(source);
        let mut pending: Option<Pull<Src>> = None;
        let (mut wait, mut errors_in_a_row) = (Duration::ZERO, 0u32);
        let mut shutdown = pin!(shutdown);
        let end = loop {
            if pending.is_none()
                && tasks.len() < shared.concurrency
                && let Some(src) = idle.take()
            {
                pending = Some(pull(src, wait));
            }
            tokio::select! {
                biased;
                _ = &mut shutdown => break End::Shutdown,
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                    summary.record(&shared, joined);
                }
                (src, next) = async { pending.as_mut().expect("pull pending").await },
                    if pending.is_some() =>
                {
                    pending = None;
                    idle = Some(src);
                    let delivery = match next {
                        None => {
                            summary.source_finished = true;
                            break End::Finished;
                        }
                        Some(Err(e)) => {
                            note(&shared, "message source failed", &e);
                            summary.source_errors += 1;
                            errors_in_a_row = errors_in_a_row.saturating_add(1);
                            wait = source_backoff(errors_in_a_row - 1);
                            continue;
                        }
                        Some(Ok(d)) => d,
                    };
                    (wait, errors_in_a_row) = (Duration::ZERO, 0);
                    summary.received += 1;
                    let Delivery { message, acker, poison } = delivery;
                    let work = match poison {
                        Some(why) => Work::Unreadable(why),
                        None => {
                            let ready = tokio::select! {
                                biased;
                                // Unsettled: the broker redelivers it.
                                _ = &mut shutdown => break End::Shutdown,
                                r = poll_fn(|cx| service.poll_ready(cx)) => r,
                            };
                            if let Err(e) = ready {
                                let e: BoxError = e.into();
                                note(&shared, "the service failed", &*e);
                                summary.service_error = Some(e.to_string());
                                break End::ServiceFailed;
                            }
                            Work::Call(service.call(message.clone()))
                        }
                    };
                    spawn(&mut tasks, &shared, message, acker, work);
                }
            }
        };
        if let End::Finished = end {
            // Everything in flight settles, unless told to stop meanwhile.
            loop {
                tokio::select! {
                    biased;
                    _ = &mut shutdown => break,
                    joined = tasks.join_next() => match joined {
                        Some(j) => summary.record(&shared, j),
                        None => break,
                    },
                }
            }
        }
        let grace = tokio::time::timeout(shared.shutdown_grace, async {
            while let Some(j) = tasks.join_next().await {
                summary.record(&shared, j);
            }
        });
        let _ = grace.await;
        tasks.abort_all();
        while let Some(j) = tasks.join_next().await {
            summary.record(&shared, j);
        }
        // Only now may the source go (a broker requeues what its consumer left unsettled).
        drop(pending);
        drop(idle);
        summary
    }
}

fn spawn<A, F, R, E, C, K>(
    tasks: &mut JoinSet<Done>,
    shared: &Arc<Shared<C, K>>,
    message: Message,
    acker: A,
    work: Work<F>,
) where
    A: crate::message::Acker,
    F: Future<Output = Result<R, E>> + Send + 'static,
    R: Send + 'static,
    E: Into<BoxError> + Send + 'static,
    C: Classify<R, BoxError> + Send + Sync + 'static,
    K: DeadLetterSink,
{
    #[cfg(feature = "tracing")]
    let span = tracing::info_span!(
        "rampart.message",
        "rampart.consumer" = &*shared.name,
        "messaging.message.id" = message.id(),
        "messaging.message.kind" = message.kind(),
        "messaging.delivery_count" = message.deliveries(),
    );
    let task = handle(shared.clone(), message, acker, work);
    #[cfg(feature = "tracing")]
    if !span.is_disabled() {
        tasks.spawn(tracing::Instrument::instrument(task, span));
        return;
    }
    tasks.spawn(task);
}

impl RunSummary {
    fn record<C, K>(&mut self, shared: &Shared<C, K>, joined: Result<Done, JoinError>) {
        match joined {
            Ok(done) => {
                match done.settled {
                    Settled::Acked => self.acked += 1,
                    Settled::Redelivered => self.redelivered += 1,
                    Settled::DeadLettered => self.dead_lettered += 1,
                    Settled::Abandoned => self.abandoned += 1,
                }
                self.panicked += u64::from(done.panicked);
                self.sink_failures += u64::from(done.sink_failed);
                self.settle_failures += u64::from(done.settle_failed);
            }
            Err(e) => {
                // Cut off at shutdown, or a panic outside the handler (a sink's): unsettled.
                self.abandoned += 1;
                if e.is_panic() {
                    self.panicked += 1;
                }
                shared.metrics.settled(Settled::Abandoned, None);
            }
        }
    }
}
