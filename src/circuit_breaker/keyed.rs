//! One breaker per key (host, route, tenant), bounded in number and evicted when idle.

use std::{
    borrow::Borrow,
    collections::HashMap,
    fmt,
    hash::Hash,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering::*},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use http::uri::Authority;
use tokio::time::Instant;

use super::{Breaker, CircuitBreakerHandle, Config, State, select::SelectBreaker};

/// Computes the key of a request. Closures `Fn(&Req) -> K` are key functions.
pub trait KeyFn<Req> {
    /// The key type.
    type Key;
    /// The key of `req`.
    fn key(&self, req: &Req) -> Self::Key;
}

impl<F, Req, K> KeyFn<Req> for F
where
    F: Fn(&Req) -> K,
{
    type Key = K;

    #[inline]
    fn key(&self, req: &Req) -> K {
        self(req)
    }
}

/// Keys an `http::Request` by its authority (`host:port`): the URI's on a client, the `Host`
/// header's on a server, `unknown` when neither is there.
///
/// ```
/// use tower_rampart::circuit_breaker::{ByAuthority, KeyFn};
///
/// let req = http::Request::get("http://api.example:8080/x").body(()).unwrap();
/// assert_eq!(ByAuthority.key(&req).as_str(), "api.example:8080");
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct ByAuthority;

impl<B> KeyFn<http::Request<B>> for ByAuthority {
    type Key = Authority;

    fn key(&self, req: &http::Request<B>) -> Authority {
        if let Some(a) = req.uri().authority() {
            return a.clone();
        }
        req.headers()
            .get(http::header::HOST)
            .and_then(|h| Authority::try_from(h.as_bytes()).ok())
            .unwrap_or_else(|| Authority::from_static("unknown"))
    }
}

#[cfg(feature = "reqwest")]
impl KeyFn<reqwest::Request> for ByAuthority {
    type Key = Authority;

    fn key(&self, req: &reqwest::Request) -> Authority {
        Authority::try_from(req.url().authority())
            .unwrap_or_else(|_| Authority::from_static("unknown"))
    }
}

/// The breakers of a keyed layer, shared by every service the layer makes.
pub struct KeyedBreakers<K> {
    config: Config,
    epoch: Instant,
    max_keys: usize,
    idle_timeout: Duration,
    map: ArcSwap<HashMap<K, Arc<Entry>>>,
    inserting: Mutex<()>,
}

struct Entry {
    breaker: Arc<Breaker>,
    last_used: AtomicU64,
}

impl<K> fmt::Debug for KeyedBreakers<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBreakers")
            .field("name", &self.config.name())
            .field("keys", &self.map.load().len())
            .field("max_keys", &self.max_keys)
            .field("idle_timeout", &self.idle_timeout)
            .finish()
    }
}

impl<K> KeyedBreakers<K>
where
    K: Hash + Eq + Clone + fmt::Display,
{
    pub(crate) fn new(config: Config, max_keys: usize, idle_timeout: Duration) -> Self {
        KeyedBreakers {
            config,
            epoch: Instant::now(),
            max_keys: max_keys.max(1),
            idle_timeout,
            map: ArcSwap::from_pointee(HashMap::new()),
            inserting: Mutex::new(()),
        }
    }

    fn nanos(&self, t: Instant) -> u64 {
        crate::time::nanos_since(self.epoch, t)
    }

    /// The breaker for `key`, made on first use.
    pub fn get_or_insert(&self, key: K, now: Instant) -> Arc<Breaker> {
        let n = self.nanos(now);
        if let Some(e) = self.map.load().get(&key) {
            // Write the timestamp only when it moved by a millisecond: fewer cache-line
            // transfers between cores.
            if n.saturating_sub(e.last_used.load(Relaxed)) > 1_000_000 {
                e.last_used.store(n, Relaxed);
            }
            return e.breaker.clone();
        }
        self.insert(key, n)
    }

    fn insert(&self, key: K, n: u64) -> Arc<Breaker> {
        let _one_writer = self
            .inserting
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let current = self.map.load_full();
        if let Some(e) = current.get(&key) {
            return e.breaker.clone();
        }
        let mut map = self.without_idle(&current, n);
        if map.len() >= self.max_keys {
            // Full of busy keys: drop the least recently used one.
            if let Some(lru) = map
                .iter()
                .min_by_key(|(_, e)| e.last_used.load(Relaxed))
                .map(|(k, _)| k.clone())
            {
                map.remove(&lru);
            }
        }
        let mut config = self.config.clone();
        config.name = Arc::from(format!("{}/{}", self.config.name(), key));
        let breaker = Arc::new(Breaker::new(config));
        map.insert(
            key,
            Arc::new(Entry {
                breaker: breaker.clone(),
                last_used: AtomicU64::new(n),
            }),
        );
        self.map.store(Arc::new(map));
        breaker
    }

    /// Closed breakers unused for the idle timeout are dropped; open or half-open ones stay, so
    /// eviction never lets traffic through to a downstream known to be failing.
    fn without_idle(&self, map: &HashMap<K, Arc<Entry>>, n: u64) -> HashMap<K, Arc<Entry>> {
        let idle = crate::time::nanos_of(self.idle_timeout);
        map.iter()
            .filter(|(_, e)| {
                n.saturating_sub(e.last_used.load(Relaxed)) < idle
                    || e.breaker.state() != State::Closed
            })
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect()
    }

    /// Drops idle closed breakers now (it also happens whenever a new key arrives).
    pub fn evict_idle(&self, now: Instant) {
        let _one_writer = self
            .inserting
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let current = self.map.load_full();
        let map = self.without_idle(&current, self.nanos(now));
        if map.len() != current.len() {
            self.map.store(Arc::new(map));
        }
    }

    /// A handle to the breaker of `key`, if it exists.
    pub fn get<Q>(&self, key: &Q) -> Option<CircuitBreakerHandle>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map
            .load()
            .get(key)
            .map(|e| CircuitBreakerHandle::new(e.breaker.clone()))
    }

    /// The keys that have a breaker now.
    pub fn keys(&self) -> Vec<K> {
        self.map.load().keys().cloned().collect()
    }

    /// How many breakers exist now.
    pub fn len(&self) -> usize {
        self.map.load().len()
    }

    /// Whether no breaker exists yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Picks a breaker per key. Made by [`CircuitBreakerLayer::keyed`](super::CircuitBreakerLayer::keyed).
pub struct Keyed<K, F> {
    pub(crate) breakers: Arc<KeyedBreakers<K>>,
    pub(crate) key: F,
}

impl<K, F: Clone> Clone for Keyed<K, F> {
    fn clone(&self) -> Self {
        Keyed {
            breakers: self.breakers.clone(),
            key: self.key.clone(),
        }
    }
}

impl<K, F> fmt::Debug for Keyed<K, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyed")
            .field("breakers", &self.breakers)
            .finish_non_exhaustive()
    }
}

impl<K, F, Req> SelectBreaker<Req> for Keyed<K, F>
where
    F: KeyFn<Req, Key = K>,
    K: Hash + Eq + Clone + fmt::Display,
{
    type Breaker = Arc<Breaker>;

    #[inline]
    fn select(&self, req: &Req) -> Arc<Breaker> {
        self.breakers
            .get_or_insert(self.key.key(req), Instant::now())
    }
}

impl<K> KeyedBreakers<K> {
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    pub(crate) fn max_keys(&self) -> usize {
        self.max_keys
    }

    pub(crate) fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }
}
