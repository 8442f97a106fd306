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

/// Encodes `left` as a `grpc-timeout` value: the finest unit (`n`, `u`, `m`, `S`, `M`, `H`)
/// whose count fits in 8 digits, rounded down, so that the server is never given more time
/// than is left. Above 99,999,999 hours it is `99999999H`.
///
/// The timeout layer in [`respond_grpc`](super::TimeoutLayer::respond_grpc) mode sends it on
/// gRPC requests by itself; this is for stacks that set the header by hand.
///
/// ```
/// use std::time::Duration;
/// use tower_rampart::timeout::{encode_grpc_timeout, parse_grpc_timeout};
///
/// assert_eq!(encode_grpc_timeout(Duration::from_millis(250)), "250000u");
/// assert_eq!(encode_grpc_timeout(Duration::from_secs(3600)), "3600000m");
/// // Rounded down: never more than what is left.
/// let left = Duration::from_nanos(123_456_789_123);
/// let sent = parse_grpc_timeout(&encode_grpc_timeout(left)).unwrap();
/// assert!(sent <= left && left - sent < Duration::from_millis(1));
/// ```
pub fn encode_grpc_timeout(left: Duration) -> HeaderValue {
    const UNITS: [(u128, u8); 6] = [
        (1, b'n'),
        (1_000, b'u'),
        (1_000_000, b'm'),
        (1_000_000_000, b'S'),
        (60_000_000_000, b'M'),
        (3_600_000_000_000, b'H'),
    ];
    let nanos = left.as_nanos();
    let (n, unit) = UNITS
        .iter()
        .map(|&(size, unit)| (nanos / size, unit))
        .find(|&(n, _)| n <= MAX_COUNT)
        .unwrap_or((MAX_COUNT, b'H'));
    // At most 8 digits and a unit, written on the stack: one allocation, the header's own.
    let mut buf = [0u8; 9];
    let mut len = 0;
    let mut rest = u64::try_from(n).unwrap_or(0);
    loop {
        buf[len] = b'0' + (rest % 10) as u8;
        len += 1;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    buf[..len].reverse();
    buf[len] = unit;
    HeaderValue::from_bytes(&buf[..=len]).unwrap_or(HeaderValue::from_static("0n"))
}

/// The largest count `grpc-timeout` holds: 8 digits.
const MAX_COUNT: u128 = 99_999_999;

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

    #[test]
    fn encodings_round_down_and_parse_back() {
        let cases = [
            (Duration::ZERO, "0n"),
            (Duration::from_nanos(99_999_999), "99999999n"),
            (Duration::from_nanos(100_000_001), "100000u"),
            (Duration::from_millis(200), "200000u"),
            (Duration::from_secs(30), "30000000u"),
            (Duration::from_secs(100_000), "100000S"),
            (Duration::from_secs(100_000_000), "1666666M"),
            (Duration::MAX, "99999999H"),
        ];
        for (d, text) in cases {
            let v = encode_grpc_timeout(d);
            assert_eq!(v, text, "{d:?}");
            let back = parse_grpc_timeout(&v).unwrap();
            assert!(back <= d, "{d:?}: {back:?} is more than what is left");
        }
    }
}
