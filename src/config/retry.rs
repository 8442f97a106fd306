//! Retry settings as data: limits, backoff, budget and the error names to retry.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{
    Error, JitterSetting, Limit,
    error::join,
    merge::{either, inherit},
    value::duration,
};
use crate::{
    backoff::Backoff,
    classify::{ErrorNames, NameSet},
    retry::{self, Budget},
};

/// The shape of the backoff curve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackoffKind {
    /// `initial_delay * multiplier^n`, capped at `max_delay`.
    Exponential,
    /// `initial_delay + step * n`, capped at `max_delay`.
    Linear,
    /// `initial_delay` every time.
    Constant,
}

/// A retry layer's settings as written in a configuration file. Every field is optional: what
/// is not set keeps the default of the builder it is applied to.
///
/// | key | also | meaning |
/// |---|---|---|
/// | `max_attempts` | | attempts in all, the first included (1..=100) |
/// | `max_elapsed` | | no retry starts later than this after the first attempt |
/// | `backoff` | | `exponential` (default), `linear` or `constant` |
/// | `initial_delay` | `initial_interval` | the first delay |
/// | `max_delay` | `max_interval` | the cap on any delay |
/// | `multiplier` | | growth of an exponential backoff (2 unless set) |
/// | `step` | | growth of a linear backoff |
/// | `jitter` | | `true` (full), `false`/`none`, `full`, `equal`, `decorrelated`, or a fraction (`0.2`: ±20 %) |
/// | `retry_after_cap` | | honour `Retry-After` / gRPC push-back up to this, or `off` |
/// | `retry_circuit_open` | | retry a breaker's refusals too |
/// | `attempt_timeout` | | each attempt's timeout, so retries fit a deadline |
/// | `budget` | | a [`BudgetSettings`] block |
/// | `retry_on` | `retryable_exceptions` | only failures with these names are retried |
/// | `never_retry` | `non_retryable_exceptions` | failures with these names are never retried |
///
/// Error names are those of [`ErrorNames`]: `NetworkTimeout`, `ServiceUnavailable`, `5xx`,
/// `429`, gRPC codes such as `UNAVAILABLE`, your own types' names, and so on; an unknown name is
/// an error at load time.
///
/// ```
/// use tower_rampart::config::RetrySettings;
///
/// let settings: RetrySettings = serde_json::from_value(serde_json::json!({
///     "max_attempts": 3,
///     "initial_interval": "1s",
///     "max_interval": "30s",
///     "multiplier": 2.0,
///     "jitter": true,
///     "retryable_exceptions": ["NetworkTimeout", "ServiceUnavailable"],
/// }))?;
/// let layer = settings.layer("payment-gateway")?;
/// assert_eq!(layer.name(), "payment-gateway");
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
#[allow(missing_docs)] // the table above documents the fields
pub struct RetrySettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    #[serde(with = "duration", skip_serializing_if = "Option::is_none")]
    pub max_elapsed: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backoff: Option<BackoffKind>,
    #[serde(with = "duration", skip_serializing_if = "Option::is_none")]
    pub initial_delay: Option<Duration>,
    #[serde(with = "duration", skip_serializing_if = "Option::is_none")]
    pub initial_interval: Option<Duration>,
    #[serde(with = "duration", skip_serializing_if = "Option::is_none")]
    pub max_delay: Option<Duration>,
    #[serde(with = "duration", skip_serializing_if = "Option::is_none")]
    pub max_interval: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub multiplier: Option<f64>,
    #[serde(with = "duration", skip_serializing_if = "Option::is_none")]
    pub step: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jitter: Option<JitterSetting>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_cap: Option<Limit>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_circuit_open: Option<bool>,
    #[serde(with = "duration", skip_serializing_if = "Option::is_none")]
    pub attempt_timeout: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetSettings>,
    #[serde(
        deserialize_with = "super::value::names::deserialize",
        skip_serializing_if = "Option::is_none"
    )]
    pub retry_on: Option<Vec<String>>,
    #[serde(
        deserialize_with = "super::value::names::deserialize",
        skip_serializing_if = "Option::is_none"
    )]
    pub retryable_exceptions: Option<Vec<String>>,
    #[serde(
        deserialize_with = "super::value::names::deserialize",
        skip_serializing_if = "Option::is_none"
    )]
    pub never_retry: Option<Vec<String>>,
    #[serde(
        deserialize_with = "super::value::names::deserialize",
        skip_serializing_if = "Option::is_none"
    )]
    pub non_retryable_exceptions: Option<Vec<String>>,
}

/// A retry budget as written in a configuration file: a percent budget (`percent`, with
/// `min_per_second` and `window`), a token bucket (`max_tokens`, `token_ratio`), or
/// `enabled: false` for none.
///
/// | key | meaning | default |
/// |---|---|---|
/// | `enabled` | `false` turns the budget off | `true` |
/// | `percent` | retries may be this fraction of requests (Finagle's budget) | |
/// | `min_per_second` | plus this many retries per second | 10 |
/// | `window` | over this long (1 s to 60 s) | 10 s |
/// | `max_tokens` | gRPC retry throttling: tokens in the bucket (1..=1000) | |
/// | `token_ratio` | tokens a success gives back | 0.1 |
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
#[allow(missing_docs)] // the table above documents the fields
pub struct BudgetSettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_per_second: Option<u32>,
    #[serde(with = "duration", skip_serializing_if = "Option::is_none")]
    pub window: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_ratio: Option<f64>,
}

