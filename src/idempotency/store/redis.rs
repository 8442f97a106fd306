//! Redis (and Redis Cluster): one key per idempotency key, one Lua script per operation.

use std::{
    fmt,
    sync::{Arc, LazyLock},
    time::Duration,
};

use redis::{Script, Value, aio::ConnectionLike};

use super::{Claim, OwnerToken, Store, StoreError};
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
        }
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
// then, when done, the completion's binary form.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], '\1' .. ARGV[1] .. ARGV[2], 'PX', ARGV[3])
  return {0}
end
if string.sub(v, 2, 33) ~= ARGV[1] then return {2} end
if string.byte(v, 1) == 1 then return {1, redis.call('PTTL', KEYS[1])} end
return {3, string.sub(v, 50)}
",
    )
});

static COMPLETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local v = redis.call('GET', KEYS[1])
if not v or string.byte(v, 1) ~= 1 or string.sub(v, 34, 49) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], '\2' .. string.sub(v, 2, 49) .. ARGV[2], 'PX', ARGV[3])
return 1
",
    )
});

static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local v = redis.call('GET', KEYS[1])
if not v or string.byte(v, 1) ~= 1 or string.sub(v, 34, 49) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
",
    )
});

static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local v = redis.call('GET', KEYS[1])
if not v or string.byte(v, 1) ~= 1 or string.sub(v, 34, 49) ~= ARGV[1] then return 0 end
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

fn parse_claim(v: Value, token: OwnerToken) -> Result<Claim, StoreError> {
    let Value::Array(items) = v else {
        return Err(bad("not an array"));
    };
    let int = |v: &Value| match v {
        Value::Int(i) => Ok(*i),
        _ => Err(bad("not an integer")),
    };
    match items.first().map(int).transpose()? {
        Some(0) => Ok(Claim::New(token)),
        Some(1) => {
            let ttl = items.get(1).map(int).transpose()?.unwrap_or(0).max(0);
            Ok(Claim::InFlight {
                retry_after: Duration::from_millis(ttl as u64),
            })
        }
        Some(2) => Ok(Claim::Mismatch),
        Some(3) => match items.get(1) {
            Some(Value::BulkString(bytes)) => Completion::decode(bytes)
                .map(Claim::Completed)
                .map_err(StoreError::new),
            _ => Err(bad("no record")),
        },
        _ => Err(bad("unknown state")),
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
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let token = OwnerToken::new();
        let mut conn = self.conn.clone();
        let v: Value = CLAIM
            .key(self.key(key))
            .arg(&fingerprint.as_bytes()[..])
            .arg(&token_bytes(token)[..])
            .arg(millis(lease))
            .invoke_async(&mut conn)
            .await
            .map_err(StoreError::new)?;
        parse_claim(v, token)
    }

    async fn complete(
        &self,
        key: &str,
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
            .invoke_async(&mut conn)
            .await
            .map_err(StoreError::new)?;
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
