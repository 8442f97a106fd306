//! Redis (and Redis Cluster): one key per idempotency key, one Lua script per operation.

use std::{
    fmt,
    sync::{Arc, LazyLock},
    time::Duration,
};

use redis::{Script, Value, aio::ConnectionLike};

use super::{Claim, OwnerToken, Store, StoreError, StoreErrorKind};
use crate::idempotency::{Completion, Fingerprint};

/// Keys in Redis, shared by every instance of the service.
///
/// Each idempotency key is one Redis key holding a compact binary record (state, fingerprint,
/// owner token, then the completion), so every operation touches one key: one hash slot in
/// Redis Cluster by construction. Each operation is one Lua script, called with `EVALSHA` and
/// loaded again if the server answers `NOSCRIPT`: a replay, a conflict or a mismatch cost one
/// round trip, a new key two (claim, complete) plus lease renewals. Leases and TTLs are Redis
/// expirations, so a crashed instance's claims vanish by themselves.
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

impl RedisStore {
    /// Connects to one Redis server with an auto-reconnecting `ConnectionManager` (1 s to
    /// connect, 1 s per response).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(StoreError::new)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(1);
        // Lazy: a server that is down at start-up is a store error per request, not a crash.
        let conn = redis::aio::ConnectionManager::new_lazy_with_config(client, config)
            .map_err(StoreError::new)?;
        Ok(RedisStore::with_connection(conn))
    }
}

impl RedisStore<redis::cluster_async::ClusterConnection> {
    /// Connects to a Redis Cluster through any of its nodes.
    pub async fn connect_cluster(nodes: &[&str]) -> Result<Self, StoreError> {
        let client = redis::cluster::ClusterClient::builder(nodes.iter().copied())
            .connection_timeout(Duration::from_secs(1))
            .response_timeout(Duration::from_secs(1))
            .build()
            .map_err(StoreError::new)?;
        let conn = client
            .get_async_connection()
            .await
            .map_err(StoreError::new)?;
        Ok(RedisStore::with_connection(conn))
    }
}

impl<C> RedisStore<C> {
    /// A store over any async Redis connection (a `ConnectionManager`, a cluster connection).
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
    /// `WAIT` holds the connection it runs on, and the store multiplexes one connection: while
    /// replicas lag, every store call queues behind it. Keep `timeout` well under the layer's
    /// store timeout, or give the layer a store of its own.
    pub fn wait_for_replicas(mut self, replicas: u32, timeout: Duration) -> Self {
        self.wait = Some((replicas, timeout));
        self
    }

    /// How long a value that is not a readable record (or has no expiry) is kept before it
    /// expires (24 h by default, like completed keys): meanwhile its key is answered 500,
    /// never run.
    pub fn unreadable_ttl(mut self, ttl: Duration) -> Self {
        self.unreadable_ttl = ttl;
        self
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

// Record: state byte (1 in flight, 2 done), fingerprint (32 bytes), owner token (16 bytes),
// then, when done, the completion's binary form (which carries its own version).
//
// A value that is not such a record (another type, another layout, written by something
// else) is never taken for a free key: the claim answers 4 (unreadable). Any record without
// an expiry gets one, so no key stays stuck forever.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TYPE', KEYS[1])['ok']
if t == 'none' then
  redis.call('SET', KEYS[1], '\1' .. ARGV[1] .. ARGV[2], 'PX', ARGV[3])
  return {0}
end
local v = t == 'string' and redis.call('GET', KEYS[1]) or ''
local s = string.byte(v, 1)
local readable = (s == 1 and string.len(v) == 49) or (s == 2 and string.len(v) > 49)
if redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], (readable and s == 1) and ARGV[3] or ARGV[4])
end
if not readable then return {4} end
if string.sub(v, 2, 33) ~= ARGV[1] then return {2} end
if s == 1 then return {1, redis.call('PTTL', KEYS[1])} end
return {3, string.sub(v, 50)}
",
    )
});

// Completes the owner's in-flight record, or a key that vanished (its lease lapsed and nobody
// claimed it since).
static COMPLETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TYPE', KEYS[1])['ok']
if t == 'none' then
  redis.call('SET', KEYS[1], '\2' .. ARGV[4] .. ARGV[1] .. ARGV[2], 'PX', ARGV[3])
  return 1
end
if t ~= 'string' then return 0 end
local v = redis.call('GET', KEYS[1])
if string.len(v) < 49 or string.sub(v, 34, 49) ~= ARGV[1] then return 0 end
-- Completed by this owner already: a repeat whose first answer was lost.
if string.byte(v, 1) == 2 then return 1 end
if string.byte(v, 1) ~= 1 or string.len(v) ~= 49 then return 0 end
redis.call('SET', KEYS[1], '\2' .. string.sub(v, 2, 49) .. ARGV[2], 'PX', ARGV[3])
return 1
",
    )
});

static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('TYPE', KEYS[1])['ok'] ~= 'string' then return 0 end
local v = redis.call('GET', KEYS[1])
if string.byte(v, 1) ~= 1 or string.len(v) ~= 49 or string.sub(v, 34, 49) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
",
    )
});

static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('TYPE', KEYS[1])['ok'] ~= 'string' then return 0 end
local v = redis.call('GET', KEYS[1])
if string.byte(v, 1) ~= 1 or string.len(v) ~= 49 or string.sub(v, 34, 49) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
",
    )
});

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

impl<C: ConnectionLike + Send> RedisStore<C> {
    /// With `wait_for_replicas`, that enough replicas took the last write.
    async fn replicated(&self, conn: &mut C) -> Result<(), StoreError> {
        let Some((replicas, timeout)) = self.wait else {
            return Ok(());
        };
        let acked: i64 = redis::cmd("WAIT")
            .arg(replicas)
            .arg(millis(timeout))
            .query_async(conn)
            .await
            .map_err(StoreError::new)?;
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
        let v: Value = CLAIM
            .key(self.key(key))
            .arg(&fingerprint.as_bytes()[..])
            .arg(&token_bytes(token)[..])
            .arg(millis(lease))
            .arg(millis(self.unreadable_ttl))
            .invoke_async(&mut conn)
            .await
            .map_err(StoreError::new)?;
        let claim = parse_claim(v)?;
        if claim == Claim::New {
            self.replicated(&mut conn).await?;
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
        let done: i64 = COMPLETE
            .key(self.key(key))
            .arg(&token_bytes(token)[..])
            .arg(&completion.encode()[..])
            .arg(millis(ttl))
            .arg(&fingerprint.as_bytes()[..])
            .invoke_async(&mut conn)
            .await
            .map_err(StoreError::new)?;
        if done == 1 {
            self.replicated(&mut conn).await?;
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
