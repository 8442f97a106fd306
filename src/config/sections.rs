//! Timeout, fallback and Idempotency-Key settings as data.

use std::time::Duration;

use http::{HeaderName, Method, StatusCode};
use serde::{Deserialize, Serialize};

use super::{Error, error::join, merge::inherit, value::duration};
use crate::{
    fallback::{FallbackLayer, ResponseFallback, Trigger},
    idempotency::{self, OnStoreError},
    timeout::TimeoutLayer,
};

/// Timeouts as written in a configuration file.
///
/// | key | meaning |
/// |---|---|
/// | `total` | the whole call, retries and their waits included |
/// | `attempt` | each attempt (the client pipeline's inner timeout, and the retry's `attempt_timeout`) |
///
/// ```
/// use std::time::Duration;
/// use tower_rampart::config::TimeoutSettings;
///
/// let t: TimeoutSettings = serde_json::from_value(serde_json::json!({"total": "5s"}))?;
/// assert_eq!(t.layer()?.timeout(), Duration::from_secs(5));
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
#[allow(missing_docs)] // the table above documents the fields
pub struct TimeoutSettings {
    #[serde(with = "duration", skip_serializing_if = "Option::is_none")]
    pub total: Option<Duration>,
    #[serde(with = "duration", skip_serializing_if = "Option::is_none")]
    pub attempt: Option<Duration>,
}

impl TimeoutSettings {
    /// These settings over `base`, field by field.
    #[must_use]
    pub fn inherit(&self, base: &TimeoutSettings) -> TimeoutSettings {
        inherit!(self, base; [total] [attempt])
    }

    /// A timeout layer for the `total` timeout.
    ///
    /// # Errors
    ///
    /// An [`Error`] when `total` is missing or zero.
    pub fn layer(&self) -> Result<TimeoutLayer, Error> {
        self.layer_at("")
    }

    pub(crate) fn layer_at(&self, section: &str) -> Result<TimeoutLayer, Error> {
        let total = self
            .total
            .ok_or_else(|| Error::at(join(section, "total"), "is needed for a timeout layer"))?;
        timeout_layer(total, &join(section, "total"))
    }

    /// Checks both timeouts, and that an attempt cannot outlast the whole call.
    pub(crate) fn check(&self, section: &str) -> Result<(), Error> {
        for (d, key) in [(self.total, "total"), (self.attempt, "attempt")] {
            if let Some(d) = d {
                timeout_layer(d, &join(section, key))?;
            }
        }
        if let (Some(total), Some(attempt)) = (self.total, self.attempt)
            && attempt > total
        {
            return Err(Error::at(
                join(section, "attempt"),
                format!(
                    "({}) exceeds the total timeout ({})",
                    humantime_serde::re::humantime::format_duration(attempt),
                    humantime_serde::re::humantime::format_duration(total)
                ),
            ));
        }
        Ok(())
    }
}

pub(crate) fn timeout_layer(d: Duration, path: &str) -> Result<TimeoutLayer, Error> {
    TimeoutLayer::new(d).map_err(|e| Error::at(path, e.reason()))
}

/// When a fallback answers, and optionally the canned response it answers with.
///
/// | key | meaning |
/// |---|---|
/// | `on` | triggers: `circuit_open`, `timeout`, `error`, `failure` (default: `circuit_open` and `timeout`) |
/// | `status` | the canned response's status (400 to 599) |
/// | `body` | its body |
/// | `content_type` | its content type (`application/json` by default) |
///
/// ```
/// use tower_rampart::{config::FallbackSettings, fallback::Trigger};
///
/// let f: FallbackSettings = serde_json::from_value(serde_json::json!({
///     "on": ["circuit_open", "timeout"],
///     "status": 503,
///     "body": "{\"degraded\":true}",
/// }))?;
/// assert_eq!(f.triggers(), vec![Trigger::CircuitOpen, Trigger::Timeout]);
/// let layer = f.layer()?;
/// # let _ = layer;
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
#[allow(missing_docs)] // the table above documents the fields
pub struct FallbackSettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on: Option<Vec<TriggerName>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
}

/// A fallback trigger as written in a configuration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)] // one per `fallback::Trigger`
pub enum TriggerName {
    CircuitOpen,
    Timeout,
    Error,
    Failure,
}

