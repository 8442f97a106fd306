//! Recording a batch's outcome: published rows, and failed ones with their error and next
//! attempt (one statement each, arrays unnested).

use std::time::Duration;

use sqlx::PgConnection;

use super::publish::{Done, Fate};
use crate::message::{cut, outbox::schema::Statements, postgres::storable};

/// The longest `last_error` kept, in bytes.
const MAX_ERROR: usize = 2048;

/// Marks `done`'s published and failed rows (deferred ones stay untouched).
pub(crate) async fn mark(
    conn: &mut PgConnection,
    sql: &Statements,
    done: &[Done],
    backoff: (Duration, Duration),
) -> Result<(), sqlx::Error> {
    let published: Vec<i64> = done
        .iter()
        .filter(|d| d.2 == Fate::Published)
        .map(|d| d.0)
        .collect();
    if !published.is_empty() {
        sqlx::query(&sql.mark_published)
            .bind(published)
            .execute(&mut *conn)
            .await?;
    }
    let (mut ids, mut errors, mut delays) = (Vec::new(), Vec::new(), Vec::new());
    for (id, attempts, fate) in done {
        if let Fate::Failed(why) = fate {
            ids.push(*id);
            errors.push(bounded(why));
            let d = jittered(delay(*attempts, backoff.0, backoff.1), fastrand::f64());
            delays.push(i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        }
    }
    if !ids.is_empty() {
        sqlx::query(&sql.mark_failed)
            .bind(ids)
            .bind(errors)
            .bind(delays)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// The wait after a row's failed attempt, `attempts` failures before it: `min` doubled per
/// earlier attempt, at most `max` (saturating).
pub(crate) fn delay(attempts: i32, min: Duration, max: Duration) -> Duration {
    let n = u32::try_from(attempts).unwrap_or(0).min(31);
    min.checked_mul(1u32 << n).unwrap_or(max).min(max)
}

/// `d` less up to a fifth of it (`unit` in 0..1): relays retrying together spread out, and
/// `max` stays a bound.
pub(crate) fn jittered(d: Duration, unit: f64) -> Duration {
    let unit = if unit.is_finite() {
        unit.clamp(0.0, 1.0)
    } else {
        0.0
    };
    d.saturating_sub(d.mul_f64(unit * 0.2))
}

/// Error text PostgreSQL can store, at most [`MAX_ERROR`] bytes (cut at a character).
fn bounded(why: &str) -> String {
    storable(cut(why, MAX_ERROR)).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn backoff_doubles_to_max_and_saturates() {
        let (min, max) = (10 * MS, 50 * MS);
        assert_eq!(delay(0, min, max), 10 * MS);
        assert_eq!(delay(1, min, max), 20 * MS);
        assert_eq!(delay(2, min, max), 40 * MS);
        assert_eq!(delay(3, min, max), 50 * MS);
        assert_eq!(delay(i32::MAX, min, max), 50 * MS);
        assert_eq!(delay(-5, min, max), 10 * MS);
        let day = Duration::from_secs(86_400);
        assert_eq!(delay(40, day, day), day);
    }

    #[test]
    fn jitter_takes_at_most_a_fifth() {
        let d = 100 * MS;
        assert_eq!(jittered(d, 0.0), d);
        assert_eq!(jittered(d, 1.0), 80 * MS);
        assert!(jittered(d, 0.5) < d && jittered(d, 0.5) > 80 * MS);
        assert_eq!(jittered(d, f64::NAN), d);
        assert_eq!(jittered(Duration::from_secs(86_400), 1.0).as_secs(), 69_120);
    }

    #[test]
    fn errors_are_bounded_and_storable() {
        assert_eq!(bounded("a\0b"), "a\u{FFFD}b");
        let long = "é".repeat(2000);
        let b = bounded(&long);
        assert!(b.len() <= MAX_ERROR && b.chars().all(|c| c == 'é'));
    }
}
