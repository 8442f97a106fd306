//! The store operations: one statement each, and reading the claim's answer.

use std::time::Duration;

use sqlx::{Row, postgres::PgRow};

use super::{PostgresStore, bad, sql::MAX_MILLIS};
use crate::idempotency::{
    Completion, Fingerprint,
    store::{Claim, OwnerToken, Store, StoreError, StoreErrorKind},
};

/// A lease or TTL in milliseconds, at least 1 and at most a year.
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis())
        .unwrap_or(i64::MAX)
        .clamp(1, MAX_MILLIS)
}

fn token_bytes(t: OwnerToken) -> [u8; 16] {
    t.as_u128().to_be_bytes()
}

fn unreadable(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StoreError {
    StoreError::with_kind(StoreErrorKind::Unreadable, e)
}

/// The claim's row: (ours, state, same fingerprint, completion, lease left in ms).
fn parse_claim(row: &PgRow) -> Result<Claim, StoreError> {
    let get = |e: sqlx::Error| bad(&e.to_string());
    let ours: bool = row.try_get(0).map_err(get)?;
    if ours {
        return Ok(Claim::New);
    }
    let state: i16 = row.try_get(1).map_err(get)?;
    let same: bool = row.try_get(2).map_err(get)?;
    match (state, same) {
        (1 | 2, false) => Ok(Claim::Mismatch),
        (1, true) => {
            let left: i64 = row.try_get(4).map_err(get)?;
            Ok(Claim::InFlight {
                lease_left: Duration::from_millis(u64::try_from(left).unwrap_or(0)),
            })
        }
        (2, true) => match row.try_get::<Option<&[u8]>, _>(3).map_err(get)? {
            Some(bytes) => Completion::decode(bytes)
                .map(Claim::Completed)
                .map_err(unreadable),
            None => Err(unreadable("a completed row without its completion")),
        },
        _ => Err(unreadable(format!("a row in an unknown state ({state})"))),
    }
}

impl Store for PostgresStore {
    async fn claim(
        &self,
        key: &str,
        fingerprint: &Fingerprint,
        token: OwnerToken,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let token = token_bytes(token);
        let query = || {
            sqlx::query(&self.sql.claim)
                .bind(key.as_bytes())
                .bind(&fingerprint.as_bytes()[..])
                .bind(&token[..])
                .bind(millis(lease))
        };
        let row = self
            .run(query)
            .await?
            .ok_or_else(|| bad("the claim returned no row"))?;
        parse_claim(&row)
    }

    async fn complete(
        &self,
        key: &str,
        fingerprint: &Fingerprint,
        token: OwnerToken,
        completion: &Completion,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let token = token_bytes(token);
        let record = completion.encode();
        let query = || {
            sqlx::query(&self.sql.complete)
                .bind(key.as_bytes())
                .bind(&fingerprint.as_bytes()[..])
                .bind(&token[..])
                .bind(&record[..])
                .bind(millis(ttl))
        };
        Ok(self.run(query).await?.is_some())
    }

    async fn release(&self, key: &str, token: OwnerToken) -> Result<bool, StoreError> {
        let token = token_bytes(token);
        let query = || {
            sqlx::query(&self.sql.release)
                .bind(key.as_bytes())
                .bind(&token[..])
        };
        Ok(self.run(query).await?.is_some())
    }

    async fn renew(
        &self,
        key: &str,
        token: OwnerToken,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let token = token_bytes(token);
        let query = || {
            sqlx::query(&self.sql.renew)
                .bind(key.as_bytes())
                .bind(&token[..])
                .bind(millis(lease))
        };
        Ok(self.run(query).await?.is_some())
    }

    /// The database answers and the table exists.
    async fn ready(&self) -> Result<(), StoreError> {
        self.run(|| sqlx::query(&self.sql.ready)).await.map(drop)
    }
}