impl BudgetSettings {
    /// The budget, `None` when turned off; errors are under `section` (`retry.budget`).
    pub(crate) fn budget(&self, section: &str) -> Result<Option<Budget>, Error> {
        let at = |key: &str, m: &str| Error::at(join(section, key), m);
        if self.enabled == Some(false) {
            return Ok(None);
        }
        let refused = |e: crate::ConfigError| {
            Error::refused(section, &e, |s| s.trim_start_matches("budget.").to_owned())
        };
        match (self.percent, self.max_tokens) {
            (Some(_), Some(_)) => Err(at(
                "max_tokens",
                "`percent` is also given: a budget is a percent budget or a token bucket",
            )),
            (Some(p), None) => {
                if self.token_ratio.is_some() {
                    return Err(at(
                        "token_ratio",
                        "belongs to a token bucket (`max_tokens`)",
                    ));
                }
                Budget::percent(
                    p,
                    self.min_per_second.unwrap_or(10),
                    self.window.unwrap_or(Duration::from_secs(10)),
                )
                .map(Some)
                .map_err(refused)
            }
            (None, Some(t)) => {
                if self.min_per_second.is_some() || self.window.is_some() {
                    let key = if self.window.is_some() {
                        "window"
                    } else {
                        "min_per_second"
                    };
                    return Err(at(key, "belongs to a percent budget (`percent`)"));
                }
                Budget::token_bucket(t, self.token_ratio.unwrap_or(0.1))
                    .map(Some)
                    .map_err(refused)
            }
            (None, None) => Err(at(
                "",
                "give `percent` (a percent budget), `max_tokens` (a token bucket) or `enabled: false`",
            )),
        }
    }
}

impl RetrySettings {
    /// These settings over `base`: every group of fields not set here comes from `base` (the
    /// budget block is taken whole).
    #[must_use]
    pub fn inherit(&self, base: &RetrySettings) -> RetrySettings {
        let mut out = inherit!(self, base;
            [max_attempts]
            [max_elapsed]
            [backoff]
            [initial_delay, initial_interval]
            [max_delay, max_interval]
            [multiplier]
            [step]
            [jitter]
            [retry_after_cap]
            [retry_circuit_open]
            [attempt_timeout]
            [budget]
            [retry_on, retryable_exceptions]
            [never_retry, non_retryable_exceptions]
        );
        // A policy that picks another backoff kind drops the defaults' settings of the old one.
        let kind = out.backoff.unwrap_or(BackoffKind::Exponential);
        if self.step.is_none() && kind != BackoffKind::Linear {
            out.step = None;
        }
        if self.multiplier.is_none() && kind != BackoffKind::Exponential {
            out.multiplier = None;
        }
        out
    }

    /// A retry layer named `name`: these settings over the retry builder's defaults. The
    /// layer classifies with [`AnyError`](crate::classify::AnyError); to retry by error name,
    /// classify with [`classifier`](Self::classifier).
    ///
    /// # Errors
    ///
    /// An [`Error`] whose path is the key at fault.
    pub fn layer(&self, name: &str) -> Result<retry::RetryLayer, Error> {
        let b = self.builder_over(
            retry::RetryLayer::builder().name(name),
            &Backoff::default(),
            "",
        )?;
        b.build().map_err(|e| self.refused("", &e))
    }

    /// The error names to retry (`retry_on`) and never to retry (`never_retry`), checked
    /// against `names`.
    ///
    /// # Errors
    ///
    /// An [`Error`] naming the first unknown name (`retry_on[1]`), with a suggestion.
    pub fn name_sets(
        &self,
        names: &ErrorNames,
    ) -> Result<(Option<NameSet>, Option<NameSet>), Error> {
        self.name_sets_at(names, "")
    }

    pub(crate) fn name_sets_at(
        &self,
        names: &ErrorNames,
        section: &str,
    ) -> Result<(Option<NameSet>, Option<NameSet>), Error> {
        let compile =
            |list: Option<(&Vec<String>, &'static str)>| -> Result<Option<NameSet>, Error> {
                let Some((list, key)) = list else {
                    return Ok(None);
                };
                names.compile(list).map(Some).map_err(|e| {
                    Error::at(
                        join(section, &format!("{key}[{}]", e.index())),
                        e.to_string(),
                    )
                })
            };
        let on = compile(either(
            section,
            (&self.retry_on, "retry_on"),
            (&self.retryable_exceptions, "retryable_exceptions"),
        )?)?;
        let never = compile(either(
            section,
            (&self.never_retry, "never_retry"),
            (&self.non_retryable_exceptions, "non_retryable_exceptions"),
        )?)?;
        Ok((on, never))
    }

