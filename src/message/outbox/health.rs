//! The readiness check on the backlog's age.

use std::time::{Duration, SystemTime};

use super::Outbox;
use crate::{
    MAX_DURATION,
    health::{Check, ObservedValue, Status},
};

/// The shortest `max_age` a check keeps (a shorter one is raised to it).
const MIN_MAX_AGE: Duration = Duration::from_millis(1);

/// A readiness check ([`Readiness::outbox`](crate::health::Readiness::outbox)): fails when the
/// oldest unpublished event is older than `max_age`, or PostgreSQL does not answer; warns
/// above half of `max_age`.
///
/// ```
/// # use sqlx::postgres::PgPoolOptions;
/// use std::time::Duration;
/// use tower_rampart::{health::Readiness, message::outbox::{Outbox, OutboxCheck}};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// # let pool = PgPoolOptions::new().connect_lazy("postgres://localhost/app").unwrap();
/// let check = OutboxCheck::new(Outbox::new(pool), Duration::from_secs(60));
/// assert_eq!(check.max_age(), Duration::from_secs(60));
/// let readiness = Readiness::new().outbox(check); // key `rampart_outbox:backlogAge`
/// # let _ = readiness;
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct OutboxCheck {
    pub(crate) outbox: Outbox,
    pub(crate) max_age: Duration,
}

impl OutboxCheck {
    /// Fails readiness when the oldest unpublished event of `outbox` is older than `max_age`.
    /// `max_age` is kept within 1 ms..=[`MAX_DURATION`] (a zero or larger value is clamped:
    /// never a panic, and [`max_age`](Self::max_age) tells what is used).
    pub fn new(outbox: Outbox, max_age: Duration) -> Self {
        OutboxCheck {
            outbox,
            max_age: max_age.clamp(MIN_MAX_AGE, MAX_DURATION),
        }
    }

    /// The age above which the check fails.
    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    /// The check's key: `<table>:backlogAge`.
    pub(crate) fn key(&self) -> String {
        format!("{}:backlogAge", self.outbox.table)
    }

    /// Runs the check, waiting at most `timeout` for PostgreSQL.
    pub(crate) async fn run(&self, timeout: Duration) -> Check {
        let wall = SystemTime::now();
        let answer = tokio::time::timeout(timeout, self.outbox.oldest_age()).await;
        let (status, age, output) = match answer {
            Ok(Ok(age)) => {
                let age = age.unwrap_or(Duration::ZERO);
                let (status, output) = judge(age, self.max_age);
                (status, age, output)
            }
            Ok(Err(e)) => (
                Status::Fail,
                Duration::ZERO,
                Some(format!("PostgreSQL failed: {e}")),
            ),
            Err(_) => (
                Status::Fail,
                Duration::ZERO,
                Some(format!("no answer within {} ms", timeout.as_millis())),
            ),
        };
        Check {
            key: self.key(),
            component_id: self.outbox.table.to_string(),
            component_type: "component",
            status,
            observed_value: ObservedValue::Number(age.as_secs_f64()),
            observed_unit: Some("s"),
            output,
            time: wall,
        }
    }
}

/// Pass up to half of `max`, warn up to `max`, fail above.
fn judge(age: Duration, max: Duration) -> (Status, Option<String>) {
    let say = |what: &str| {
        Some(format!(
            "the oldest unpublished event is {:.1} s old ({what} {:.1} s)",
            age.as_secs_f64(),
            max.as_secs_f64()
        ))
    };
    if age > max {
        (Status::Fail, say("max_age"))
    } else if age > max / 2 {
        (Status::Warn, say("over half of max_age"))
    } else {
        (Status::Pass, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn age_is_judged_against_max_age() {
        let max = Duration::from_secs(60);
        assert_eq!(judge(Duration::ZERO, max).0, Status::Pass);
        assert_eq!(judge(Duration::from_secs(30), max).0, Status::Pass);
        assert_eq!(judge(Duration::from_secs(31), max).0, Status::Warn);
        assert_eq!(judge(Duration::from_secs(60), max).0, Status::Warn);
        let (s, out) = judge(Duration::from_secs(61), max);
        assert_eq!(s, Status::Fail);
        assert!(out.unwrap().contains("61.0 s old"));
    }
}