impl From<TriggerName> for Trigger {
    fn from(t: TriggerName) -> Trigger {
        match t {
            TriggerName::CircuitOpen => Trigger::CircuitOpen,
            TriggerName::Timeout => Trigger::Timeout,
            TriggerName::Error => Trigger::Error,
            TriggerName::Failure => Trigger::Failure,
        }
    }
}

impl FallbackSettings {
    /// These settings over `base`; the canned response is taken whole.
    #[must_use]
    pub fn inherit(&self, base: &FallbackSettings) -> FallbackSettings {
        inherit!(self, base; [on] [status, body, content_type])
    }

    /// The triggers (circuit open and timeouts unless `on` says otherwise), for
    /// [`FallbackLayer::on`].
    pub fn triggers(&self) -> Vec<Trigger> {
        match &self.on {
            Some(on) => on.iter().map(|t| Trigger::from(*t)).collect(),
            None => vec![Trigger::CircuitOpen, Trigger::Timeout],
        }
    }

    /// A fallback layer answering the canned response on the triggers.
    ///
    /// # Errors
    ///
    /// An [`Error`] when `status` is missing or not from 400 to 599, or the content type is not
    /// a valid header value.
    pub fn layer(&self) -> Result<FallbackLayer<ResponseFallback>, Error> {
        self.layer_at("")
    }

    pub(crate) fn layer_at(&self, section: &str) -> Result<FallbackLayer<ResponseFallback>, Error> {
        let at = |key: &str, m: String| Error::at(join(section, key), m);
        let status = self
            .status
            .ok_or_else(|| at("status", "is needed for a canned response".into()))?;
        let status = StatusCode::from_u16(status)
            .ok()
            .filter(|s| s.is_client_error() || s.is_server_error())
            .ok_or_else(|| at("status", format!("must be from 400 to 599, got {status}")))?;
        let content_type = self.content_type.as_deref().unwrap_or("application/json");
        let value = http::HeaderValue::from_str(content_type).map_err(|_| {
            at(
                "content_type",
                format!("{content_type:?} is not a header value"),
            )
        })?;
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::CONTENT_TYPE, value);
        let body = self.body.clone().unwrap_or_default();
        Ok(FallbackLayer::response(status, headers, body).on(&self.triggers()))
    }

    pub(crate) fn check(&self, section: &str) -> Result<(), Error> {
        match self.status {
            Some(_) => self.layer_at(section).map(drop),
            None if self.body.is_some() || self.content_type.is_some() => Err(Error::at(
                join(section, "status"),
                "is needed with `body` or `content_type`",
            )),
            None => Ok(()),
        }
    }
}

/// The Idempotency-Key layer's options as written in a configuration file. The store and the
/// key scope stay in code (they are objects and functions, not data).
///
/// | key | meaning |
/// |---|---|
/// | `methods` | methods the layer protects (`["POST", "PATCH"]`) |
/// | `required` | answer 400 when the header is missing |
/// | `fingerprint_headers` | request headers that are part of the fingerprint |
/// | `max_request_body`, `max_response_body` | bytes |
/// | `response_body_timeout`, `ttl`, `lease`, `store_timeout`, `wait_for_in_flight`, `in_flight_retry_after` | durations |
/// | `on_store_error` | `fail_closed` (default) or `fail_open` |
///
/// ```
/// use tower_rampart::{config::IdempotencySettings, idempotency::IdempotencyLayer};
///
/// let s: IdempotencySettings =
///     serde_json::from_value(serde_json::json!({"ttl": "24h", "lease": "30s"}))?;
/// let layer = s.apply(IdempotencyLayer::builder().global_keys())?.build()?;
/// # let _ = layer;
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
#[allow(missing_docs)] // the table above documents the fields
pub struct IdempotencySettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub required: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint_headers: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_request_body: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_response_body: Option<usize>,
    #[serde(with = "duration", skip_serializing_if = "Option::is_none")]
    pub response_body_timeout: Option<Duration>,
    #[serde(with = "duration", skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Duration>,
    #[serde(with = "duration", skip_serializing_if = "Option::is_none")]
    pub lease: Option<Duration>,
    #[serde(with = "duration", skip_serializing_if = "Option::is_none")]
    pub store_timeout: Option<Duration>,
    #[serde(with = "duration", skip_serializing_if = "Option::is_none")]
    pub wait_for_in_flight: Option<Duration>,
    #[serde(with = "duration", skip_serializing_if = "Option::is_none")]
    pub in_flight_retry_after: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_store_error: Option<StoreErrorChoice>,
}

