//! Building layers by name, and listing the breakers they hold for readiness.

use std::time::Duration;

use super::{Built, Registry, State, resolve};
use crate::{
    backoff::Backoff,
    circuit_breaker::{CircuitBreakerHandle, CircuitBreakerLayer, LiveBreaker},
    classify::{AnyError, ByName, ErrorNames, HttpStatus, LiveNames},
    config::{Error, PolicySettings, error::join},
    health::{BreakerSource, OpenBreakers, Readiness},
    mode::ReturnError,
    pipeline::{ClientParts, StandardClientLayer, default_breaker, default_retry},
    replay::HttpReplay,
    retry::RetryLayer,
    timeout::TimeoutLayer,
};

/// The client pipeline's timeouts when the policy does not set them.
const CLIENT_TOTAL: Duration = Duration::from_secs(30);
const CLIENT_ATTEMPT: Duration = Duration::from_secs(10);

pub(super) fn path(name: &str) -> String {
    format!("policies.{name}")
}

/// The breaker's name: the section's `name`/`service`, else the policy's.
pub(super) fn breaker_name<'a>(policy: &'a PolicySettings, name: &'a str) -> &'a str {
    policy
        .circuit_breaker
        .as_ref()
        .and_then(|b| b.breaker_name())
        .unwrap_or(name)
}

impl State {
    /// Runs `build` with the policy in force and the entry of what was built from it. A build
    /// that fails leaves nothing behind: the error names it shares are dropped again if it set
    /// them, and an entry left empty goes, so that a failed build never pins its policy (a
    /// reload may remove a policy only while nothing was built from it).
    fn build<T>(
        &mut self,
        name: &str,
        build: impl FnOnce(&PolicySettings, &mut Built) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let policy = resolve(&self.settings, name)?;
        let built = self.built.entry(name.to_owned()).or_default();
        let had_names = built.names.is_some();
        let out = build(&policy, built);
        if out.is_err() {
            if !had_names {
                built.names = None;
            }
            if built.is_empty() {
                self.built.remove(name);
            }
        }
        out
    }
}

impl Built {
    /// Whether nothing was built.
    fn is_empty(&self) -> bool {
        #[cfg(feature = "chaos")]
        if self.chaos.is_some() {
            return false;
        }
        self.breaker.is_none()
            && self.retry.is_none()
            && self.timeout.is_none()
            && self.client.is_none()
            && self.names.is_none()
    }
}

/// A retry layer's settings from `policy`, over the retry builder's defaults.
pub(super) fn retry_builder(
    policy: &PolicySettings,
    name: &str,
) -> Result<crate::retry::Builder, Error> {
    policy.retry_builder_over(
        RetryLayer::builder().name(name),
        &Backoff::default(),
        &path(name),
    )
}

/// The client stack's parts from `policy`, over the pipeline's defaults.
pub(super) fn client_parts(policy: &PolicySettings, name: &str) -> Result<ClientParts, Error> {
    let p = path(name);
    let timeouts = policy.timeout.clone().unwrap_or_default();
    let total = timeouts.total.unwrap_or(CLIENT_TOTAL);
    let attempt = timeouts.attempt.unwrap_or(CLIENT_ATTEMPT.min(total));
    ClientParts::check_timeouts(total, attempt)
        .map_err(|e| Error::refused(&join(&p, "timeout"), &e, str::to_owned))?;
    let retry = policy
        .retry_builder_over(
            default_retry(name, attempt),
            &Backoff::exponential(Duration::from_secs(2)),
            &p,
        )?
        .attempt_timeout(attempt);
    let breaker = policy.breaker_config_over(default_breaker(breaker_name(policy, name)), &p)?;
    Ok(ClientParts {
        total,
        attempt,
        retry,
        breaker,
    })
}

impl Registry {
    /// A circuit breaker layer for policy `name`, in error mode with
    /// [`AnyError`]; chain [`classify`](CircuitBreakerLayer::classify) and
    /// [`respond_http`](CircuitBreakerLayer::respond_http) as for any breaker layer. Every
    /// layer built for `name` shares one breaker.
    ///
    /// # Errors
    ///
    /// An [`Error`] when there is no such policy.
    pub fn circuit_breaker(
        &self,
        name: &str,
    ) -> Result<CircuitBreakerLayer<AnyError, ReturnError, LiveBreaker>, Error> {
        self.state().build(name, |policy, built| {
            if built.breaker.is_none() {
                let config = policy.breaker_config(breaker_name(policy, name), &path(name))?;
                built.breaker = Some(LiveBreaker::new(config));
            }
            Ok(CircuitBreakerLayer::live(
                built.breaker.clone().expect("set above"),
            ))
        })
    }

