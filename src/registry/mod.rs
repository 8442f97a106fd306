//! Named policies (feature `serde`): one file describes defaults and a policy per downstream;
//! layers are built by name and follow the file when it is reloaded.
//!
//! ```
//! use tower_rampart::registry::Registry;
//!
//! # fn main() -> Result<(), tower_rampart::config::Error> {
//! let registry = Registry::from_value(serde_json::json!({
//!     "defaults": {"timeout": {"total": "10s", "attempt": "2s"}, "retry": {"max_attempts": 3}},
//!     "policies": {
//!         "payment-gateway": {
//!             "critical": true,
//!             "circuit_breaker": {"failure_threshold": 5, "sliding_window_size": 10},
//!         },
//!         "search": {"retry": {"max_attempts": 5}},
//!     },
//! }))?;
//! // The standard client stack, a breaker, a timeout: by name, checked now.
//! let client = registry.client("payment-gateway")?;
//! let breaker = registry.circuit_breaker("payment-gateway")?;
//! let timeout = registry.timeout("search")?;
//! assert!(registry.client("paymnet-gateway").is_err(), "an unknown name fails at start-up");
//! # let _ = (client, breaker, timeout);
//! # Ok(())
//! # }
//! ```
//!
//! # Live reload
//!
//! [`Registry::reload`] checks a new file whole and applies it to every layer already built
//! from the registry, without rebuilding services:
//!
//! - breakers take the new thresholds, open durations and probe counts in place, keeping their
//!   state (window contents, open or closed); a changed *window* (its kind or size) replaces the
//!   breaker with one whose window is empty, in the old one's state (an open breaker stays
//!   open, an operator's forced-open state stays);
//! - retry layers take the new limits, backoff and budget (a budget with unchanged settings
//!   keeps its state); a call keeps the policy it started with, so none sees half of one;
//! - retry classifiers take the new error names (`retry_on`, `never_retry`);
//! - timeouts take the new durations for calls that start afterwards;
//! - chaos sections switch fault injection on, off, or to another fault.
//!
//! A file that does not load or check changes nothing, and the error says why, with the path
//! of the field. So does a file that removes a policy layers were built from (a policy whose
//! only build failed has nothing built from it, and may go). A file that changes no policy's
//! settings over the defaults (the same file saved again, or reformatted) does nothing and keeps
//! the generation. Each reload emits a [`ReloadEvent`] ([`ReloadOutcome::Applied`],
//! [`Unchanged`](ReloadOutcome::Unchanged) or [`Rejected`](ReloadOutcome::Rejected)) and counts
//! in [`metric_names::RELOADS`]. Listeners run after the registry's lock is released, so they
//! may read the registry (its [`generation`](Registry::generation), its
//! [`settings`](Registry::settings)).
//!
//! Each layer switches atomically, but the layers of one stack switch one after the other: a
//! call that starts during a reload may run with the new total timeout and the previous retry
//! settings, never with half of either.

mod build;

pub use build::RegistryBreakers;
mod reload;

use std::{
    collections::BTreeMap,
    fmt,
    sync::{Arc, Mutex, PoisonError},
};

use crate::{
    circuit_breaker::LiveBreaker,
    classify::{ErrorNames, LiveNames},
    config::{Error, PolicySettings, RegistrySettings},
    pipeline::{ClientReload, StandardClientLayer},
    retry::{RetryLayer, RetryReload},
    timeout::{TimeoutLayer, TimeoutReload},
};

pub use reload::{ReloadEvent, ReloadOutcome, metric_names};

type Listener = Arc<dyn Fn(&ReloadEvent<'_>) + Send + Sync>;

/// Named policies over shared defaults, built into layers by name and reloaded live. Cheap to
/// clone: clones share the policies and the layers built from them.
///
/// Every layer built for one name shares its state: two calls to
/// [`circuit_breaker("payments")`](Self::circuit_breaker) give layers of one breaker, as
/// Resilience4j's registries do.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    names: ErrorNames,
    listeners: Box<[Listener]>,
    /// Taken to build by name, to reload and to list breakers; never by a call.
    state: Mutex<State>,
}

struct State {
    settings: RegistrySettings,
    generation: u64,
    built: BTreeMap<String, Built>,
}

/// What was built for one policy: what a reload must reach.
#[derive(Default)]
struct Built {
    breaker: Option<LiveBreaker>,
    retry: Option<(RetryLayer, RetryReload)>,
    timeout: Option<(TimeoutLayer, TimeoutReload)>,
    client: Option<(StandardClientLayer, ClientReload)>,
    #[cfg(feature = "chaos")]
    chaos: Option<crate::chaos::ChaosLayer>,
    /// The retry error names of the policy's classifiers, replaced on reload.
    names: Option<LiveNames>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state();
        f.debug_struct("Registry")
            .field("generation", &state.generation)
            .field(
                "policies",
                &state.settings.policies.keys().collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Builds a [`Registry`]: the error names its files may use, and reload listeners.
///
/// ```
/// use tower_rampart::{classify::ErrorNames, registry::Registry};
///
/// let registry = Registry::builder()
///     .error_names(ErrorNames::default())
///     .on_reload(|e| println!("configuration generation {}: {:?}", e.generation, e.outcome))
///     .from_value(serde_json::json!({"policies": {"search": {}}}))?;
/// assert_eq!(registry.policy_names(), ["search"]);
/// # Ok::<_, tower_rampart::config::Error>(())
/// ```
#[must_use]
#[derive(Default)]
pub struct RegistryBuilder {
    names: ErrorNames,
    listeners: Vec<Listener>,
}

impl fmt::Debug for RegistryBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryBuilder").finish_non_exhaustive()
    }
}

