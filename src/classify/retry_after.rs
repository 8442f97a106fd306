//! Parsing of the hints downstreams give about when to come back.

use std::time::{Duration, SystemTime};

use http::HeaderValue;

/// Parses an HTTP `Retry-After` value: delay-seconds (`120`) or an HTTP-date
/// (`Wed, 21 Oct 2015 07:28:00 GMT`), relative to `now`.
///
/// A date in the past gives `Duration::ZERO`; anything unparsable gives `None`.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use http::HeaderValue;
/// use tower_rampart::classify::parse_retry_after;
///
/// let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_000);
/// assert_eq!(parse_retry_after(&HeaderValue::from_static("120"), now), Some(Duration::from_secs(120)));
/// assert_eq!(
///     parse_retry_after(&HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"), now),
///     Some(Duration::from_secs(1_445_412_480 - 1_445_412_000)),
/// );
/// assert_eq!(parse_retry_after(&HeaderValue::from_static("soon"), now), None);
/// ```
pub fn parse_retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        // Over-long digit strings saturate instead of failing: "a very long time" is still a hint.
        let secs = text.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Parses gRPC's `grpc-retry-pushback-ms` value.
///
/// gRPC defines a negative or unparsable push-back as "do not retry"; that case gives `None`.
///
/// ```
/// use std::time::Duration;
/// use http::HeaderValue;
/// use tower_rampart::classify::parse_grpc_pushback;
///
/// assert_eq!(parse_grpc_pushback(&HeaderValue::from_static("250")), Some(Duration::from_millis(250)));
/// assert_eq!(parse_grpc_pushback(&HeaderValue::from_static("-1")), None);
/// ```
pub fn parse_grpc_pushback(value: &HeaderValue) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u64>().ok().map(Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let v = |s: &'static str| parse_retry_after(&HeaderValue::from_static(s), now);
        assert_eq!(v("0"), Some(Duration::ZERO));
        assert_eq!(v(" 5 "), Some(Duration::from_secs(5)));
        assert_eq!(
            v("99999999999999999999999"),
            Some(Duration::from_secs(u64::MAX))
        );
        assert_eq!(v("-5"), None);
        assert_eq!(v("1.5"), None);
        assert_eq!(v(""), None);
        // A date in the past: come back now.
        assert_eq!(v("Sun, 06 Nov 1994 08:49:37 GMT"), Some(Duration::ZERO));
        assert_eq!(v("Sun, 06 Nov 1994 08:49:37"), None);
        let bytes = HeaderValue::from_bytes(b"\xff\xfe").unwrap();
        assert_eq!(parse_retry_after(&bytes, now), None);
    }

    #[test]
    fn pushback_forms() {
        let v = |s: &'static str| parse_grpc_pushback(&HeaderValue::from_static(s));
        assert_eq!(v("0"), Some(Duration::ZERO));
        assert_eq!(v("1500"), Some(Duration::from_millis(1500)));
        assert_eq!(v("-100"), None);
        assert_eq!(v("abc"), None);
        assert_eq!(v("99999999999999999999999"), None);
    }
}
