//! What to do with one handled delivery: a pure function of what happened, the broker's
//! delivery count and the settings (no tower, no time, no I/O), tested as such.

use std::time::Duration;

use crate::{classify::Outcome, message::DeadLetterReason};

/// What happened to one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Handled {
    /// The source could not read it, or the handler returned [`Poison`](crate::message::Poison).
    Poison,
    /// The inbox found its key used by another message.
    KeyReused,
    /// "Not now" ([`RedeliverLater`](super::RedeliverLater), a breaker's refusal).
    Later(Duration),
    /// The handler answered, classified as this (a panic is a failure).
    Classified(Outcome),
}

/// How to settle it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settle {
    Ack,
    Redeliver(Duration),
    DeadLetter(DeadLetterReason),
}

/// The decision. `deliveries` is the broker's count (1 = first); `delay_for(n)` is the backoff's
/// delay before the `n`th redelivery (0 for the first), asked only when needed.
pub(crate) fn decide(
    handled: Handled,
    deliveries: u32,
    max_attempts: u32,
    delay_for: impl FnOnce(u32) -> Duration,
) -> Settle {
    match handled {
        Handled::Poison => Settle::DeadLetter(DeadLetterReason::Poison),
        Handled::KeyReused => Settle::DeadLetter(DeadLetterReason::KeyReused),
        Handled::Later(after) => Settle::Redeliver(after),
        Handled::Classified(Outcome::Success) => Settle::Ack,
        Handled::Classified(Outcome::Ignore) => Settle::DeadLetter(DeadLetterReason::NotRetryable),
        Handled::Classified(Outcome::Failure { retry_after }) => {
            if deliveries >= max_attempts {
                Settle::DeadLetter(DeadLetterReason::MaxAttempts)
            } else {
                let delay = retry_after.unwrap_or_else(|| delay_for(deliveries.saturating_sub(1)));
                Settle::Redeliver(delay)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn backoff(n: u32) -> Duration {
        S * (n + 1)
    }

    #[test]
    fn success_acks() {
        assert_eq!(
            decide(Handled::Classified(Outcome::Success), 1, 5, backoff),
            Settle::Ack
        );
        // Even on its last allowed attempt.
        assert_eq!(
            decide(Handled::Classified(Outcome::Success), 5, 5, backoff),
            Settle::Ack
        );
    }

    #[test]
    fn failures_redeliver_with_backoff_until_the_last_attempt() {
        let f = Handled::Classified(Outcome::FAILURE);
        assert_eq!(decide(f, 1, 3, backoff), Settle::Redeliver(S));
        assert_eq!(decide(f, 2, 3, backoff), Settle::Redeliver(2 * S));
        assert_eq!(
            decide(f, 3, 3, backoff),
            Settle::DeadLetter(DeadLetterReason::MaxAttempts)
        );
        // A broker that counts past the limit (another consumer's attempts) still ends it.
        assert_eq!(
            decide(f, 9, 3, |_| unreachable!()),
            Settle::DeadLetter(DeadLetterReason::MaxAttempts)
        );
        // One attempt allowed: the first failure is the last.
        assert_eq!(
            decide(f, 1, 1, |_| unreachable!()),
            Settle::DeadLetter(DeadLetterReason::MaxAttempts)
        );
    }

    #[test]
    fn the_downstreams_hint_wins_over_the_backoff() {
        let f = Handled::Classified(Outcome::failure_with_retry_after(7 * S));
        assert_eq!(
            decide(f, 1, 3, |_| unreachable!()),
            Settle::Redeliver(7 * S)
        );
    }

    #[test]
    fn ignored_errors_are_not_retried() {
        assert_eq!(
            decide(
                Handled::Classified(Outcome::Ignore),
                1,
                5,
                |_| unreachable!()
            ),
            Settle::DeadLetter(DeadLetterReason::NotRetryable)
        );
    }

    #[test]
    fn poison_and_reused_keys_are_dead_lettered_at_once() {
        assert_eq!(
            decide(Handled::Poison, 1, 5, |_| unreachable!()),
            Settle::DeadLetter(DeadLetterReason::Poison)
        );
        assert_eq!(
            decide(Handled::KeyReused, 1, 5, |_| unreachable!()),
            Settle::DeadLetter(DeadLetterReason::KeyReused)
        );
    }

    #[test]
    fn later_is_not_an_attempt() {
        // Past max attempts, "not now" still redelivers: it did not fail.
        assert_eq!(
            decide(Handled::Later(3 * S), 50, 5, |_| unreachable!()),
            Settle::Redeliver(3 * S)
        );
    }
}
