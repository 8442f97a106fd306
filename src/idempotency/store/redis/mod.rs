//! Redis (and Redis Cluster): one key per idempotency key, one Lua script per operation.

mod connect;
mod scripts;

use std::{any::Any, fmt, sync::Arc, time::Duration};

use redis::{
    Value,
    aio::ConnectionLike,
    cluster_async::ClusterConnection,
    cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr},
};

use self::scripts::{CLAIM, COMPLETE, RELEASE, RENEW};

use super::{Claim, OwnerToken, Store, StoreError, StoreErrorKind};
use crate::{
    ConfigError,
    idempotency::{Completion, Fingerprint},
};

/// Keys in Redis, shared by every instance of the service.
///
/// Each idempotency key is one Redis key holding a compact binary record (state, fingerprint,
/// owner token, then the completion), so every operation touches one key: one hash slot in
/// Redis Cluster by construction. Each operation is one Lua script, called with `EVALSHA` and
/// loaded again if the server answers `NOSCRIPT`: a replay, a conflict or a mismatch cost one
/// round trip, a new key two (claim, complete) plus lease renewals. Leases and TTLs are Redis
/// expirations, so a crashed instance's claims vanish by themselves.
///
/// URLs may name an ACL user (`redis://user:password@host:6379`); with the `redis-tls` feature,
/// `rediss://user:password@host:6380` connects over TLS (rustls; the system's root certificates,
/// or a private CA through `RedisStore::connect_tls`). The store needs only these commands
/// and its own keys (add `+cluster|slots +asking` on Redis Cluster, `+select` if the URL names
/// a database; adjust `~idempotency:*` to your prefix):
///
/// ```text
/// ACL SETUSER rampart on >PASSWORD resetkeys ~idempotency:* resetchannels -@all +evalsha +script|load +type +get +set +pexpire +pttl +del +wait +ping
/// ```
///
/// ```no_run
/// use tower_rampart::idempotency::{IdempotencyLayer, RedisStore};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let store = RedisStore::connect("redis://127.0.0.1:6379").await?.with_prefix("payments:");
/// let layer = IdempotencyLayer::builder().store(store).build()?;
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisStore<C = redis::aio::ConnectionManager> {
    conn: C,
    prefix: Arc<str>,
    unreadable_ttl: Duration,
    wait: Option<(u32, Duration)>,
}

impl<C> fmt::Debug for RedisStore<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl<C> RedisStore<C> {
    /// A store over any async Redis connection (a `ConnectionManager`, a cluster connection).
    /// With a `redis::cluster_async::ClusterConnection` (what [`RedisStore::connect_cluster`]
    /// makes), [`wait_for_replicas`](Self::wait_for_replicas) asks the key's primary only.
    pub fn with_connection(conn: C) -> Self {
        RedisStore {
            conn,
            prefix: Arc::from("idempotency:"),
            unreadable_ttl: Duration::from_secs(24 * 3600),
            wait: None,
        }
    }

    /// After a claim or a completion, waits (Redis `WAIT`) until `replicas` replicas have it,
    /// for at most `timeout`; fewer is a store error (the claim is answered 503 and released
    /// when its token is used again, or expires with its lease). This narrows, but does not
    /// close, the window in which a failover loses an acknowledged claim. Off by default.
    ///
    /// On Redis Cluster, `WAIT` goes to the primary that owns the key, over the connection
    /// that carried the write, and counts that primary's replicas only: other primaries are
    /// neither asked nor required to have replicas.
    ///
    /// `WAIT` holds the connection it runs on, and the store multiplexes one connection per
    /// server: while replicas lag, every store call to that server (on a cluster, to the key's
    /// primary) queues behind it. Keep `timeout` well under the layer's store timeout, or give
    /// the layer a store of its own.
    ///
    /// `timeout` is more than zero (to Redis, a zero `WAIT` timeout means forever) and at most
    /// one year.
    pub fn wait_for_replicas(
        mut self,
        replicas: u32,
        timeout: Duration,
    ) -> Result<Self, ConfigError> {
        let timeout = positive("wait_for_replicas timeout", timeout)?;
        self.wait = Some((replicas, timeout));
        Ok(self)
    }

    /// How long a value that is not a readable record (or has no expiry) is kept before it
    /// expires (24 h by default, like completed keys): meanwhile its key is answered 500,
    /// never run. More than zero and at most one year.
    pub fn unreadable_ttl(mut self, ttl: Duration) -> Result<Self, ConfigError> {
        self.unreadable_ttl = positive("unreadable_ttl", ttl)?;
        Ok(self)
    }

