//! Health reports and their `application/health+json` form.

use std::{
    fmt::{self, Write as _},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use http_body_util::Full;

/// The media type of health responses.
pub const HEALTH_JSON: &str = "application/health+json";

/// The outcome of one check, or of all of them: the worst check decides.
///
/// ```
/// use tower_rampart::health::Status;
///
/// assert!(Status::Pass < Status::Warn && Status::Warn < Status::Fail);
/// assert_eq!(Status::Warn.as_str(), "warn");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    /// Healthy.
    Pass,
    /// Healthy, with a concern (a non-critical breaker open, a breaker probing).
    Warn,
    /// Unhealthy.
    Fail,
}

impl Status {
    /// `pass`, `warn` or `fail`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }

    /// 200 for pass and warn, 503 for fail.
    pub const fn http_status(self) -> StatusCode {
        match self {
            Status::Pass | Status::Warn => StatusCode::OK,
            Status::Fail => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a check observed.
#[derive(Debug, Clone, PartialEq)]
pub enum ObservedValue {
    /// A word, such as a breaker's state (`open`).
    Text(String),
    /// A number, such as a latency, with [`Check::observed_unit`].
    Number(f64),
}

/// One check: one entry of the response's `checks`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Check {
    /// The key in `checks`: `<component>:<measurement>`, e.g. `payments:state` for a breaker
    /// named `payments`, `idempotency_store:responseTime` for a store.
    pub key: String,
    /// The component's name (`componentId`).
    pub component_id: String,
    /// `circuit_breaker` or `datastore` (`componentType`).
    pub component_type: &'static str,
    /// This check's outcome.
    pub status: Status,
    /// What was observed (`observedValue`).
    pub observed_value: ObservedValue,
    /// The unit of a numeric value (`observedUnit`), e.g. `ms`.
    pub observed_unit: Option<&'static str>,
    /// Why a check warns or fails, in words (`output`).
    pub output: Option<String>,
    /// When the observed value began to hold: for a breaker, when it entered its state; for a
    /// store, when it was asked.
    pub time: SystemTime,
}

/// The result of a health check: the overall status and every check, in the order they were
/// registered.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Report {
    /// The worst status among the checks (`pass` without checks).
    pub status: Status,
    /// Every check.
    pub checks: Vec<Check>,
}

impl Report {
    /// A report over `checks`, its status the worst of theirs.
    pub fn new(checks: Vec<Check>) -> Self {
        let status = checks
            .iter()
            .map(|c| c.status)
            .max()
            .unwrap_or(Status::Pass);
        Report { status, checks }
    }

    /// The checks under `key` (`<component>:<measurement>`).
    pub fn get<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a Check> + 'a {
        self.checks.iter().filter(move |c| c.key == key)
    }

    /// The body, in the health-check draft's shape:
    /// `{"status": "...", "checks": {"<component>:<measurement>": [{...}]}}`. Checks sharing a
    /// key share its array.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(64 + 200 * self.checks.len());
        out.push_str("{\"status\":\"");
        out.push_str(self.status.as_str());
        out.push_str("\",\"checks\":{");
        let mut keys: Vec<&str> = Vec::new();
        for c in &self.checks {
            if !keys.contains(&c.key.as_str()) {
                keys.push(&c.key);
            }
        }
        for (i, key) in keys.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            string(&mut out, key);
            out.push_str(":[");
            for (j, c) in self.get(key).enumerate() {
                if j > 0 {
                    out.push(',');
                }
                check(&mut out, c);
            }
            out.push(']');
        }
        out.push_str("}}");
        out
    }

    /// The HTTP response: 200 (pass, warn) or 503 (fail), `application/health+json`, not to be
    /// cached.
    pub fn into_response(self) -> http::Response<Full<Bytes>> {
        let mut res = http::Response::new(Full::new(Bytes::from(self.to_json())));
        *res.status_mut() = self.status.http_status();
        let headers = res.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(HEALTH_JSON));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        res
    }
}

fn check(out: &mut String, c: &Check) {
    out.push_str("{\"componentId\":");
    string(out, &c.component_id);
    out.push_str(",\"componentType\":");
    string(out, c.component_type);
    out.push_str(",\"status\":\"");
    out.push_str(c.status.as_str());
    out.push_str("\",\"observedValue\":");
    match &c.observed_value {
        ObservedValue::Text(t) => string(out, t),
        ObservedValue::Number(n) if n.is_finite() => {
            let _ = write!(out, "{}", (n * 1000.0).round() / 1000.0);
        }
        ObservedValue::Number(_) => out.push_str("null"),
    }
    if let Some(unit) = c.observed_unit {
        out.push_str(",\"observedUnit\":");
        string(out, unit);
    }
    if let Some(output) = &c.output {
        out.push_str(",\"output\":");
        string(out, output);
    }
    out.push_str(",\"time\":\"");
    rfc3339(out, c.time);
    out.push_str("\"}");
}

/// A JSON string literal.
fn string(out: &mut String, s: &str) {
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `2026-12-02T08:09:26.123Z`, UTC with milliseconds.
fn rfc3339(out: &mut String, t: SystemTime) {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil from days (Howard Hinnant's algorithm), for days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, millis: u64) -> String {
        let mut s = String::new();
        rfc3339(
            &mut s,
            UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis),
        );
        s
    }

    #[test]
    fn formats_rfc3339() {
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(1_796_199_366, 123), "2026-12-02T08:16:06.123Z");
    }

    #[test]
    fn escapes_strings() {
        let mut s = String::new();
        string(&mut s, "a\"b\\c\n\u{1}é");
        assert_eq!(s, r#""a\"b\\c\n\u0001é""#);
    }
}
