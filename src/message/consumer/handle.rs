//! One delivery, from the handler's answer to its settlement with the broker: runs in a task of
//! its own, so a slow settlement never holds the runner, and never under a lock of ours.

use std::{sync::Arc, time::SystemTime};

use tokio::time::Instant;

use super::{
    KeyReused, RedeliverLater, Shared,
    builder::Route,
    decide::{Handled, Settle, decide},
    error::find_in_chain,
    measures::Outcome as Settled,
};
use crate::{
    BoxError,
    catch::CatchUnwind,
    circuit_breaker::CircuitOpen,
    classify::{Classify, Outcome},
    message::{Acker, DeadLetter, DeadLetterSink, Message, Poison},
};

/// What the runner hands a task: the handler's future, or why the message could not be read.
pub(crate) enum Work<F> {
    Call(F),
    Unreadable(String),
}

/// How one delivery ended, for the run's summary.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Done {
    pub(crate) settled: Settled,
    pub(crate) panicked: bool,
    pub(crate) sink_failed: bool,
    pub(crate) settle_failed: bool,
}

/// Handles one delivery and settles it.
pub(crate) async fn handle<A, F, R, E, C, K>(
    shared: Arc<Shared<C, K>>,
    message: Message,
    acker: A,
    work: Work<F>,
) -> Done
where
    A: Acker,
    F: Future<Output = Result<R, E>>,
    E: Into<BoxError>,
    C: Classify<R, BoxError>,
    K: DeadLetterSink,
{
    let started = Instant::now();
    let mut panicked = false;
    let (handled, error) = match work {
        Work::Unreadable(why) => (Handled::Poison, Some(why)),
        Work::Call(fut) => match CatchUnwind::new(fut).await {
            Err(panic) => {
                panicked = true;
                let why = format!("handler panicked: {panic}");
                (Handled::Classified(Outcome::FAILURE), Some(why))
            }
            // An answer the classifier ignores is still an answer: acked.
            Ok(Ok(res)) => match shared.classifier.classify(Ok(&res)) {
                Outcome::Success | Outcome::Ignore => (Handled::Classified(Outcome::Success), None),
                failure => (
                    Handled::Classified(failure),
                    Some("the handler's response was classified as a failure".into()),
                ),
            },
            Ok(Err(e)) => {
                let e: BoxError = e.into();
                (
                    judge::<C, K, R>(&shared, &e, message.deliveries()),
                    Some(e.to_string()),
                )
            }
        },
    };
    let settle = decide(handled, message.deliveries(), shared.max_attempts, |n| {
        shared.backoff_delay(n)
    });
    let mut done = Done {
        settled: Settled::Acked,
        panicked,
        sink_failed: false,
        settle_failed: false,
    };
    let id = message.id().to_owned();
    let settled = match settle {
        Settle::Ack => {
            shared.first_errors.take(&id);
            acker.ack().await
        }
        Settle::Redeliver(delay) => {
            if let Some(e) = &error {
                shared.first_errors.remember(&id, e);
            }
            done.settled = Settled::Redelivered;
            acker.redeliver(delay).await
        }
        Settle::DeadLetter(reason) => {
            let last_error = error.unwrap_or_default();
            let first_error = shared
                .first_errors
                .take(&id)
                .unwrap_or_else(|| last_error.clone());
            let letter = DeadLetter {
                attempts: message.deliveries(),
                message,
                reason,
                first_error: Some(first_error),
                last_error,
                at: SystemTime::now(),
            };
            match &shared.route {
                Route::Broker => {
                    done.settled = Settled::DeadLettered;
                    acker.reject().await
                }
                Route::Sink(sink) => match sink.send(&letter).await {
                    Ok(()) => {
                        done.settled = Settled::DeadLettered;
                        acker.ack().await
                    }
                    Err(e) => {
                        // Never acked without its letter: try again later.
                        note(&shared, "dead-letter sink failed", &e);
                        done.sink_failed = true;
                        done.settled = Settled::Redelivered;
                        if let Some(first) = &letter.first_error {
                            shared.first_errors.remember(&id, first);
                        }
                        acker.redeliver(shared.sink_failure_delay).await
                    }
                },
            }
        }
    };
    if let Err(e) = settled {
        // The broker redelivers what it did not hear settled: the inbox makes that safe.
        note(&shared, "settling a delivery failed", &e);
        done.settle_failed = true;
    }
    shared
        .metrics
        .settled(done.settled, Some(started.elapsed()));
    done
}

/// What a handler's error means: poison, a reused key, "not now", or the classifier's call.
fn judge<C, K, R>(shared: &Shared<C, K>, e: &BoxError, deliveries: u32) -> Handled
where
    C: Classify<R, BoxError>,
{
    let e_ref: &(dyn std::error::Error + 'static) = &**e;
    if Poison::is_in(e_ref) {
        return Handled::Poison;
    }
    if find_in_chain::<KeyReused>(e_ref).is_some() {
        return Handled::KeyReused;
    }
    if let Some(later) = find_in_chain::<RedeliverLater>(e_ref) {
        return Handled::Later(later.after);
    }
    let refused = find_in_chain::<CircuitOpen>(e_ref);
    if refused.is_some() || shared.classifier.is_refused(Err(e)) {
        let wait = refused.and_then(CircuitOpen::retry_after);
        return Handled::Later(
            wait.unwrap_or_else(|| shared.backoff_delay(deliveries.saturating_sub(1))),
        );
    }
    Handled::Classified(shared.classifier.classify(Err(e)))
}

/// Says that something went wrong that the run carries on after (with `tracing`).
#[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
pub(crate) fn note<C, K>(shared: &Shared<C, K>, what: &str, e: &dyn std::error::Error) {
    #[cfg(feature = "tracing")]
    tracing::warn!(consumer = %shared.name, error = %e, "{what}");
}
