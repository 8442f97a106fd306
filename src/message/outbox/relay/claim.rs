//! Claiming a batch: the first unpublished row of each due aggregate (skipping rows other
//! relays hold), then the rows after them, all locked until the batch's transaction ends.

use sqlx::{PgConnection, Row, postgres::PgRow};

use crate::message::{Message, outbox::schema::Statements, postgres::read_message};

/// One claimed row.
#[derive(Debug)]
pub(crate) struct Claimed {
    pub(crate) id: i64,
    pub(crate) aggregate: String,
    /// Attempts before this batch.
    pub(crate) attempts: i32,
    pub(crate) message: Message,
}

/// Up to `batch_size` rows in id order: heads first (`FOR UPDATE SKIP LOCKED`), then their
/// followers (`FOR UPDATE`: nobody else holds a follower while we hold its head).
pub(crate) async fn claim(
    conn: &mut PgConnection,
    sql: &Statements,
    batch_size: u32,
) -> Result<Vec<Claimed>, sqlx::Error> {
    let heads = sqlx::query(&sql.heads)
        .bind(i64::from(batch_size))
        .bind(scan_limit(batch_size))
        .fetch_all(&mut *conn)
        .await?;
    let mut rows = heads.iter().map(read).collect::<Result<Vec<_>, _>>()?;
    if rows.len() < usize::try_from(batch_size).unwrap_or(usize::MAX)
        && scan_was_capped(conn, sql, batch_size).await?
    {
        // More heads may lie beyond the scanned rows (behind a long run of one aggregate):
        // find them through the aggregate index instead.
        let taken: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let more = sqlx::query(&sql.heads_by_aggregate)
            .bind(i64::from(batch_size) - i64::try_from(rows.len()).unwrap_or(0))
            .bind(taken)
            .fetch_all(&mut *conn)
            .await?;
        for h in &more {
            rows.push(read(h)?);
        }
        rows.sort_unstable_by_key(|r| r.id);
    }
    let left = usize::try_from(batch_size)
        .unwrap_or(usize::MAX)
        .saturating_sub(rows.len());
    if rows.is_empty() || left == 0 {
        return Ok(rows);
    }
    let mut aggregates: Vec<&str> = rows.iter().map(|r| r.aggregate.as_str()).collect();
    aggregates.sort_unstable();
    aggregates.dedup();
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let followers = sqlx::query(&sql.followers)
        .bind(aggregates)
        .bind(ids)
        .bind(i64::try_from(left).unwrap_or(i64::MAX))
        .fetch_all(&mut *conn)
        .await?;
    for f in &followers {
        rows.push(read(f)?);
    }
    rows.sort_unstable_by_key(|r| r.id);
    Ok(rows)
}

/// How many pending rows (in id order) the first heads query looks at: enough to fill a batch
/// from interleaved aggregates, bounded so that a long backlog is never scanned whole.
fn scan_limit(batch_size: u32) -> i64 {
    (i64::from(batch_size) * 4).max(1_000)
}

async fn scan_was_capped(
    conn: &mut PgConnection,
    sql: &Statements,
    batch_size: u32,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(&sql.scan_capped)
        .bind(scan_limit(batch_size))
        .fetch_one(conn)
        .await
}

fn read(row: &PgRow) -> Result<Claimed, sqlx::Error> {
    Ok(Claimed {
        id: row.try_get("id")?,
        aggregate: row.try_get("aggregate")?,
        attempts: row.try_get("attempts")?,
        message: read_message(row)?,
    })
}
