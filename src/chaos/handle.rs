//! The state one configured layer shares with every service it made, and the handle to steer it.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
};

use arc_swap::ArcSwap;

use super::{Config, Fault, Injected, config::check_rate};
use crate::ConfigError;

/// Metric names, all labelled with `chaos` (the layer's name).
pub mod metric_names {
    /// Counter of injected faults, labelled `kind` = `latency` | `error` | `http` | `grpc` |
    /// `abort` ([`Fault::kind`](crate::chaos::Fault::kind)).
    pub const INJECTED: &str = "rampart_chaos_injected_total";
}

/// The settings in force, swapped whole so a call never sees half of an update.
struct Settings {
    config: Config,
    /// Inject when the draw's top 53 bits are below this (`rate * 2^53`).
    threshold: u64,
}

impl Settings {
    fn new(config: Config) -> Arc<Self> {
        // Exact for every rate: 2^53 is the f64 mantissa's range, and rate 1 gives 2^53, above
        // every 53-bit draw.
        let threshold = (config.rate * (1u64 << 53) as f64) as u64;
        Arc::new(Settings { config, threshold })
    }
}

pub(crate) struct Shared {
    /// Mirrors `settings.config.enabled`: the one load a disabled layer costs.
    enabled: AtomicBool,
    settings: ArcSwap<Settings>,
    /// Decisions made: the index of the next draw of the random source.
    draws: AtomicU64,
    injected: AtomicU64,
    name: Arc<str>,
    /// Serialises the handle's updates (never taken by a call).
    update: Mutex<()>,
    /// Bound at the first injection that finds a recorder (see `crate::telemetry`).
    #[cfg(feature = "metrics")]
    counters: crate::telemetry::Lazy<[metrics::Counter; 5]>,
}

/// Help text of the chaos layer's metric.
#[cfg(feature = "metrics")]
const HELP: &[crate::telemetry::Help] = &[crate::telemetry::Help::counter(
    metric_names::INJECTED,
    "Faults a chaos layer injected, by kind (latency, error, http, grpc, abort).",
)];

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chaos")
            .field("name", &self.name)
            .field("enabled", &self.enabled.load(Relaxed))
            .field("injected", &self.injected.load(Relaxed))
            .finish_non_exhaustive()
    }
}