    /// A retry layer for policy `name`, classifying with the policy's error names over `base`
    /// (e.g. [`AnyError`], [`HttpStatus::retryable`], `TonicStatus`). Every retry layer built
    /// for `name` shares one policy and budget.
    ///
    /// # Errors
    ///
    /// An [`Error`] when there is no such policy.
    pub fn retry<C>(&self, name: &str, base: C) -> Result<RetryLayer<ByName<C>>, Error> {
        self.state().build(name, |policy, built| {
            let lists = live_names(built, policy, &self.inner.names, name)?;
            if built.retry.is_none() {
                let layer = retry_builder(policy, name)?
                    .build()
                    .map_err(|e| policy.retry_refused(&path(name), &e))?;
                built.retry = Some(layer.reloadable());
            }
            let (layer, _) = built.retry.as_ref().expect("set above");
            Ok(layer.clone().classify(ByName::live(base, lists)))
        })
    }

    /// A retry layer for HTTP clients of policy `name`: the policy's error names over
    /// [`HttpStatus::retryable`], requests copied by [`HttpReplay`] (methods safe to repeat).
    ///
    /// # Errors
    ///
    /// An [`Error`] when there is no such policy.
    pub fn http_retry(
        &self,
        name: &str,
    ) -> Result<RetryLayer<ByName<HttpStatus>, HttpReplay>, Error> {
        Ok(self
            .retry(name, HttpStatus::retryable())?
            .replay(HttpReplay::default()))
    }

    /// A timeout layer for policy `name`'s `timeout.total`. Every timeout layer built for
    /// `name` follows one value.
    ///
    /// # Errors
    ///
    /// An [`Error`] when there is no such policy or it sets no `timeout.total`.
    pub fn timeout(&self, name: &str) -> Result<TimeoutLayer, Error> {
        self.state().build(name, |policy, built| {
            if built.timeout.is_none() {
                let section = join(&path(name), "timeout");
                let layer = policy
                    .timeout
                    .clone()
                    .unwrap_or_default()
                    .layer_at(&section)?;
                built.timeout = Some(layer.reloadable());
            }
            Ok(built.timeout.as_ref().expect("set above").0.clone())
        })
    }

    /// The [standard client stack](StandardClientLayer) for policy `name`: total timeout, retry
    /// with budget, breakers per authority, attempt timeout; the pipeline's defaults where the
    /// policy is silent, the policy's error names over [`HttpStatus::retryable`]. Every stack
    /// built for `name` shares its breakers, retry policy and budget.
    ///
    /// # Errors
    ///
    /// An [`Error`] when there is no such policy.
    pub fn client(&self, name: &str) -> Result<StandardClientLayer, Error> {
        self.state().build(name, |policy, built| {
            if built.client.is_none() {
                let p = path(name);
                let lists = live_names(built, policy, &self.inner.names, name)?;
                let classifier = ByName::live(HttpStatus::retryable(), lists);
                let layer =
                    StandardClientLayer::from_parts(client_parts(policy, name)?, classifier)
                        .map_err(|e| policy.retry_refused(&p, &e))?;
                built.client = Some(layer.reloadable());
            }
            Ok(built.client.as_ref().expect("set above").0.clone())
        })
    }

    /// A fault-injection layer for policy `name` (feature `chaos`), in error mode; chain
    /// `respond_http()`, `respond_grpc()` or `when(..)` as for any chaos layer. It injects only
    /// while the policy's `chaos` section says `enabled: true`: a policy without one never
    /// injects, and a reload can switch it on, off or to another fault.
    ///
    /// # Errors
    ///
    /// An [`Error`] when there is no such policy.
    #[cfg(feature = "chaos")]
    pub fn chaos(&self, name: &str) -> Result<crate::chaos::ChaosLayer, Error> {
        self.state().build(name, |policy, built| {
            if built.chaos.is_none() {
                built.chaos = Some(crate::chaos::ChaosLayer::new(chaos_config(policy, name)?));
            }
            Ok(built.chaos.clone().expect("set above"))
        })
    }

    /// Every breaker built from the registry: whether its policy is critical, whether it is one
    /// of a client stack's per-host breakers, and its handle.
    fn breaker_handles(&self) -> Vec<(bool, bool, CircuitBreakerHandle)> {
        let state = self.state();
        let mut out = Vec::new();
        for (name, built) in &state.built {
            let critical = state
                .settings
                .resolved(name)
                .is_some_and(|p| p.is_critical());
            if let Some(b) = &built.breaker {
                // A live handle follows the breaker across reloads that replace it.
                out.push((critical, false, b.handle()));
            }
            if let Some((client, _)) = &built.client {
                out.extend(
                    client
                        .breakers()
                        .handles()
                        .into_iter()
                        .map(|(_, h)| (critical, true, h)),
                );
            }
        }
        out
    }

