//! What the running relay does next: a pure schedule over time given as a parameter, knowing
//! nothing of tower or PostgreSQL (unit-tested with fake instants).

use std::time::Duration;

use tokio::time::Instant;

/// How a batch ended, for the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Full and published something: more rows may be due right now.
    More,
    /// Fewer rows than a batch, or nothing published (failed rows wait for their backoff):
    /// wait for a notification or the poll.
    Idle,
    /// PostgreSQL failed: wait `error_delay`, notifications included.
    DatabaseError,
}

impl Outcome {
    /// Classifies a batch of `claimed` rows of which `published` were published.
    pub(crate) fn of(claimed: usize, published: usize, batch_size: u32) -> Outcome {
        let full = u32::try_from(claimed).map_or(true, |c| c >= batch_size);
        if full && published > 0 {
            Outcome::More
        } else {
            Outcome::Idle
        }
    }
}

/// The next step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Refresh the backlog gauges.
    Metrics,
    /// Run a batch.
    Batch,
    /// Wait for a notification, shutdown, or this instant.
    Wait(Instant),
}

/// When the next batch and the next gauge refresh are due.
#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    poll_interval: Duration,
    error_delay: Duration,
    /// `None`: no gauges to refresh (metrics off).
    metrics_interval: Option<Duration>,
    batch_at: Instant,
    /// Notifications do not hurry a batch before this (after a database error).
    not_before: Instant,
    metrics_at: Instant,
}

impl Schedule {
    /// A batch and a refresh due at once.
    pub(crate) fn new(
        now: Instant,
        poll_interval: Duration,
        error_delay: Duration,
        metrics_interval: Option<Duration>,
    ) -> Self {
        Schedule {
            poll_interval,
            error_delay,
            metrics_interval,
            batch_at: now,
            not_before: now,
            metrics_at: now,
        }
    }

    /// What to do at `now`: gauges first (cheap, and a relay kept busy by full batches still
    /// refreshes them), then a due batch, else wait for the earlier of both.
    pub(crate) fn next(&self, now: Instant) -> Next {
        if self.metrics_interval.is_some() && self.metrics_at <= now {
            return Next::Metrics;
        }
        if self.batch_at <= now {
            return Next::Batch;
        }
        let until = match self.metrics_interval {
            Some(_) => self.batch_at.min(self.metrics_at),
            None => self.batch_at,
        };
        Next::Wait(until)
    }

    /// A batch ended at `now`.
    pub(crate) fn batch_done(&mut self, outcome: Outcome, now: Instant) {
        let (at, not_before) = match outcome {
            Outcome::More => (now, now),
            Outcome::Idle => (later(now, self.poll_interval), now),
            Outcome::DatabaseError => {
                let at = later(now, self.error_delay);
                (at, at)
            }
        };
        self.batch_at = at;
        self.not_before = not_before;
    }

    /// A notification arrived (or the listener reconnected, notifications may be lost): a
    /// batch as soon as a database error's delay allows.
    pub(crate) fn woken(&mut self, now: Instant) {
        self.batch_at = self.batch_at.min(now.max(self.not_before));
    }

    /// The gauges were refreshed at `now`.
    pub(crate) fn metrics_done(&mut self, now: Instant) {
        if let Some(every) = self.metrics_interval {
            self.metrics_at = later(now, every);
        }
    }
}

/// `now + d`, saturating far in the future.
fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn schedule(t0: Instant, metrics: Option<Duration>) -> Schedule {
        Schedule::new(t0, 10 * S, 3 * S, metrics)
    }

    #[test]
    fn outcomes_are_classified() {
        assert_eq!(Outcome::of(100, 1, 100), Outcome::More);
        assert_eq!(Outcome::of(100, 0, 100), Outcome::Idle);
        assert_eq!(Outcome::of(99, 99, 100), Outcome::Idle);
        assert_eq!(Outcome::of(0, 0, 100), Outcome::Idle);
    }

    #[test]
    fn full_batches_run_back_to_back_else_it_waits_for_the_poll() {
        let t0 = Instant::now();
        let mut s = schedule(t0, None);
        assert_eq!(s.next(t0), Next::Batch);
        s.batch_done(Outcome::More, t0 + S);
        assert_eq!(s.next(t0 + S), Next::Batch);
        s.batch_done(Outcome::Idle, t0 + 2 * S);
        assert_eq!(s.next(t0 + 2 * S), Next::Wait(t0 + 12 * S));
        assert_eq!(s.next(t0 + 12 * S), Next::Batch);
    }

    #[test]
    fn a_notification_brings_the_batch_forward_but_not_before_an_error_delay() {
        let t0 = Instant::now();
        let mut s = schedule(t0, None);
        s.batch_done(Outcome::Idle, t0);
        s.woken(t0 + S);
        assert_eq!(s.next(t0 + S), Next::Batch);
        s.batch_done(Outcome::DatabaseError, t0 + 2 * S);
        assert_eq!(s.next(t0 + 2 * S), Next::Wait(t0 + 5 * S));
        s.woken(t0 + 3 * S);
        assert_eq!(s.next(t0 + 3 * S), Next::Wait(t0 + 5 * S));
        assert_eq!(s.next(t0 + 5 * S), Next::Batch);
        // A notification never delays a batch already due.
        s.woken(t0 + 6 * S);
        assert_eq!(s.next(t0 + 6 * S), Next::Batch);
    }

    #[test]
    fn gauges_are_refreshed_even_between_full_batches() {
        let t0 = Instant::now();
        let mut s = schedule(t0, Some(4 * S));
        assert_eq!(s.next(t0), Next::Metrics);
        s.metrics_done(t0);
        assert_eq!(s.next(t0), Next::Batch);
        s.batch_done(Outcome::More, t0 + 5 * S);
        assert_eq!(s.next(t0 + 5 * S), Next::Metrics);
        s.metrics_done(t0 + 5 * S);
        assert_eq!(s.next(t0 + 5 * S), Next::Batch);
        s.batch_done(Outcome::Idle, t0 + 6 * S);
        // The refresh (t0 + 9 s) comes before the poll (t0 + 16 s).
        assert_eq!(s.next(t0 + 6 * S), Next::Wait(t0 + 9 * S));
    }

    #[test]
    fn huge_intervals_saturate() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0, Duration::MAX, Duration::MAX, None);
        s.batch_done(Outcome::Idle, t0);
        assert!(matches!(s.next(t0), Next::Wait(at) if at > t0));
    }
}
