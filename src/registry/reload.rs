//! Live reload: check a new file whole, then apply it to every layer built from the registry.

use super::{Registry, State, build};
use crate::config::{Error, RegistrySettings, error::join};

/// Metric names of the registry.
pub mod metric_names {
    /// Counter of reloads, labelled `result` = `applied` | `unchanged` | `rejected`.
    pub const RELOADS: &str = "rampart_registry_reloads_total";
    /// Gauge of the generation in force (1 after loading, one more per applied reload).
    pub const GENERATION: &str = "rampart_registry_generation";
}

/// Help text of the registry's metrics.
#[cfg(feature = "metrics")]
const HELP: &[crate::telemetry::Help] = &[
    crate::telemetry::Help::counter(
        metric_names::RELOADS,
        "Configuration reloads of a resilience registry, by result (applied, unchanged, rejected).",
    ),
    crate::telemetry::Help::gauge(
        metric_names::GENERATION,
        "Generation of the resilience configuration in force (1 after loading, one more per applied reload).",
    ),
];

/// A reload, applied or rejected (see [`RegistryBuilder::on_reload`](super::RegistryBuilder::on_reload)).
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct ReloadEvent<'a> {
    /// The generation in force after the reload (the same as before unless applied).
    pub generation: u64,
    /// What happened.
    pub outcome: ReloadOutcome<'a>,
}

/// What a reload did.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum ReloadOutcome<'a> {
    /// The new file is in force.
    Applied {
        /// The policies whose settings changed (over the defaults), sorted.
        changed: &'a [String],
    },
    /// The new file says what the settings in force say (for every policy, over the
    /// defaults): nothing was done and the generation stays.
    Unchanged,
    /// The new file was refused; nothing changed.
    Rejected {
        /// Why.
        error: &'a Error,
    },
}

/// A change to make once the whole file is known to be good.
type Action = Box<dyn FnOnce() + Send>;