/// The `n`-th output of SplitMix64 seeded with `seed`: a counter-based random source, so
/// concurrent calls need one shared counter and no lock.
#[inline]
pub(crate) fn draw(seed: u64, n: u64) -> u64 {
    let mut z = seed.wrapping_add(n.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Shared {
    #[cfg(feature = "metrics")]
    fn make_counters(&self) -> [metrics::Counter; 5] {
        ["latency", "error", "http", "grpc", "abort"].map(|kind| {
            metrics::counter!(metric_names::INJECTED, "chaos" => self.name.to_string(), "kind" => kind)
        })
    }

    pub(crate) fn new(config: Config) -> Arc<Self> {
        let name = config.name.clone();
        #[cfg(feature = "metrics")]
        let counters = crate::telemetry::Lazy::new();
        let shared = Arc::new(Shared {
            enabled: AtomicBool::new(config.enabled),
            settings: ArcSwap::new(Settings::new(config)),
            draws: AtomicU64::new(0),
            injected: AtomicU64::new(0),
            name,
            update: Mutex::new(()),
            #[cfg(feature = "metrics")]
            counters,
        });
        // Bound at once when a recorder exists already, as handles made here always were.
        #[cfg(feature = "metrics")]
        shared.counters.bind_now(HELP, || shared.make_counters());
        shared
    }

    /// Whether to inject into this call, and what: `None` at the cost of one relaxed load when
    /// the layer is disabled; otherwise the predicate, then one draw of the random source.
    #[inline]
    pub(crate) fn decide(&self, matches: impl FnOnce() -> bool) -> Option<Injected> {
        if !self.enabled.load(Relaxed) {
            return None;
        }
        self.decide_enabled(matches)
    }

    fn decide_enabled(&self, matches: impl FnOnce() -> bool) -> Option<Injected> {
        let s = self.settings.load();
        if !s.config.enabled || s.threshold == 0 || !matches() {
            return None;
        }
        let n = self.draws.fetch_add(1, Relaxed);
        if draw(s.config.seed, n) >> 11 >= s.threshold {
            return None;
        }
        self.injected.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        if let Some(c) = self.counters.get_or_bind(HELP, || self.make_counters()) {
            c[s.config.fault.kind_index()].increment(1);
        }
        Some(Injected::new(s.config.fault.clone(), self.name.clone()))
    }

    fn modify(&self, f: impl FnOnce(&mut Config)) {
        let _guard = self.update.lock().unwrap_or_else(|e| e.into_inner());
        let mut config = self.settings.load().config.clone();
        f(&mut config);
        let enabled = config.enabled;
        self.settings.store(Settings::new(config));
        self.enabled.store(enabled, Relaxed);
    }
}

/// Steers a [`ChaosLayer`](super::ChaosLayer) at run time: on and off, the injection rate, the
/// fault. Get it with [`ChaosLayer::handle`](super::ChaosLayer::handle). Cheap to clone; every
/// clone steers every service the layer made (all its clones and all its `Layer::layer` calls).
///
/// An update is swapped in whole: a call sees the settings before it or after it, never a mix.
///
/// ```
/// use http::StatusCode;
/// use tower_rampart::chaos::{ChaosLayer, Config, Fault};
///
/// let layer = ChaosLayer::new(Config::builder().fault(Fault::Error).build()?);
/// let handle = layer.handle();
/// assert!(!handle.is_enabled()); // off unless enabled
/// handle.set_fault(Fault::http(StatusCode::SERVICE_UNAVAILABLE))?;
/// handle.set_injection_rate(0.3)?;
/// handle.enable();
/// assert!(handle.is_enabled());
/// assert_eq!(handle.config().injection_rate(), 0.3);
/// assert!(handle.set_injection_rate(2.0).is_err());
/// handle.disable();
/// # Ok::<_, tower_rampart::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct ChaosHandle {
    pub(crate) shared: Arc<Shared>,
}

impl ChaosHandle {
    /// The layer's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Starts injecting (into the configured fraction of matching calls).
    pub fn enable(&self) {
        self.shared.modify(|c| c.enabled = true);
    }

    /// Stops injecting: every call passes through, at the cost of one relaxed atomic load.
    /// Calls already delayed or aborted are not affected.
    pub fn disable(&self) {
        self.shared.modify(|c| c.enabled = false);
    }

    /// Whether the layer injects.
    pub fn is_enabled(&self) -> bool {
        self.shared.enabled.load(Relaxed)
    }

    /// Sets the fraction of calls injected.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when `rate` is not within 0..=1; nothing changes.
    pub fn set_injection_rate(&self, rate: f64) -> Result<(), ConfigError> {
        check_rate(rate)?;
        self.shared.modify(|c| c.rate = rate);
        Ok(())
    }

    /// Sets the fault injected.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when the fault is invalid ([`Fault::validate`]); nothing changes.
    pub fn set_fault(&self, fault: Fault) -> Result<(), ConfigError> {
        fault.validate()?;
        self.shared.modify(|c| c.fault = fault);
        Ok(())
    }

    /// Replaces the fault, rate, switch and seed with `config`'s, at once (a registry's reload).
    /// The layer keeps its name, which labels its metrics. The random source continues its
    /// count: the next decision is draw `n` of the new seed.
    pub fn apply(&self, config: &Config) {
        self.shared.modify(|c| {
            let name = c.name.clone();
            *c = config.clone();
            c.name = name;
        });
    }

    /// The settings in force.
    pub fn config(&self) -> Config {
        self.shared.settings.load().config.clone()
    }

    /// Faults injected since the layer was made.
    pub fn injected(&self) -> u64 {
        self.shared.injected.load(Relaxed)
    }

    /// Decisions made since the layer was made: calls that found the layer enabled, with a
    /// rate above zero, and matched the predicate.
    pub fn decisions(&self) -> u64 {
        self.shared.draws.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(rate: f64, seed: u64) -> Arc<Shared> {
        Shared::new(
            Config::builder()
                .injection_rate(rate)
                .enabled(true)
                .seed(seed)
                .build()
                .unwrap(),
        )
    }

    #[test]
    fn rate_is_respected_and_reproducible() {
        let count = |seed| {
            let s = shared(0.3, seed);
            (0..10_000).filter(|_| s.decide(|| true).is_some()).count()
        };
        let a = count(7);
        assert_eq!(a, count(7));
        // Mean 3000, standard deviation 45.8: six deviations either side.
        assert!((2725..=3275).contains(&a), "{a}");
        let all = shared(1.0, 1);
        assert!((0..1000).all(|_| all.decide(|| true).is_some()));
        let none = shared(0.0, 1);
        assert!((0..1000).all(|_| none.decide(|| panic!("not asked")).is_none()));
    }

    #[test]
    fn disabled_asks_nothing_and_draws_nothing() {
        let s = shared(1.0, 1);
        let handle = ChaosHandle { shared: s.clone() };
        handle.disable();
        assert!(s.decide(|| panic!("not asked")).is_none());
        assert_eq!(handle.decisions(), 0);
        handle.enable();
        assert!(s.decide(|| false).is_none());
        assert_eq!(handle.decisions(), 0);
        assert!(s.decide(|| true).is_some());
        assert_eq!((handle.decisions(), handle.injected()), (1, 1));
    }

    #[cfg(feature = "metrics")]
    #[test]
    fn counts_by_kind() {
        let recorder = metrics_util::debugging::DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let s = metrics::with_local_recorder(&recorder, || shared(1.0, 1));
        for _ in 0..3 {
            s.decide(|| true);
        }
        let found = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .find(|(key, ..)| {
                let key = key.key();
                key.name() == metric_names::INJECTED
                    && key
                        .labels()
                        .any(|l| l.key() == "kind" && l.value() == "error")
            })
            .map(|(.., value)| value);
        assert_eq!(found, Some(metrics_util::debugging::DebugValue::Counter(3)));
    }
}
