//! The running relay: batches while rows are due, then waits for a notification, the poll,
//! or shutdown; a task of its own keeps the `LISTEN` connection.

use std::{sync::Arc, time::Duration};

use futures_util::FutureExt;
use sqlx::postgres::PgListener;
use tokio::{sync::Notify, task::JoinHandle, time::Instant};
use tower_service::Service;

use super::{
    Relay, RelaySummary,
    decide::{Next, Outcome, Schedule},
    measures::Metrics,
};
use crate::{BoxError, message::Message, message::outbox::Outbox};

pub(super) async fn run_until<S, F>(mut relay: Relay<S>, shutdown: F) -> RelaySummary
where
    S: Service<Message> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: Send,
    S::Error: Into<BoxError>,
    F: std::future::Future<Output = ()> + Send,
{
    let settings = relay.settings.clone();
    let wake = Arc::new(Notify::new());
    // Aborted when this future ends or is dropped.
    let _listener = settings
        .listen
        .then(|| Listener::spawn(relay.outbox.clone(), wake.clone(), settings.error_delay));
    let mut schedule = Schedule::new(
        Instant::now(),
        settings.poll_interval,
        settings.error_delay,
        Metrics::ENABLED.then_some(settings.metrics_interval),
    );
    let mut summary = RelaySummary::default();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        if (&mut shutdown).now_or_never().is_some() {
            return summary;
        }
        match schedule.next(Instant::now()) {
            Next::Metrics => {
                tokio::select! {
                    _ = &mut shutdown => return summary,
                    _ = refresh(&relay.outbox, &relay.metrics, &relay.settings.name) => {}
                }
                schedule.metrics_done(Instant::now());
            }
            // Not raced with shutdown: a batch under way is finished (and committed), so a
            // planned stop publishes nothing twice. Drop this future for a hard stop (the
            // batch rolls back).
            Next::Batch => {
                let outcome = match relay.run_once().await {
                    Ok(r) => {
                        summary.add(&r);
                        Outcome::of(r.claimed, r.published, settings.batch_size)
                    }
                    Err(_e) => {
                        summary.database_errors += 1;
                        #[cfg(feature = "tracing")]
                        tracing::warn!(
                            outbox = %settings.name,
                            error = %_e,
                            retry_in_ms = settings.error_delay.as_millis() as u64,
                            "outbox relay batch failed on PostgreSQL",
                        );
                        Outcome::DatabaseError
                    }
                };
                schedule.batch_done(outcome, Instant::now());
            }
            Next::Wait(until) => {
                tokio::select! {
                    _ = &mut shutdown => return summary,
                    _ = wake.notified() => schedule.woken(Instant::now()),
                    _ = tokio::time::sleep_until(until) => {}
                }
            }
        }
    }
}

/// Reads the backlog into the gauges (a failure only logs: the next refresh tries again).
/// Takes the parts, not the relay: a `&Relay<S>` held across an await would need `S: Sync`.
async fn refresh(outbox: &Outbox, metrics: &Metrics, _name: &str) {
    match outbox.backlog().await {
        Ok(b) => metrics.backlog(&b),
        Err(_e) => {
            #[cfg(feature = "tracing")]
            tracing::debug!(
                outbox = %_name,
                error = %_e,
                "outbox backlog not read",
            );
        }
    }
}

/// The task holding the `LISTEN` connection; aborted on drop.
struct Listener(JoinHandle<()>);

impl Drop for Listener {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Listener {
    fn spawn(outbox: Outbox, wake: Arc<Notify>, error_delay: Duration) -> Listener {
        Listener(tokio::spawn(listen(outbox, wake, error_delay)))
    }
}

/// Wakes the relay on every notification, and after every (re)connection: notifications sent
/// while the connection was down are lost, so a batch looks for what they announced.
async fn listen(outbox: Outbox, wake: Arc<Notify>, error_delay: Duration) {
    loop {
        let _e = match connect(&outbox).await {
            Ok(mut l) => {
                wake.notify_one();
                loop {
                    match l.try_recv().await {
                        Ok(Some(_)) => wake.notify_one(),
                        // Lost, and already reconnected (LISTEN included).
                        Ok(None) => wake.notify_one(),
                        Err(e) => break e,
                    }
                }
            }
            Err(e) => e,
        };
        #[cfg(feature = "tracing")]
        tracing::warn!(
            outbox = %outbox.table,
            error = %_e,
            retry_in_ms = error_delay.as_millis() as u64,
            "outbox relay lost its LISTEN connection; polling meanwhile",
        );
        tokio::time::sleep(error_delay).await;
    }
}

async fn connect(outbox: &Outbox) -> Result<PgListener, sqlx::Error> {
    let mut l = PgListener::connect_with(&outbox.pool).await?;
    l.listen(outbox.channel()).await?;
    Ok(l)
}