/// The policies added, removed, or whose settings over the defaults differ, sorted.
fn changed(old: &RegistrySettings, new: &RegistrySettings) -> Vec<String> {
    let mut names: Vec<&String> = old.policies.keys().chain(new.policies.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter(|n| old.resolved(n) != new.resolved(n))
        .cloned()
        .collect()
}

impl Registry {
    /// Replaces the settings in force with `settings`, checked whole, and applies them to
    /// every layer built from the registry (see the [module documentation](super) for what
    /// changes in place). Returns the generation in force: one more than before, or the same
    /// when the file changes no policy (the same settings for every policy over the defaults,
    /// however written): [`ReloadOutcome::Unchanged`].
    ///
    /// ```
    /// use tower_rampart::registry::Registry;
    ///
    /// # fn main() -> Result<(), tower_rampart::config::Error> {
    /// let registry = Registry::from_value(serde_json::json!({
    ///     "policies": {"search": {"timeout": {"total": "2s"}}},
    /// }))?;
    /// let timeout = registry.timeout("search")?;
    /// registry.reload_value(serde_json::json!({
    ///     "policies": {"search": {"timeout": {"total": "5s"}}},
    /// }))?;
    /// assert_eq!(timeout.timeout(), std::time::Duration::from_secs(5));
    /// // A bad file changes nothing and says why.
    /// let err = registry
    ///     .reload_value(serde_json::json!({"policies": {"search": {"timeout": {"total": "0s"}}}}))
    ///     .unwrap_err();
    /// assert_eq!(err.to_string(), "policies.search.timeout.total: must be above zero");
    /// assert_eq!(registry.generation(), 2);
    /// // The same settings again change nothing, and keep the generation.
    /// let again = registry.reload_value(serde_json::json!({
    ///     "policies": {"search": {"timeout": {"total": "5s"}}},
    /// }))?;
    /// assert_eq!(again, 2);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// An [`Error`] with the path of the field at fault when the file does not check, removes a
    /// policy layers were built from, or takes away a setting such a layer needs (its
    /// `timeout.total`).
    pub fn reload(&self, settings: RegistrySettings) -> Result<u64, Error> {
        // Checked whole before anything else, so that a file equal in effect is still refused
        // when it does not check (a bad default every policy overrides).
        if let Err(error) = settings.check(&self.inner.names) {
            return Err(self.rejected(error));
        }
        let mut state = self.state();
        let generation = state.generation;
        let changed = changed(&state.settings, &settings);
        if changed.is_empty() {
            // Same policies, each the same over the defaults: every layer is as the file says.
            // Kept whole, so `settings()` shows the file as written now.
            state.settings = settings;
            drop(state);
            self.emit(generation, ReloadOutcome::Unchanged);
            return Ok(generation);
        }
        let actions = match self.plan(&state, &settings) {
            Ok(actions) => actions,
            Err(error) => {
                // Listeners may read the registry: never call them under its lock.
                drop(state);
                self.emit(generation, ReloadOutcome::Rejected { error: &error });
                return Err(error);
            }
        };
        for action in actions {
            action();
        }
        state.settings = settings;
        state.generation += 1;
        let generation = state.generation;
        drop(state);
        self.emit(generation, ReloadOutcome::Applied { changed: &changed });
        Ok(generation)
    }

    /// [`reload`](Self::reload) from a JSON value; a value that does not fit is rejected the
    /// same way (event and metric included).
    ///
    /// # Errors
    ///
    /// As [`reload`](Self::reload).
    pub fn reload_value(&self, value: serde_json::Value) -> Result<u64, Error> {
        match crate::config::load::document(value, crate::config::load::REGISTRY) {
            Ok(settings) => self.reload(settings),
            Err(error) => Err(self.rejected(error)),
        }
    }

    /// [`reload`](Self::reload) from a YAML document (feature `yaml`).
    ///
    /// # Errors
    ///
    /// As [`reload`](Self::reload), and for YAML syntax errors.
    #[cfg(feature = "yaml")]
    pub fn reload_yaml(&self, text: &str) -> Result<u64, Error> {
        match crate::config::load::yaml(text, crate::config::load::REGISTRY) {
            Ok(value) => self.reload_value(value),
            Err(error) => Err(self.rejected(error)),
        }
    }

    /// [`reload`](Self::reload) from a TOML document (feature `toml`).
    ///
    /// # Errors
    ///
    /// As [`reload`](Self::reload), and for TOML syntax errors.
    #[cfg(feature = "toml")]
    pub fn reload_toml(&self, text: &str) -> Result<u64, Error> {
        match crate::config::load::toml(text, crate::config::load::REGISTRY) {
            Ok(value) => self.reload_value(value),
            Err(error) => Err(self.rejected(error)),
        }
    }

    fn rejected(&self, error: Error) -> Error {
        let generation = self.generation();
        self.emit(generation, ReloadOutcome::Rejected { error: &error });
        error
    }

    fn emit(&self, generation: u64, outcome: ReloadOutcome<'_>) {
        #[cfg(feature = "metrics")]
        {
            let result = match outcome {
                ReloadOutcome::Applied { .. } => "applied",
                ReloadOutcome::Unchanged => "unchanged",
                ReloadOutcome::Rejected { .. } => "rejected",
            };
            // Made per reload (rare), so a recorder installed late is found; described each time.
            crate::telemetry::describe(HELP);
            metrics::counter!(metric_names::RELOADS, "result" => result).increment(1);
            metrics::gauge!(metric_names::GENERATION).set(generation as f64);
        }
        #[cfg(feature = "tracing")]
        match outcome {
            ReloadOutcome::Applied { changed } => {
                tracing::info!(generation, ?changed, "resilience configuration reloaded");
            }
            ReloadOutcome::Unchanged => {
                tracing::info!(generation, "resilience configuration reloaded: no change");
            }
            ReloadOutcome::Rejected { error } => {
                tracing::warn!(generation, %error, "resilience configuration rejected");
            }
        }
        let event = ReloadEvent {
            generation,
            outcome,
        };
        for l in self.inner.listeners.iter() {
            l(&event);
        }
    }

    /// Checks `new` (itself checked) against everything built, and returns the changes to make. Nothing is
    /// changed here, so an error leaves every layer as it was.
    fn plan(&self, state: &State, new: &RegistrySettings) -> Result<Vec<Action>, Error> {
        let mut actions: Vec<Action> = Vec::new();
        for (name, built) in &state.built {
            let p = build::path(name);
            let policy = new.resolved(name).ok_or_else(|| {
                Error::at(
                    p.clone(),
                    "layers built from this policy are running: it cannot be removed (restart to remove it)",
                )
            })?;
            if let Some(lists) = &built.names {
                let (on, never) = policy.retry_name_sets_at(&self.inner.names, &p)?;
                let lists = lists.clone();
                actions.push(Box::new(move || lists.set(on, never)));
            }
            if let Some(breaker) = &built.breaker {
                let config = policy.breaker_config(build::breaker_name(&policy, name), &p)?;
                let breaker = breaker.clone();
                actions.push(Box::new(move || {
                    breaker.reconfigure(config);
                }));
            }
            if let Some((_, reload)) = &built.retry {
                let builder = build::retry_builder(&policy, name)?;
                builder.check().map_err(|e| policy.retry_refused(&p, &e))?;
                let reload = reload.clone();
                actions.push(Box::new(move || {
                    let _checked_above = reload.apply(builder);
                }));
            }
            if let Some((_, reload)) = &built.timeout {
                let section = join(&p, "timeout");
                let total = policy
                    .timeout
                    .clone()
                    .unwrap_or_default()
                    .layer_at(&section)?
                    .timeout();
                let reload = reload.clone();
                actions.push(Box::new(move || {
                    let _checked_above = reload.set(total);
                }));
            }
            if let Some((_, reload)) = &built.client {
                let parts = build::client_parts(&policy, name)?;
                parts
                    .retry
                    .check()
                    .map_err(|e| policy.retry_refused(&p, &e))?;
                let reload = reload.clone();
                actions.push(Box::new(move || {
                    let _checked_above = reload.apply_parts(parts);
                }));
            }
            #[cfg(feature = "chaos")]
            if let Some(layer) = &built.chaos {
                let config = build::chaos_config(&policy, name)?;
                let handle = layer.handle();
                actions.push(Box::new(move || handle.apply(&config)));
            }
        }
        Ok(actions)
    }
}
