//! One downstream's policy, and a file of named policies over shared defaults.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{
    BreakerSettings, Error, FallbackSettings, IdempotencySettings, RetrySettings, TimeoutSettings,
    error::join, load::loaders, merge::either,
};
use crate::{
    backoff::Backoff,
    circuit_breaker,
    classify::{ByName, ErrorNames},
    retry::{self, RetryLayer},
};

/// Everything about calling one downstream: its breaker, retry, timeouts, fallback,
/// Idempotency-Key options, fault injection and whether readiness depends on it. Every section
/// is optional.
///
/// | key | also | section |
/// |---|---|---|
/// | `circuit_breaker` | | [`BreakerSettings`] |
/// | `retry` | `retry_policy` | [`RetrySettings`] |
/// | `timeout` | | [`TimeoutSettings`] |
/// | `fallback` | | [`FallbackSettings`] |
/// | `idempotency` | | [`IdempotencySettings`] |
/// | `chaos` | | [`ChaosSettings`](super::ChaosSettings) (feature `chaos`) |
/// | `critical` | | readiness fails while this policy's breaker is open |
///
/// ```
/// use tower_rampart::config::PolicySettings;
///
/// let policy = PolicySettings::from_value(serde_json::json!({
///     "circuit_breaker": {"service": "ledger", "failure_threshold": 3},
///     "retry_policy": {"max_attempts": 2},
/// }))?;
/// assert_eq!(policy.circuit_breaker_config()?.name(), "ledger");
/// let retry = policy.retry_layer("ledger")?;
/// # let _ = retry;
/// # Ok::<_, tower_rampart::config::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
#[allow(missing_docs)] // the table above documents the fields
pub struct PolicySettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<BreakerSettings>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySettings>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<RetrySettings>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<TimeoutSettings>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<FallbackSettings>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency: Option<IdempotencySettings>,
    #[cfg(feature = "chaos")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chaos: Option<super::ChaosSettings>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub critical: Option<bool>,
}

/// A section's settings over the defaults' (either may be missing).
fn over<T: Clone>(mine: &Option<T>, base: &Option<T>, inherit: impl Fn(&T, &T) -> T) -> Option<T> {
    match (mine, base) {
        (Some(m), Some(b)) => Some(inherit(m, b)),
        (Some(m), None) => Some(m.clone()),
        (None, b) => b.clone(),
    }
}

impl PolicySettings {
    loaders!("a policy", super::load::POLICY);

    /// Loads a policy from a JSON value (or anything `serde_json` turned into one), checking
    /// every section and every error name against [`ErrorNames::default`].
    ///
    /// # Errors
    ///
    /// An [`Error`] naming the path of the field at fault.
    pub fn from_value(value: serde_json::Value) -> Result<Self, Error> {
        let policy: PolicySettings = super::load::document(value, super::load::POLICY)?;
        policy.check(&ErrorNames::default(), "", "default")?;
        Ok(policy)
    }

    /// This policy over `defaults`, section by section and field by field (see each section's
    /// `inherit`).
    #[must_use]
    pub fn inherit(&self, defaults: &PolicySettings) -> PolicySettings {
        let (mine_retry, base_retry) = (self.retry_settings(), defaults.retry_settings());
        let retry = over(
            &mine_retry.cloned(),
            &base_retry.cloned(),
            RetrySettings::inherit,
        );
        // Kept under the key the file used, so that errors name it.
        let design_key = match (&self.retry, &self.retry_policy) {
            (None, Some(_)) => true,
            (None, None) => defaults.retry.is_none() && defaults.retry_policy.is_some(),
            _ => false,
        };
        let (retry, retry_policy) = if design_key {
            (None, retry)
        } else {
            (retry, None)
        };
        PolicySettings {
            circuit_breaker: over(
                &self.circuit_breaker,
                &defaults.circuit_breaker,
                BreakerSettings::inherit,
            ),
            retry,
            retry_policy,
            timeout: over(&self.timeout, &defaults.timeout, TimeoutSettings::inherit),
            fallback: over(
                &self.fallback,
                &defaults.fallback,
                FallbackSettings::inherit,
            ),
            idempotency: over(
                &self.idempotency,
                &defaults.idempotency,
                IdempotencySettings::inherit,
            ),
            #[cfg(feature = "chaos")]
            chaos: over(&self.chaos, &defaults.chaos, super::ChaosSettings::inherit),
            critical: self.critical.or(defaults.critical),
        }
    }