    /// Prefix of every Redis key (default `idempotency:`).
    pub fn with_prefix(mut self, prefix: &str) -> Self {
        self.prefix = Arc::from(prefix);
        self
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

/// The store's name in its configuration errors.
const LAYER: &str = "Redis store";

/// A duration setting of the store: more than zero, at most one year.
fn positive(field: &'static str, d: Duration) -> Result<Duration, ConfigError> {
    if d.is_zero() {
        return Err(ConfigError::field(LAYER, field, "must be more than zero"));
    }
    ConfigError::check_duration(LAYER, field, d)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn token_bytes(t: OwnerToken) -> [u8; 16] {
    t.as_u128().to_be_bytes()
}

fn bad(what: &str) -> StoreError {
    StoreError::new(format!("unexpected answer from the claim script: {what}"))
}

fn unreadable(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StoreError {
    StoreError::with_kind(StoreErrorKind::Unreadable, e)
}

fn parse_claim(v: Value) -> Result<Claim, StoreError> {
    let Value::Array(items) = v else {
        return Err(bad("not an array"));
    };
    let int = |v: &Value| match v {
        Value::Int(i) => Ok(*i),
        _ => Err(bad("not an integer")),
    };
    match items.first().map(int).transpose()? {
        Some(0) => Ok(Claim::New),
        Some(1) => {
            let ttl = items.get(1).map(int).transpose()?.unwrap_or(0).max(0);
            Ok(Claim::InFlight {
                lease_left: Duration::from_millis(ttl as u64),
            })
        }
        Some(2) => Ok(Claim::Mismatch),
        Some(3) => match items.get(1) {
            Some(Value::BulkString(bytes)) => Completion::decode(bytes)
                .map(Claim::Completed)
                .map_err(unreadable),
            _ => Err(bad("no record")),
        },
        Some(4) => Err(unreadable(
            "the key holds a value that is not an idempotency record",
        )),
        _ => Err(bad("unknown state")),
    }
}

impl<C: ConnectionLike + Send + 'static> RedisStore<C> {
    /// With `wait_for_replicas`, that enough replicas took the last write to `key` (the full
    /// Redis key), made on `conn`.
    async fn replicated(&self, conn: &mut C, key: &str) -> Result<(), StoreError> {
        let Some((replicas, timeout)) = self.wait else {
            return Ok(());
        };
        let mut wait = redis::cmd("WAIT");
        wait.arg(replicas).arg(millis(timeout));
        // A keyless WAIT on a cluster goes to every primary and answers the minimum: a round
        // trip to each, and a refusal when an unrelated primary lacks replicas. Send it to the
        // key's primary instead, over that node's connection, which carried the write.
        let acked: i64 = match (conn as &mut dyn Any).downcast_mut::<ClusterConnection>() {
            Some(cluster) => {
                let primary = Route::with_key(key, SlotAddr::Master);
                let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(primary));
                let answer = cluster
                    .route_command(wait, route)
                    .await
                    .map_err(StoreError::new)?;
                redis::from_redis_value(answer).map_err(|e| StoreError::new(e.to_string()))?
            }
            None => wait.query_async(conn).await.map_err(StoreError::new)?,
        };
        if acked < i64::from(replicas) {
            return Err(StoreError::new(format!(
                "only {acked} of {replicas} replicas acknowledged the write in time"
            )));
        }
        Ok(())
    }
}

impl<C> Store for RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    async fn claim(
        &self,
        key: &str,
        fingerprint: &Fingerprint,
        token: OwnerToken,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let mut conn = self.conn.clone();
        let key = self.key(key);
        let v: Value = CLAIM
            .key(&key)
            .arg(&fingerprint.as_bytes()[..])
            .arg(&token_bytes(token)[..])
            .arg(millis(lease))
            .arg(millis(self.unreadable_ttl))
            .invoke_async(&mut conn)
            .await
            .map_err(StoreError::new)?;
        let claim = parse_claim(v)?;
        if claim == Claim::New {
            self.replicated(&mut conn, &key).await?;
        }
        Ok(claim)
    }

    async fn complete(
        &self,
        key: &str,
        fingerprint: &Fingerprint,
        token: OwnerToken,
        completion: &Completion,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let key = self.key(key);
        let done: i64 = COMPLETE
            .key(&key)
            .arg(&token_bytes(token)[..])
            .arg(&completion.encode()[..])
            .arg(millis(ttl))
            .arg(&fingerprint.as_bytes()[..])
            .invoke_async(&mut conn)
            .await
            .map_err(StoreError::new)?;
        if done == 1 {
            self.replicated(&mut conn, &key).await?;
        }
        Ok(done == 1)
    }

    async fn release(&self, key: &str, token: OwnerToken) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let done: i64 = RELEASE
            .key(self.key(key))
            .arg(&token_bytes(token)[..])
            .invoke_async(&mut conn)
            .await
            .map_err(StoreError::new)?;
        Ok(done == 1)
    }

    async fn renew(
        &self,
        key: &str,
        token: OwnerToken,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let done: i64 = RENEW
            .key(self.key(key))
            .arg(&token_bytes(token)[..])
            .arg(millis(lease))
            .invoke_async(&mut conn)
            .await
            .map_err(StoreError::new)?;
        Ok(done == 1)
    }

    async fn ready(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(StoreError::new)?;
        Ok(())
    }
}
