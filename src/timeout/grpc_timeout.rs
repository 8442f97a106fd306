//! The gRPC `grpc-timeout` request header.

use std::time::Duration;

use http::HeaderValue;

/// Parses `grpc-timeout`: at most 8 digits and a unit (`H`ours, `M`inutes, `S`econds,
/// `m`illis, `u`micros, `n`anos). Anything else gives `None`.
///
/// ```
/// use std::time::Duration;
/// use http::HeaderValue;
/// use tower_rampart::timeout::parse_grpc_timeout;
///
/// assert_eq!(parse_grpc_timeout(&HeaderValue::from_static("250m")), Some(Duration::from_millis(250)));
/// assert_eq!(parse_grpc_timeout(&HeaderValue::from_static("1H")), Some(Duration::from_secs(3600)));
/// assert_eq!(parse_grpc_timeout(&HeaderValue::from_static("123456789S")), None);
/// ```
pub fn parse_grpc_timeout(value: &HeaderValue) -> Option<Duration> {
    let bytes = value.as_bytes();
    let (unit, digits) = bytes.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let p = |s: &'static str| parse_grpc_timeout(&HeaderValue::from_static(s));
        assert_eq!(p("5S"), Some(Duration::from_secs(5)));
        assert_eq!(p("2M"), Some(Duration::from_secs(120)));
        assert_eq!(p("10u"), Some(Duration::from_micros(10)));
        assert_eq!(p("99999999n"), Some(Duration::from_nanos(99_999_999)));
        assert_eq!(p("S"), None);
        assert_eq!(p("5"), None);
        assert_eq!(p("5s"), None);
        assert_eq!(p("-5S"), None);
        assert_eq!(p(""), None);
    }
}