    /// The retry section, under either key (`retry` wins when both are checked; see `check`).
    pub fn retry_settings(&self) -> Option<&RetrySettings> {
        self.retry.as_ref().or(self.retry_policy.as_ref())
    }

    /// The retry section and its key.
    pub(crate) fn retry_section(
        &self,
        path: &str,
    ) -> Result<Option<(&RetrySettings, String)>, Error> {
        Ok(either(
            path,
            (&self.retry, "retry"),
            (&self.retry_policy, "retry_policy"),
        )?
        .map(|(r, key)| (r, join(path, key))))
    }

    /// Whether readiness fails while this policy's breaker is open.
    pub fn is_critical(&self) -> bool {
        self.critical.unwrap_or(false)
    }

    /// The breaker configuration: the `circuit_breaker` section over the breaker's defaults,
    /// named by its `name`/`service`, else `default`.
    ///
    /// # Errors
    ///
    /// An [`Error`] naming the key at fault.
    pub fn circuit_breaker_config(&self) -> Result<circuit_breaker::Config, Error> {
        self.breaker_config("default", "")
    }

    pub(crate) fn breaker_config(
        &self,
        name: &str,
        path: &str,
    ) -> Result<circuit_breaker::Config, Error> {
        self.breaker_config_over(circuit_breaker::Config::builder().name(name), path)
    }

    /// The `circuit_breaker` section over `base` (a pipeline's defaults), built.
    pub(crate) fn breaker_config_over(
        &self,
        base: circuit_breaker::Builder,
        path: &str,
    ) -> Result<circuit_breaker::Config, Error> {
        let settings = self.circuit_breaker.clone().unwrap_or_default();
        settings.config_over(base, &join(path, "circuit_breaker"))
    }

    /// A retry layer named `name` from the retry section (the retry builder's defaults without
    /// one), classifying with [`AnyError`](crate::classify::AnyError).
    ///
    /// # Errors
    ///
    /// An [`Error`] naming the key at fault.
    pub fn retry_layer(&self, name: &str) -> Result<RetryLayer, Error> {
        let b =
            self.retry_builder_over(RetryLayer::builder().name(name), &Backoff::default(), "")?;
        b.build().map_err(|e| self.retry_refused("", &e))
    }

    /// The retry section applied to `base` (whose backoff is `backoff`), not yet built.
    pub(crate) fn retry_builder_over(
        &self,
        base: retry::Builder,
        backoff: &Backoff,
        path: &str,
    ) -> Result<retry::Builder, Error> {
        match self.retry_section(path)? {
            Some((r, section)) => r.builder_over(base, backoff, &section),
            None => Ok(base),
        }
    }

    /// A retry builder's refusal, with the path of the key at fault.
    pub(crate) fn retry_refused(&self, path: &str, e: &crate::ConfigError) -> Error {
        match self.retry_section(path) {
            Ok(Some((r, section))) => r.refused(&section, e),
            Ok(None) => Error::refused(&join(path, "retry"), e, str::to_owned),
            Err(e) => e,
        }
    }

    /// The retry error names (`retry_on`, `never_retry`), compiled against `names`.
    pub(crate) fn retry_name_sets_at(
        &self,
        names: &ErrorNames,
        path: &str,
    ) -> Result<
        (
            Option<crate::classify::NameSet>,
            Option<crate::classify::NameSet>,
        ),
        Error,
    > {
        match self.retry_section(path)? {
            Some((r, section)) => r.name_sets_at(names, &section),
            None => Ok((None, None)),
        }
    }