    /// The single breakers (not a client stack's per-host ones) of policies marked
    /// `critical: true`, for [`Readiness::critical`]: listed afresh at every probe.
    pub fn critical_breakers(&self) -> RegistryBreakers {
        self.breakers_where(Some(true), false)
    }

    /// The per-host breakers of the client stacks of policies marked `critical: true`, for
    /// [`Readiness::critical_when`]: one host down should not fail every instance's probe at
    /// once, so [`readiness`](Self::readiness) fails only when more than half of them are open
    /// ([`OpenBreakers::MAJORITY`]); build
    /// your own probe to choose another share.
    ///
    /// ```
    /// use tower_rampart::{health::{OpenBreakers, Readiness}, registry::Registry};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let registry = Registry::from_value(serde_json::json!({
    ///     "policies": {"payments": {"critical": true}},
    /// }))?;
    /// let readiness = Readiness::new()
    ///     .critical(registry.critical_breakers())
    ///     .critical_when(registry.critical_host_breakers(), OpenBreakers::at_least(3)?)
    ///     .breaker(registry.other_breakers());
    /// # let _ = readiness;
    /// # Ok(())
    /// # }
    /// ```
    pub fn critical_host_breakers(&self) -> RegistryBreakers {
        self.breakers_where(Some(true), true)
    }

    /// The breakers of the other policies (single and per-host), for [`Readiness::breaker`].
    pub fn other_breakers(&self) -> RegistryBreakers {
        RegistryBreakers {
            registry: self.clone(),
            critical: Some(false),
            hosts: None,
        }
    }

    fn breakers_where(&self, critical: Option<bool>, hosts: bool) -> RegistryBreakers {
        RegistryBreakers {
            registry: self.clone(),
            critical,
            hosts: Some(hosts),
        }
    }

    /// A readiness probe over every breaker built from the registry: an open breaker of a
    /// critical policy fails it (503), and so do more than half of a critical client stack's
    /// per-host breakers (fewer warn); other open breakers warn. Add stores with [`Readiness::store`].
    ///
    /// ```
    /// use tower_rampart::registry::Registry;
    ///
    /// # fn main() -> Result<(), tower_rampart::config::Error> {
    /// let registry = Registry::from_value(serde_json::json!({
    ///     "policies": {"payments": {"critical": true}, "search": {}},
    /// }))?;
    /// let app: axum::Router = axum::Router::new().route_service("/readyz", registry.readiness());
    /// # let _ = app;
    /// # Ok(())
    /// # }
    /// ```
    pub fn readiness(&self) -> Readiness {
        Readiness::new()
            .critical(self.critical_breakers())
            .critical_when(self.critical_host_breakers(), OpenBreakers::MAJORITY)
            .breaker(self.other_breakers())
    }
}

/// The breakers a [`Registry`] built, critical or not, listed when asked.
#[derive(Clone, Debug)]
pub struct RegistryBreakers {
    registry: Registry,
    /// Only critical policies' (`Some(true)`), only the others' (`Some(false)`).
    critical: Option<bool>,
    /// Only per-host breakers (`Some(true)`), only single ones (`Some(false)`), or both.
    hosts: Option<bool>,
}

impl BreakerSource for RegistryBreakers {
    fn breakers(&self) -> Vec<CircuitBreakerHandle> {
        self.registry
            .breaker_handles()
            .into_iter()
            .filter(|(c, hosts, _)| {
                self.critical.is_none_or(|want| want == *c)
                    && self.hosts.is_none_or(|want| want == *hosts)
            })
            .map(|(_, _, h)| h)
            .collect()
    }
}

/// Every breaker built from the registry.
impl BreakerSource for Registry {
    fn breakers(&self) -> Vec<CircuitBreakerHandle> {
        self.breaker_handles()
            .into_iter()
            .map(|(_, _, h)| h)
            .collect()
    }
}

/// The policy's retry error names, one set of lists shared by every classifier built for it.
fn live_names(
    built: &mut Built,
    policy: &PolicySettings,
    names: &ErrorNames,
    name: &str,
) -> Result<LiveNames, Error> {
    if let Some(lists) = &built.names {
        return Ok(lists.clone());
    }
    let (on, never) = policy.retry_name_sets_at(names, &path(name))?;
    let lists = LiveNames::new(on, never);
    built.names = Some(lists.clone());
    Ok(lists)
}

/// The chaos configuration of `policy`: its section, or injection off.
#[cfg(feature = "chaos")]
pub(super) fn chaos_config(
    policy: &PolicySettings,
    name: &str,
) -> Result<crate::chaos::Config, Error> {
    match &policy.chaos {
        Some(c) => c.config_at(name, &join(&path(name), "chaos")),
        None => crate::chaos::Config::builder()
            .name(name)
            .build()
            .map_err(|e| Error::refused(&join(&path(name), "chaos"), &e, str::to_owned)),
    }
}
