//! Fault-injection settings as data (feature `chaos`).

use std::time::Duration;

use http::StatusCode;
use serde::{Deserialize, Serialize};

use super::{Error, error::join, merge::inherit, value::duration};
use crate::{
    chaos::{Config, Fault},
    classify::GrpcCode,
};

/// A fault-injection section as written in a configuration file. A policy without one never
/// injects; with one, injection is still off unless `enabled: true`.
///
/// | key | meaning |
/// |---|---|
/// | `enabled` | inject at all (`false` unless set) |
/// | `injection_rate` | fraction of calls, 0 to 1 |
/// | `seed` | seed of the random source, for reproducible runs |
/// | `fault` | `latency`, `error`, `http`, `grpc` or `abort` |
/// | `latency` | the added delay (`fault: latency`) |
/// | `status`, `retry_after`, `problem` | the HTTP status (400 to 599), an optional `Retry-After`, a problem+json body (default `true`) (`fault: http`) |
/// | `grpc_code`, `message` | the gRPC code (`UNAVAILABLE` or its number) and message (`fault: grpc`) |
///
/// ```
/// use tower_rampart::config::ChaosSettings;
///
/// let c: ChaosSettings = serde_json::from_value(serde_json::json!({
///     "enabled": true, "injection_rate": 0.3, "fault": "http", "status": 503, "retry_after": "1s",
/// }))?;
/// let config = c.config("payment-gateway")?;
/// assert_eq!(config.injection_rate(), 0.3);
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
#[allow(missing_docs)] // the table above documents the fields
pub struct ChaosSettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub injection_rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<FaultKind>,
    #[serde(with = "duration", skip_serializing_if = "Option::is_none")]
    pub latency: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(with = "duration", skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_code: Option<GrpcCodeName>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The kind of fault, as written in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)] // one per `chaos::Fault`
pub enum FaultKind {
    Latency,
    Error,
    Http,
    Grpc,
    Abort,
}

/// A gRPC code as written in a file: its name (`UNAVAILABLE`) or number (`14`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
#[allow(missing_docs)]
pub enum GrpcCodeName {
    Number(u8),
    Name(String),
}

impl GrpcCodeName {
    fn code(&self) -> Option<GrpcCode> {
        match self {
            GrpcCodeName::Number(n) if *n <= 16 => Some(GrpcCode::from_i32(i32::from(*n))),
            GrpcCodeName::Number(_) => None,
            GrpcCodeName::Name(name) => crate::classify::names::grpc_code_named(name),
        }
    }
}

impl ChaosSettings {
    /// These settings over `base`; the fault's fields are taken whole.
    #[must_use]
    pub fn inherit(&self, base: &ChaosSettings) -> ChaosSettings {
        inherit!(self, base;
            [enabled] [injection_rate] [seed]
            [fault, latency, status, retry_after, problem, grpc_code, message]
        )
    }

    /// The chaos layer's configuration, named `name` (its metrics label).
    ///
    /// # Errors
    ///
    /// An [`Error`] naming the key at fault: a missing or contradictory fault, an out-of-range
    /// rate, status or latency.
    pub fn config(&self, name: &str) -> Result<Config, Error> {
        self.config_at(name, "")
    }

    pub(crate) fn config_at(&self, name: &str, section: &str) -> Result<Config, Error> {
        let at = |key: &str, m: String| Error::at(join(section, key), m);
        let kind = self.fault.unwrap_or(FaultKind::Error);
        let stray = [
            (self.latency.is_some(), "latency", FaultKind::Latency),
            (self.status.is_some(), "status", FaultKind::Http),
            (self.retry_after.is_some(), "retry_after", FaultKind::Http),
            (self.problem.is_some(), "problem", FaultKind::Http),
            (self.grpc_code.is_some(), "grpc_code", FaultKind::Grpc),
            (self.message.is_some(), "message", FaultKind::Grpc),
        ];
        if let Some((_, key, owner)) = stray.iter().find(|(set, _, owner)| *set && *owner != kind) {
            let hint = serde_json::to_value(owner).unwrap_or_default();
            return Err(at(
                key,
                format!("belongs to `fault: {}`", hint.as_str().unwrap_or("?")),
            ));
        }
        let fault = match kind {
            FaultKind::Latency => Fault::Latency(
                self.latency
                    .ok_or_else(|| at("latency", "is needed by `fault: latency`".into()))?,
            ),
            FaultKind::Error => Fault::Error,
            FaultKind::Abort => Fault::Abort,
            FaultKind::Http => {
                let status = self
                    .status
                    .ok_or_else(|| at("status", "is needed by `fault: http`".into()))?;
                let status = StatusCode::from_u16(status)
                    .map_err(|_| at("status", format!("{status} is not an HTTP status")))?;
                let mut f = if self.problem.unwrap_or(true) {
                    Fault::http(status)
                } else {
                    Fault::plain_http(status)
                };
                if let Some(wait) = self.retry_after {
                    f = f.with_retry_after(wait);
                }
                f
            }
            FaultKind::Grpc => {
                let code = self
                    .grpc_code
                    .as_ref()
                    .ok_or_else(|| at("grpc_code", "is needed by `fault: grpc`".into()))?;
                let code = code.code().ok_or_else(|| {
                    at(
                        "grpc_code",
                        format!(
                            "{code:?} is not a gRPC code name (UNAVAILABLE) or number (0..=16)"
                        ),
                    )
                })?;
                Fault::grpc(
                    code,
                    self.message.clone().unwrap_or_else(|| "injected".into()),
                )
            }
        };
        let mut b = Config::builder()
            .name(name)
            .fault(fault)
            .injection_rate(self.injection_rate.unwrap_or(0.0))
            .enabled(self.enabled.unwrap_or(false));
        if let Some(seed) = self.seed {
            b = b.seed(seed);
        }
        b.build().map_err(|e| {
            Error::refused(section, &e, |s| {
                match (s, kind) {
                    ("fault", FaultKind::Latency) => "latency",
                    ("fault", FaultKind::Http) => "status",
                    ("fault", FaultKind::Grpc) => "grpc_code",
                    (s, _) => s,
                }
                .to_owned()
            })
        })
    }
}