    /// The retry classifier: `retry_on` / `never_retry` names over `base`, checked against
    /// `names`.
    ///
    /// # Errors
    ///
    /// An [`Error`] naming the first unknown error name.
    pub fn retry_classifier<C>(&self, base: C, names: &ErrorNames) -> Result<ByName<C>, Error> {
        self.retry_classifier_at(base, names, "")
    }

    pub(crate) fn retry_classifier_at<C>(
        &self,
        base: C,
        names: &ErrorNames,
        path: &str,
    ) -> Result<ByName<C>, Error> {
        match self.retry_section(path)? {
            Some((r, section)) => r.classifier_at(base, names, &section),
            None => Ok(ByName::new(base)),
        }
    }

    /// Checks every section as it would be built, under `path` (`policies.payment-gateway`).
    pub(crate) fn check(&self, names: &ErrorNames, path: &str, name: &str) -> Result<(), Error> {
        self.breaker_config(name, path)?;
        if let Some((r, section)) = self.retry_section(path)? {
            r.name_sets_at(names, &section)?;
        }
        self.retry_builder_over(RetryLayer::builder().name(name), &Backoff::default(), path)?
            .build()
            .map_err(|e| self.retry_refused(path, &e))?;
        if let Some(t) = &self.timeout {
            t.check(&join(path, "timeout"))?;
        }
        if let Some(f) = &self.fallback {
            f.check(&join(path, "fallback"))?;
        }
        if let Some(i) = &self.idempotency {
            i.check(&join(path, "idempotency"))?;
        }
        #[cfg(feature = "chaos")]
        if let Some(c) = &self.chaos {
            c.config_at(name, &join(path, "chaos"))?;
        }
        Ok(())
    }
}

/// A file of named policies: `defaults` that every policy inherits, and `policies` by name
/// (one per downstream). Loaded by [`Registry`](crate::registry::Registry).
///
/// ```yaml
/// defaults:
///   timeout: { total: 10s, attempt: 2s }
///   retry: { max_attempts: 3, initial_delay: 100ms }
/// policies:
///   payment-gateway:
///     critical: true
///     circuit_breaker: { failure_threshold: 5, sliding_window_size: 10 }
///   search:
///     retry: { max_attempts: 5 }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RegistrySettings {
    /// Settings every policy inherits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub defaults: Option<PolicySettings>,
    /// The named policies.
    pub policies: BTreeMap<String, PolicySettings>,
}

impl RegistrySettings {
    loaders!("a registry file", super::load::REGISTRY);

    /// Loads a registry file from a JSON value, checking every policy over the defaults with
    /// [`ErrorNames::default`].
    ///
    /// # Errors
    ///
    /// An [`Error`] naming the path of the field at fault.
    pub fn from_value(value: serde_json::Value) -> Result<Self, Error> {
        let s: RegistrySettings = super::load::document(value, super::load::REGISTRY)?;
        s.check(&ErrorNames::default())?;
        Ok(s)
    }

    /// The policy `name` over the defaults.
    pub fn resolved(&self, name: &str) -> Option<PolicySettings> {
        let p = self.policies.get(name)?;
        Some(match &self.defaults {
            Some(d) => p.inherit(d),
            None => p.clone(),
        })
    }

    /// Checks the defaults and every policy over them.
    ///
    /// # Errors
    ///
    /// The first [`Error`], with its path from the top of the file.
    pub fn check(&self, names: &ErrorNames) -> Result<(), Error> {
        if let Some(d) = &self.defaults {
            d.check(names, "defaults", "defaults")?;
        }
        for name in self.policies.keys() {
            let resolved = self.resolved(name).unwrap_or_default();
            resolved.check(names, &format!("policies.{name}"), name)?;
        }
        Ok(())
    }
}