/// What the Idempotency-Key layer does when its store fails, as written in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)] // one per `OnStoreError`
pub enum StoreErrorChoice {
    FailClosed,
    FailOpen,
}

impl IdempotencySettings {
    /// These settings over `base`, field by field.
    #[must_use]
    pub fn inherit(&self, base: &IdempotencySettings) -> IdempotencySettings {
        inherit!(self, base;
            [methods] [required] [fingerprint_headers] [max_request_body] [max_response_body]
            [response_body_timeout] [ttl] [lease] [store_timeout] [wait_for_in_flight]
            [in_flight_retry_after] [on_store_error]
        )
    }

    /// These options applied to `builder`. The builder's [`build`](idempotency::Builder::build)
    /// checks them with the rest.
    ///
    /// # Errors
    ///
    /// An [`Error`] for a method or header name that is not one.
    pub fn apply<St: idempotency::Store>(
        &self,
        builder: idempotency::Builder<St>,
    ) -> Result<idempotency::Builder<St>, Error> {
        self.apply_at(builder, "")
    }

    pub(crate) fn apply_at<St: idempotency::Store>(
        &self,
        mut b: idempotency::Builder<St>,
        section: &str,
    ) -> Result<idempotency::Builder<St>, Error> {
        if let Some(methods) = &self.methods {
            let parsed = parse_list(methods, &join(section, "methods"), "a method", |m| {
                Method::from_bytes(m.as_bytes()).ok()
            })?;
            b = b.methods(&parsed);
        }
        if let Some(r) = self.required {
            b = b.required(r);
        }
        if let Some(headers) = &self.fingerprint_headers {
            let path = join(section, "fingerprint_headers");
            let parsed = parse_list(headers, &path, "a header name", |h| {
                HeaderName::from_bytes(h.as_bytes()).ok()
            })?;
            b = b.fingerprint_headers(&parsed);
        }
        if let Some(n) = self.max_request_body {
            b = b.max_request_body(n);
        }
        if let Some(n) = self.max_response_body {
            b = b.max_response_body(n);
        }
        if let Some(d) = self.response_body_timeout {
            b = b.response_body_timeout(d);
        }
        if let Some(d) = self.ttl {
            b = b.ttl(d);
        }
        if let Some(d) = self.lease {
            b = b.lease(d);
        }
        if let Some(d) = self.store_timeout {
            b = b.store_timeout(d);
        }
        if let Some(d) = self.wait_for_in_flight {
            b = b.wait_for_in_flight(d);
        }
        if let Some(d) = self.in_flight_retry_after {
            b = b.in_flight_retry_after(d);
        }
        if let Some(choice) = self.on_store_error {
            b = b.on_store_error(match choice {
                StoreErrorChoice::FailClosed => OnStoreError::FailClosed,
                StoreErrorChoice::FailOpen => OnStoreError::FailOpen,
            });
        }
        Ok(b)
    }

    /// Checks the options the way the layer's builder does (with the memory store and global
    /// keys standing in for what stays in code).
    pub(crate) fn check(&self, section: &str) -> Result<(), Error> {
        let b = self.apply_at(
            idempotency::IdempotencyLayer::builder().global_keys(),
            section,
        )?;
        b.build()
            .map(drop)
            .map_err(|e| Error::refused(section, &e, str::to_owned))
    }
}

/// Every entry of `list` parsed, or an error at `path[i]` saying it is not `what`.
fn parse_list<T>(
    list: &[String],
    path: &str,
    what: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Vec<T>, Error> {
    list.iter()
        .enumerate()
        .map(|(i, v)| {
            parse(v)
                .ok_or_else(|| Error::at(format!("{path}[{i}]"), format!("{v:?} is not {what}")))
        })
        .collect()
}