    /// The classifier of these settings over `base`: failures are retried when `retry_on`
    /// (if given) names them and `never_retry` does not.
    ///
    /// # Errors
    ///
    /// As [`name_sets`](Self::name_sets).
    pub fn classifier<C>(
        &self,
        base: C,
        names: &ErrorNames,
    ) -> Result<crate::classify::ByName<C>, Error> {
        self.classifier_at(base, names, "")
    }

    pub(crate) fn classifier_at<C>(
        &self,
        base: C,
        names: &ErrorNames,
        section: &str,
    ) -> Result<crate::classify::ByName<C>, Error> {
        let (on, never) = self.name_sets_at(names, section)?;
        let mut c = crate::classify::ByName::new(base);
        if let Some(on) = on {
            c = c.only(on);
        }
        if let Some(never) = never {
            c = c.except(never);
        }
        Ok(c)
    }

    pub(crate) fn refused(&self, section: &str, e: &crate::ConfigError) -> Error {
        // The design-document spellings, where the file used them.
        let spellings = [
            (
                "initial_delay",
                "initial_interval",
                self.initial_interval.is_some(),
            ),
            ("max_delay", "max_interval", self.max_interval.is_some()),
        ];
        let spelled = |s: &str| {
            spellings
                .iter()
                .find(|(own, _, used)| *own == s && *used)
                .map_or(s, |(_, theirs, _)| theirs)
                .to_owned()
        };
        let error = Error::refused(section, e, spelled);
        let mut message = error.message().to_owned();
        for (own, theirs, used) in spellings {
            if used {
                message = message.replace(own, theirs);
            }
        }
        Error::at(error.path(), message)
    }

    /// These settings applied to `base`; `backoff` is the backoff of `base`, whose values the
    /// backoff keys not given here keep.
    pub(crate) fn builder_over(
        &self,
        mut b: retry::Builder,
        backoff: &Backoff,
        section: &str,
    ) -> Result<retry::Builder, Error> {
        if let Some(n) = self.max_attempts {
            b = b.max_attempts(n);
        }
        if let Some(e) = self.max_elapsed {
            b = b.max_elapsed(e);
        }
        if let Some(new) = self.backoff(backoff, section)? {
            b = b.backoff(new);
        }
        if let Some(cap) = self.retry_after_cap {
            b = b.retry_after(cap.duration());
        }
        if let Some(r) = self.retry_circuit_open {
            b = b.retry_circuit_open(r);
        }
        if let Some(t) = self.attempt_timeout {
            b = b.attempt_timeout(t);
        }
        if let Some(budget) = &self.budget {
            b = match budget.budget(&join(section, "budget"))? {
                Some(budget) => b.budget(budget),
                None => b.no_budget(),
            };
        }
        Ok(b)
    }

    /// The backoff, when any backoff key is given.
    fn backoff(&self, base: &Backoff, section: &str) -> Result<Option<Backoff>, Error> {
        let initial = either(
            section,
            (&self.initial_delay, "initial_delay"),
            (&self.initial_interval, "initial_interval"),
        )?
        .map(|(d, _)| *d);
        let max = either(
            section,
            (&self.max_delay, "max_delay"),
            (&self.max_interval, "max_interval"),
        )?
        .map(|(d, _)| *d);
        let given = self.backoff.is_some()
            || initial.is_some()
            || max.is_some()
            || self.multiplier.is_some()
            || self.step.is_some()
            || self.jitter.is_some();
        if !given {
            return Ok(None);
        }
        let kind = self.backoff.unwrap_or(BackoffKind::Exponential);
        let initial = initial.unwrap_or(base.base());
        let at = |key: &str, m: &str| Error::at(join(section, key), m);
        if self.multiplier.is_some() && kind != BackoffKind::Exponential {
            return Err(at("multiplier", "belongs to an exponential backoff"));
        }
        if self.step.is_some() && kind != BackoffKind::Linear {
            return Err(at(
                "step",
                "belongs to a linear backoff (`backoff: linear`)",
            ));
        }
        let backoff = match kind {
            BackoffKind::Exponential => {
                Backoff::exponential(initial).multiplier(self.multiplier.unwrap_or(2.0))
            }
            BackoffKind::Linear => match self.step {
                Some(step) => Backoff::linear(initial, step),
                None => return Err(at("step", "is needed by a linear backoff")),
            },
            BackoffKind::Constant => Backoff::constant(initial),
        };
        let backoff = match (max, kind) {
            (Some(max), _) => backoff.max_delay(max),
            (None, BackoffKind::Constant) => backoff,
            (None, _) => backoff.max_delay(base.max().max(initial)),
        };
        Ok(Some(match self.jitter {
            Some(j) => backoff.jitter(j.jitter()),
            // Each kind's own default: full jitter for exponential, none otherwise.
            None if kind == BackoffKind::Exponential => backoff.jitter(base.jitter_kind()),
            None => backoff,
        }))
    }
}
