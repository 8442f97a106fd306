//! One breaker per key (host, route, tenant), bounded in number and evicted when idle.
//!
//! Only closed breakers with no call in flight are ever evicted: dropping an open or half-open
//! one would let the next call through to a downstream known to be failing, and dropping one
//! with calls in flight would send their outcomes to a breaker no key uses any more. When every
//! slot holds a breaker that cannot go, new keys share one overflow breaker, named
//! `<name>/(other)`, until a slot frees.
//!
//! Metric labels are bounded too: metrics carry the base name as `breaker` and the key in a
//! label of its own (`authority` for authorities, `key` otherwise); the first `max_keys` keys
//! seen get their own key label, later ones share `(other)` with the overflow breaker, and an
//! evicted breaker leaves the state gauges (they count live breakers per label and state).

use std::{
    borrow::Borrow,
    collections::{HashMap, HashSet},
    fmt,
    hash::Hash,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering::*},
    },
    time::Duration,
};

use arc_swap::{ArcSwap, ArcSwapOption};
use http::uri::Authority;
use tokio::time::Instant;

use super::{Breaker, CircuitBreakerHandle, Config, Reconfigured, State, select::SelectBreaker};

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
    /// The template of new breakers (with the base name). Swappable by
    /// [`reconfigure`](Self::reconfigure); read only when a breaker is made, under `inserting`.
    config: ArcSwap<Config>,
    epoch: Instant,
    max_keys: usize,
    idle_timeout: Duration,
    map: ArcSwap<HashMap<K, Arc<Entry>>>,
    /// One writer at a time; holds the keys that got their own metric label (at most
    /// `max_keys`, ever), so label cardinality stays bounded however keys churn.
    inserting: Mutex<HashSet<K>>,
    /// Serves new keys while every slot holds an open or half-open breaker. Made under
    /// `inserting`, so that a reconfiguration never misses one being made.
    overflow: ArcSwapOption<Breaker>,
}

/// The key part of the shared name and label for keys without their own.
const OTHER: &str = "(other)";

struct Entry {
    breaker: Arc<Breaker>,
    last_used: AtomicU64,
}

