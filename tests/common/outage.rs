//! A store that is down: every call, its readiness check included, fails at once with
//! "connection refused", or never answers (a network partition).

use std::time::Duration;

use tower_rampart::idempotency::{Claim, Completion, Fingerprint, OwnerToken, Store, StoreError};

/// A store that is down, or hangs.
#[derive(Clone, Copy, Debug)]
pub struct Outage {
    pub hang: bool,
}

impl Outage {
    async fn fail<T>(&self) -> Result<T, StoreError> {
        if self.hang {
            std::future::pending::<()>().await;
        }
        Err(StoreError::new("connection refused"))
    }
}

impl Store for Outage {
    async fn claim(
        &self,
        _: &str,
        _: &Fingerprint,
        _: OwnerToken,
        _: Duration,
    ) -> Result<Claim, StoreError> {
        self.fail().await
    }

    async fn complete(
        &self,
        _: &str,
        _: &Fingerprint,
        _: OwnerToken,
        _: &Completion,
        _: Duration,
    ) -> Result<bool, StoreError> {
        self.fail().await
    }

    async fn release(&self, _: &str, _: OwnerToken) -> Result<bool, StoreError> {
        self.fail().await
    }

    async fn renew(&self, _: &str, _: OwnerToken, _: Duration) -> Result<bool, StoreError> {
        self.fail().await
    }

    async fn ready(&self) -> Result<(), StoreError> {
        self.fail().await
    }
}