impl RegistryBuilder {
    /// The error names `retry_on` / `never_retry` lists may use (the standard ones unless
    /// set): register your own error types here.
    pub fn error_names(mut self, names: ErrorNames) -> Self {
        self.names = names;
        self
    }

    /// Calls `listener` after every reload, applied, unchanged or rejected, on the thread
    /// that reloaded, with no lock of the registry held (it may read the registry).
    pub fn on_reload(
        mut self,
        listener: impl Fn(&ReloadEvent<'_>) + Send + Sync + 'static,
    ) -> Self {
        self.listeners.push(Arc::new(listener));
        self
    }

    /// The registry of `settings`, checked whole.
    ///
    /// # Errors
    ///
    /// The first [`Error`], with the path of the field at fault.
    pub fn load(self, settings: RegistrySettings) -> Result<Registry, Error> {
        settings.check(&self.names)?;
        Ok(Registry {
            inner: Arc::new(Inner {
                names: self.names,
                listeners: self.listeners.into(),
                state: Mutex::new(State {
                    settings,
                    generation: 1,
                    built: BTreeMap::new(),
                }),
            }),
        })
    }

    /// The registry of a JSON value.
    ///
    /// # Errors
    ///
    /// As [`load`](Self::load), and for fields that do not fit the settings.
    pub fn from_value(self, value: serde_json::Value) -> Result<Registry, Error> {
        let settings = crate::config::load::document(value, crate::config::load::REGISTRY)?;
        self.load(settings)
    }

    /// The registry of a YAML document (feature `yaml`).
    ///
    /// # Errors
    ///
    /// As [`from_value`](Self::from_value), and for YAML syntax errors.
    #[cfg(feature = "yaml")]
    pub fn from_yaml(self, text: &str) -> Result<Registry, Error> {
        self.from_value(crate::config::load::yaml(
            text,
            crate::config::load::REGISTRY,
        )?)
    }

    /// The registry of a TOML document (feature `toml`).
    ///
    /// # Errors
    ///
    /// As [`from_value`](Self::from_value), and for TOML syntax errors.
    #[cfg(feature = "toml")]
    pub fn from_toml(self, text: &str) -> Result<Registry, Error> {
        self.from_value(crate::config::load::toml(
            text,
            crate::config::load::REGISTRY,
        )?)
    }
}

impl Registry {
    /// A builder: error names and reload listeners.
    pub fn builder() -> RegistryBuilder {
        RegistryBuilder::default()
    }

    /// The registry of `settings`, with the standard error names.
    ///
    /// # Errors
    ///
    /// The first [`Error`], with the path of the field at fault.
    pub fn from_settings(settings: RegistrySettings) -> Result<Registry, Error> {
        Registry::builder().load(settings)
    }

    /// The registry of a JSON value.
    ///
    /// # Errors
    ///
    /// As [`from_settings`](Self::from_settings), and for fields that do not fit.
    pub fn from_value(value: serde_json::Value) -> Result<Registry, Error> {
        Registry::builder().from_value(value)
    }

    /// The registry of a YAML document (feature `yaml`).
    ///
    /// # Errors
    ///
    /// As [`from_value`](Self::from_value), and for YAML syntax errors.
    #[cfg(feature = "yaml")]
    pub fn from_yaml(text: &str) -> Result<Registry, Error> {
        Registry::builder().from_yaml(text)
    }

    /// The registry of a TOML document (feature `toml`).
    ///
    /// # Errors
    ///
    /// As [`from_value`](Self::from_value), and for TOML syntax errors.
    #[cfg(feature = "toml")]
    pub fn from_toml(text: &str) -> Result<Registry, Error> {
        Registry::builder().from_toml(text)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is replaced whole or not at all, so a panic elsewhere leaves it whole.
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The names of the policies, sorted.
    pub fn policy_names(&self) -> Vec<String> {
        self.state().settings.policies.keys().cloned().collect()
    }

    /// The policy `name` over the defaults, as in force now.
    ///
    /// # Errors
    ///
    /// An [`Error`] when there is no such policy.
    pub fn policy(&self, name: &str) -> Result<PolicySettings, Error> {
        resolve(&self.state().settings, name)
    }

    /// How many configurations have been in force: 1 after loading, one more per applied
    /// reload (a reload that changes nothing keeps it).
    pub fn generation(&self) -> u64 {
        self.state().generation
    }

    /// The settings in force.
    pub fn settings(&self) -> RegistrySettings {
        self.state().settings.clone()
    }
}

/// The policy `name` over the defaults, or an error listing the known names.
fn resolve(settings: &RegistrySettings, name: &str) -> Result<PolicySettings, Error> {
    settings.resolved(name).ok_or_else(|| {
        let known: Vec<&str> = settings.policies.keys().map(String::as_str).collect();
        Error::at(
            format!("policies.{name}"),
            format!("no such policy (known: {})", known.join(", ")),
        )
    })
}