impl<K> fmt::Debug for KeyedBreakers<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBreakers")
            .field("name", &self.config.load().name())
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
            config: ArcSwap::from_pointee(config),
            epoch: Instant::now(),
            max_keys: max_keys.max(1),
            idle_timeout,
            map: ArcSwap::from_pointee(HashMap::new()),
            inserting: Mutex::new(HashSet::new()),
            overflow: ArcSwapOption::empty(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashSet<K>> {
        self.inserting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn overflow(&self) -> Arc<Breaker> {
        match self.overflow.load_full() {
            Some(b) => b,
            None => self.overflow_locked(&self.lock()),
        }
    }

    /// The metric labels of the breaker for `key` (or [`OTHER`]) of the family `base`: `breaker`
    /// is the base name, and the key has a label of its own, `authority` for authorities.
    fn label(base: &str, key: &str) -> Arc<str> {
        let name = if std::any::type_name::<K>() == std::any::type_name::<Authority>() {
            "authority"
        } else {
            "key"
        };
        crate::telemetry::keyed_label(base, name, key)
    }

    /// The overflow breaker, made if need be; the caller holds the `inserting` lock.
    fn overflow_locked(&self, _held: &MutexGuard<'_, HashSet<K>>) -> Arc<Breaker> {
        if let Some(b) = self.overflow.load_full() {
            return b;
        }
        let template = self.config.load();
        let name: Arc<str> = Arc::from(format!("{}/{OTHER}", template.name()));
        let mut config = Config::clone(&template);
        config.name = name;
        let b = Arc::new(Breaker::keyed(config, Self::label(template.name(), OTHER)));
        self.overflow.store(Some(b.clone()));
        b
    }

    /// Whether a slot can be freed: only closed breakers with no call in flight may go. A
    /// call holds the breaker (a reference count) until its outcome is recorded, so a breaker
    /// the entry alone holds has none; its outcome would otherwise land in a breaker that no
    /// key uses any more. (A [`CircuitBreakerHandle`] kept elsewhere holds it too.)
    fn evictable(e: &Entry) -> bool {
        e.breaker.state() == State::Closed && Arc::strong_count(&e.breaker) == 1
    }

    fn nanos(&self, t: Instant) -> u64 {
        crate::time::nanos_since(self.epoch, t)
    }

    /// The breaker for `key`, made on first use. With every one of the `max_keys` slots held by
    /// a breaker that is not closed, the shared overflow breaker `<name>/(other)` instead (it is
    /// not listed by [`keys`](Self::keys)).
    pub fn get_or_insert(&self, key: K, now: Instant) -> Arc<Breaker> {
        let n = self.nanos(now);
        let map = self.map.load();
        if let Some(e) = map.get(&key) {
            // Write the timestamp only when it moved by a millisecond: fewer cache-line
            // transfers between cores.
            if n.saturating_sub(e.last_used.load(Relaxed)) > 1_000_000 {
                e.last_used.store(n, Relaxed);
            }
            return e.breaker.clone();
        }
        // Checked before the lock so that a flood of new keys while every slot is open neither
        // queues on the lock nor copies the map.
        if map.len() >= self.max_keys && !map.values().any(|e| Self::evictable(e)) {
            return self.overflow();
        }
        drop(map);
        self.insert(key, n)
    }

    fn insert(&self, key: K, n: u64) -> Arc<Breaker> {
        let mut labelled = self.lock();
        let current = self.map.load_full();
        if let Some(e) = current.get(&key) {
            return e.breaker.clone();
        }
        let mut map = self.without_idle(&current, n);
        if map.len() >= self.max_keys {
            // Full of busy keys: drop the least recently used closed one. Open and half-open
            // breakers stay, or the next call would reach a downstream known to be down.
            let lru = map
                .iter()
                .filter(|(_, e)| Self::evictable(e))
                .min_by_key(|(_, e)| e.last_used.load(Relaxed))
                .map(|(k, _)| k.clone());
            match lru.and_then(|k| map.remove(&k)) {
                Some(e) => e.breaker.retire_metrics(),
                None => {
                    // Idle breakers just dropped (none, as the map was full) must go too.
                    if map.len() != current.len() {
                        self.map.store(Arc::new(map));
                    }
                    return self.overflow_locked(&labelled);
                }
            }
        }
        let template = self.config.load();
        let mut config = Config::clone(&template);
        config.name = Arc::from(format!("{}/{}", template.name(), key));
        // Own labels for the first `max_keys` keys only: a recorder keeps every label it has
        // seen, so churning keys must not mint new ones without end.
        let label = if labelled.contains(&key) || labelled.len() < self.max_keys {
            labelled.insert(key.clone());
            Self::label(template.name(), &key.to_string())
        } else {
            Self::label(template.name(), OTHER)
        };
        let breaker = Arc::new(Breaker::keyed(config, label));
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

    /// Closed breakers unused for the idle timeout are dropped (and leave the state gauges);
    /// open or half-open ones stay, so eviction never lets traffic through to a downstream known
    /// to be failing.
    fn without_idle(&self, map: &HashMap<K, Arc<Entry>>, n: u64) -> HashMap<K, Arc<Entry>> {
        let idle = crate::time::nanos_of(self.idle_timeout);
        map.iter()
            .filter(|(_, e)| {
                let keep =
                    n.saturating_sub(e.last_used.load(Relaxed)) < idle || !Self::evictable(e);
                if !keep {
                    e.breaker.retire_metrics();
                }
                keep
            })
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect()
    }

    /// Drops idle closed breakers now (it also happens whenever a new key arrives).
    pub fn evict_idle(&self, now: Instant) {
        let _one_writer = self.lock();
        let current = self.map.load_full();
        let map = self.without_idle(&current, self.nanos(now));
        if map.len() != current.len() {
            self.map.store(Arc::new(map));
        }
    }

    /// A handle to the breaker of `key`, if it exists. While a handle (or an `Arc<Breaker>`
    /// from [`get_or_insert`](Self::get_or_insert)) is kept, the breaker counts as in use and
    /// is not evicted; drop it when done.
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

    /// Every breaker the family holds now, with its key; the shared overflow breaker
    /// `<name>/(other)`, once made, comes last with no key. For listing, dashboards and
    /// readiness ([`health::Readiness`](crate::health::Readiness) takes the family whole).
    ///
    /// ```
    /// use tokio::time::Instant;
    /// use tower_rampart::circuit_breaker::{CircuitBreakerLayer, Config, State};
    ///
    /// let config = Config::builder().name("api").build()?;
    /// let layer = CircuitBreakerLayer::keyed(config, |host: &String| host.clone());
    /// let breakers = layer.breakers();
    /// breakers.get_or_insert("a.example".to_owned(), Instant::now());
    /// breakers.get_or_insert("b.example".to_owned(), Instant::now());
    /// breakers.get("b.example").unwrap().force_open();
    ///
    /// let mut listed: Vec<_> = breakers
    ///     .snapshots(Instant::now())
    ///     .into_iter()
    ///     .map(|(_, s)| (s.name.to_string(), s.state))
    ///     .collect();
    /// listed.sort_by(|a, b| a.0.cmp(&b.0));
    /// assert_eq!(listed, [
    ///     ("api/a.example".to_string(), State::Closed),
    ///     ("api/b.example".to_string(), State::ForcedOpen),
    /// ]);
    /// # Ok::<_, tower_rampart::ConfigError>(())
    /// ```
    pub fn handles(&self) -> Vec<(Option<K>, CircuitBreakerHandle)> {
        let map = self.map.load();
        let mut out = Vec::with_capacity(map.len() + 1);
        out.extend(map.iter().map(|(k, e)| {
            (
                Some(k.clone()),
                CircuitBreakerHandle::new(e.breaker.clone()),
            )
        }));
        if let Some(b) = self.overflow.load_full() {
            out.push((None, CircuitBreakerHandle::new(b)));
        }
        out
    }

    /// The [`Snapshot`](super::Snapshot) of every breaker the family holds now, at `now`, as
    /// listed by [`handles`](Self::handles).
    pub fn snapshots(&self, now: Instant) -> Vec<(Option<K>, super::Snapshot)> {
        self.handles()
            .into_iter()
            .map(|(k, h)| (k, h.breaker().snapshot(now)))
            .collect()
    }

    /// The template new breakers are built from: the configuration the family was made with
    /// or last [reconfigured](Self::reconfigure) with, under the base name (breakers are named
    /// `<name>/<key>`).
    ///
    /// ```
    /// use tower_rampart::circuit_breaker::{CircuitBreakerLayer, Config};
    ///
    /// let layer = CircuitBreakerLayer::keyed(
    ///     Config::builder().name("api").build()?,
    ///     |host: &String| host.clone(),
    /// );
    /// assert_eq!(layer.breakers().config().name(), "api");
    /// # Ok::<_, tower_rampart::ConfigError>(())
    /// ```
    pub fn config(&self) -> Config {
        Config::clone(&self.config.load())
    }

    /// Applies `config` (named with the base name, as the family's template) to the family.
    ///
    /// - Same window as now: every breaker the family holds, the overflow breaker included, is
    ///   [retuned](Breaker::retune) in place, keeping its state, window contents and name, and
    ///   `config` becomes the template of breakers made from now on. Its name and listeners
    ///   apply to those new breakers only. Returns [`Reconfigured::Retuned`].
    ///   A new threshold of failures in a row is a retune too, as for [`Breaker::retune`]: the
    ///   runs of failures so far count towards it.
    /// - Another window: `config` becomes the template and every breaker is replaced (the old
    ///   ones leave the state gauges, as on eviction). Closed breakers with no call in flight
    ///   are dropped: their keys get new ones at their next call. The others are replaced at
    ///   once by new ones with empty windows in their state (open or half-open opens, an
    ///   operator's forced-open, disabled or metrics-only state stays), so a reload never lets
    ///   traffic through to a host known to be failing. Calls already admitted record into the
    ///   old breakers; one whose outcome opens its old breaker opens the new one too. Keys that
    ///   had their own metric label keep it. Returns [`Reconfigured::Replaced`].
    ///
    /// Listeners may use the family (the new breakers' first events are reported once the
    /// reconfiguration is done and no lock is held).
    ///
    /// ```
    /// use tokio::time::Instant;
    /// use tower_rampart::circuit_breaker::{CircuitBreakerLayer, Config, Reconfigured};
    ///
    /// let config = |size| Config::builder().name("api").count_window(size);
    /// let layer = CircuitBreakerLayer::keyed(config(100).build()?, |host: &String| host.clone());
    /// let breakers = layer.breakers();
    /// breakers.get_or_insert("a.example".to_owned(), Instant::now());
    ///
    /// let tuned = config(100).failure_rate(0.2).build()?;
    /// assert_eq!(breakers.reconfigure(tuned), Reconfigured::Retuned);
    /// assert_eq!(breakers.keys(), ["a.example"]);
    ///
    /// assert_eq!(breakers.reconfigure(config(200).build()?), Reconfigured::Replaced);
    /// assert!(breakers.is_empty());
    /// let b = breakers.get_or_insert("a.example".to_owned(), Instant::now());
    /// assert_eq!(b.name(), "api/a.example");
    /// # Ok::<_, tower_rampart::ConfigError>(())
    /// ```
    pub fn reconfigure(&self, config: Config) -> Reconfigured {
        let successors = {
            // Under the insertion lock no breaker is being made, from the old template or the
            // new.
            let held = self.lock();
            if super::breaker::retunable(self.config.load().window, config.window) {
                for e in self.map.load().values() {
                    // Built from a template with a retunable window: never refused.
                    let _ = e.breaker.retune(&config);
                }
                if let Some(b) = self.overflow.load_full() {
                    let _ = b.retune(&config);
                }
                self.config.store(Arc::new(config));
                return Reconfigured::Retuned;
            }
            self.replace_all(&held, config)
        };
        // The successors' first events, with no lock held: their listeners may use the family.
        for b in successors {
            b.deliver_events();
        }
        Reconfigured::Replaced
    }

    /// Replaces every breaker that is not closed, or has calls in flight, with one of
    /// `config`'s window in its state, and drops the others; returns the successors, whose
    /// events are still to be reported.
    fn replace_all(&self, held: &MutexGuard<'_, HashSet<K>>, config: Config) -> Vec<Arc<Breaker>> {
        let base = config.name.clone();
        self.config.store(Arc::new(config.clone()));
        let now = Instant::now();
        let mut successors = Vec::new();
        // A breaker of the new window that takes over from `old` (see `Breaker::hand_over`).
        let mut successor = |old: &Breaker, name: Arc<str>, label: Arc<str>| {
            old.retire_metrics();
            let mut c = config.clone();
            c.name = name;
            let b = Arc::new(Breaker::keyed(c, label));
            old.hand_over(&b, now);
            successors.push(b.clone());
            b
        };
        let old = self.map.swap(Arc::new(HashMap::new()));
        let mut kept = HashMap::new();
        for (key, e) in old.iter() {
            // Closed breakers with no call in flight go (the next call makes a new one); the
            // others are replaced in their state, or a reload would let traffic through to a
            // host known to be down, or lose the outcomes of calls in flight.
            if Self::evictable(e) {
                e.breaker.retire_metrics();
                continue;
            }
            let name: Arc<str> = Arc::from(format!("{base}/{key}"));
            let label = if held.contains(key) {
                Self::label(&base, &key.to_string())
            } else {
                Self::label(&base, OTHER)
            };
            let entry = Entry {
                breaker: successor(&e.breaker, name, label),
                last_used: AtomicU64::new(e.last_used.load(Relaxed)),
            };
            kept.insert(key.clone(), Arc::new(entry));
        }
        self.map.store(Arc::new(kept));
        if let Some(b) = self.overflow.swap(None) {
            if b.state() != State::Closed || Arc::strong_count(&b) > 1 {
                let name: Arc<str> = Arc::from(format!("{base}/{OTHER}"));
                let label = Self::label(&base, OTHER);
                self.overflow.store(Some(successor(&b, name, label)));
            } else {
                b.retire_metrics();
            }
        }
        successors
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
    pub(crate) fn max_keys(&self) -> usize {
        self.max_keys
    }

    pub(crate) fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }
}
