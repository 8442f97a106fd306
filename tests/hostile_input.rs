//! Parsers and decoders under generated hostile input, through the public API only.
//!
//! Every property runs many thousands of cases. Beyond "never panics", each checks what the
//! format promises: agreement with a small reference model written from the specification,
//! round trips, and relations that must hold between two calls (a date hint shrinks exactly as
//! the clock moves on; a decoded record re-encodes to itself).

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use proptest::{prelude::*, sample::Index};
use tower_rampart::{
    classify::{GrpcCode, GrpcResponse, HttpStatus, parse_grpc_pushback, parse_retry_after},
    idempotency::{Completion, IdempotencyKey, StoredResponse},
    timeout::parse_grpc_timeout,
};

/// Cases per property. The file runs in a few seconds in a debug build.
const CASES: u32 = 20_000;

fn config() -> ProptestConfig {
    ProptestConfig::with_cases(CASES)
}

// ---------------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------------

/// One byte that may appear in a `HeaderValue`: tab, visible ASCII and space, or obs-text.
fn header_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        1 => Just(b'\t'),
        6 => 0x20u8..=0x7e,
        2 => 0x80u8..=0xff,
    ]
}

/// Byte strings up to `max` long drawn by `pick` from a seeded generator: far cheaper than a
/// strategy per byte, and shrinking the length still gives prefixes of the same string.
fn seeded(
    max: usize,
    pick: impl Fn(&mut fastrand::Rng) -> u8 + Clone,
) -> impl Strategy<Value = Vec<u8>> {
    (any::<u64>(), 0..=max).prop_map(move |(seed, len)| {
        let mut rng = fastrand::Rng::with_seed(seed);
        (0..len).map(|_| pick(&mut rng)).collect()
    })
}

/// A byte a `HeaderValue` may hold, mostly printable ASCII.
fn pick_header_byte(rng: &mut fastrand::Rng) -> u8 {
    match rng.u8(..) {
        0..=15 => b'\t',
        16..=199 => rng.u8(0x20..=0x7e),
        _ => rng.u8(0x80..),
    }
}

/// Any bytes that form a valid `HeaderValue`.
fn header_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    seeded(max, pick_header_byte)
}

fn value(bytes: &[u8]) -> HeaderValue {
    HeaderValue::from_bytes(bytes).expect("generators only make valid header values")
}

/// Spaces and tabs, which header parsers must see past.
fn blank() -> impl Strategy<Value = String> {
    "[ \t]{0,3}"
}

/// A digit string that may be far beyond `u64`, with leading zeros.
fn digits() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        (0..=20usize, any::<u64>()).prop_map(|(z, n)| format!("{}{n}", "0".repeat(z))),
        "[0-9]{1,60}",
        Just(u64::MAX.to_string()),
        Just("18446744073709551616".to_owned()),
    ]
}

/// The value of a digit string, saturating at `u64::MAX`.
fn saturating_decimal(digits: &str) -> u64 {
    digits.bytes().fold(0u64, |n, d| {
        n.checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(d - b'0')))
            .unwrap_or(u64::MAX)
    })
}

/// Seconds from the epoch to the last second of year 9999, the range of an HTTP-date.
const LAST_HTTP_DATE: u64 = 253_402_300_799;

fn system_time() -> impl Strategy<Value = SystemTime> {
    (0..=LAST_HTTP_DATE, 0..1_000_000_000u32)
        .prop_map(|(s, n)| SystemTime::UNIX_EPOCH + Duration::new(s, n))
}

/// `at` in the three forms HTTP recipients accept: IMF-fixdate, RFC 850 (two-digit year, so
/// only 1970..=2069) and asctime.
fn date_forms(at: u64) -> Vec<String> {
    let imf = httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(at));
    // "Sun, 06 Nov 1994 08:49:37 GMT"
    let (wkday, day, mon, year, time) = (
        &imf[0..3],
        &imf[5..7],
        &imf[8..11],
        &imf[12..16],
        &imf[17..25],
    );
    let mut forms = vec![imf.clone()];
    let asc_day = format!("{:>2}", day.trim_start_matches('0'));
    forms.push(format!("{wkday} {mon} {asc_day} {time} {year}"));
    let y: u32 = year.parse().unwrap();
    if (1970..2070).contains(&y) {
        let long = match wkday {
            "Mon" => "Monday",
            "Tue" => "Tuesday",
            "Wed" => "Wednesday",
            "Thu" => "Thursday",
            "Fri" => "Friday",
            "Sat" => "Saturday",
            _ => "Sunday",
        };
        forms.push(format!("{long}, {day}-{mon}-{} {time} GMT", &year[2..]));
    }
    forms
}

/// Hostile text for `Retry-After`: garbage, numbers of every size and sign, dates in every form
/// and dates with one byte changed.
fn retry_after_text() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => header_bytes(40),
        2 => (blank(), "[-+]?", digits(), "[.,eE]?[0-9]{0,3}", blank())
            .prop_map(|(a, s, d, f, b)| format!("{a}{s}{d}{f}{b}").into_bytes()),
        2 => (0..=LAST_HTTP_DATE, any::<Index>(), blank(), blank()).prop_map(|(at, i, a, b)| {
            let forms = date_forms(at);
            format!("{a}{}{b}", i.get(&forms)).into_bytes()
        }),
        3 => (0..=LAST_HTTP_DATE, any::<Index>(), any::<Index>(), header_byte()).prop_map(
            |(at, form, i, byte)| {
                let forms = date_forms(at);
                let mut text = form.get(&forms).clone().into_bytes();
                let i = i.index(text.len());
                text[i] = byte;
                text
            }
        ),
        1 => (0..=LAST_HTTP_DATE, any::<Index>()).prop_map(|(at, cut)| {
            let text = httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(at));
            text.as_bytes()[..cut.index(text.len())].to_vec()
        }),
    ]
}

// ---------------------------------------------------------------------------------------------
// Retry-After
// ---------------------------------------------------------------------------------------------

/// The trimmed text when it is delay-seconds.
fn delay_seconds(raw: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(raw).ok()?.trim_matches([' ', '\t']);
    (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())).then_some(text)
}

proptest! {
    #![proptest_config(config())]

    /// Whatever the bytes: delay-seconds give their value (saturating), independent of the
    /// clock; anything else that parses is a date, whose hint shrinks exactly as the clock moves
    /// on and stops at zero.
    #[test]
    fn retry_after_hostile_text(
        raw in retry_after_text(),
        now in system_time(),
        step in prop_oneof![Just(Duration::ZERO), (0..4_000_000_000_000u64).prop_map(Duration::from_millis)],
    ) {
        let v = value(&raw);
        let first = parse_retry_after(&v, now);
        let later = parse_retry_after(&v, now + step);
        prop_assert_eq!(first.is_some(), later.is_some(), "the clock cannot make a hint valid");
        if let Some(text) = delay_seconds(&raw) {
            prop_assert_eq!(first, Some(Duration::from_secs(saturating_decimal(text))));
            prop_assert_eq!(later, first);
        } else if let (Some(first), Some(later)) = (first, later) {
            prop_assert_eq!(first.checked_sub(later), Some(step.min(first)), "a date hint follows the clock");
            let at = httpdate::parse_http_date(std::str::from_utf8(&raw).unwrap().trim());
            prop_assert!(at.is_ok(), "only dates give a hint besides delay-seconds");
        }
        if raw.iter().any(|&b| b >= 0x80) {
            prop_assert_eq!(first, None, "not ASCII: not a Retry-After");
        }
    }

    /// Delay-seconds round trip, with surrounding spaces; negatives and fractions are refused.
    #[test]
    fn retry_after_seconds(n in any::<u64>(), zeros in 0..30usize, a in blank(), b in blank(), now in system_time()) {
        let text = format!("{a}{}{n}{b}", "0".repeat(zeros));
        prop_assert_eq!(parse_retry_after(&value(text.as_bytes()), now), Some(Duration::from_secs(n)));
        for bad in [format!("-{n}"), format!("{n}.5"), format!("+{n}"), format!("{n}s"), format!("{n} 1")] {
            prop_assert_eq!(parse_retry_after(&value(bad.as_bytes()), now), None, "{}", bad);
        }
    }

    /// A date in any of the three forms gives the time until it, to the second, or zero once
    /// it has passed.
    #[test]
    fn retry_after_dates(at in 0..=LAST_HTTP_DATE, now in system_time(), a in blank(), b in blank()) {
        let when = SystemTime::UNIX_EPOCH + Duration::from_secs(at);
        let expected = when.duration_since(now).unwrap_or(Duration::ZERO);
        for form in date_forms(at) {
            let text = format!("{a}{form}{b}");
            prop_assert_eq!(parse_retry_after(&value(text.as_bytes()), now), Some(expected), "{}", text);
        }
    }

    /// The HTTP classifier reads the same header the same way (whether there is a hint does not
    /// depend on the clock, so the two calls agree).
    #[test]
    fn http_classifier_hint_matches_the_parser(raw in retry_after_text()) {
        let v = value(&raw);
        let mut headers = HeaderMap::new();
        headers.insert(http::header::RETRY_AFTER, v.clone());
        let outcome = HttpStatus::retryable().classify_status(StatusCode::SERVICE_UNAVAILABLE, &headers);
        prop_assert!(outcome.is_failure());
        prop_assert_eq!(
            outcome.retry_after().is_some(),
            parse_retry_after(&v, SystemTime::now()).is_some()
        );
        if let Some(text) = delay_seconds(&raw) {
            prop_assert_eq!(outcome.retry_after(), Some(Duration::from_secs(saturating_decimal(text))));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// gRPC: grpc-timeout, grpc-retry-pushback-ms, grpc-status
// ---------------------------------------------------------------------------------------------

/// `grpc-timeout` from the gRPC over HTTP/2 specification: `TimeoutValue TimeoutUnit`, a value
/// of at most 8 ASCII digits and one of `H M S m u n`.
fn grpc_timeout_model(raw: &[u8]) -> Option<Duration> {
    let (&unit, digits) = raw.split_last()?;
    if !(1..=8).contains(&digits.len()) || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = u128::from(saturating_decimal(std::str::from_utf8(digits).ok()?));
    let nanos = n * match unit {
        b'H' => 3_600_000_000_000,
        b'M' => 60_000_000_000,
        b'S' => 1_000_000_000,
        b'm' => 1_000_000,
        b'u' => 1_000,
        b'n' => 1,
        _ => return None,
    };
    let secs = u64::try_from(nanos / 1_000_000_000).unwrap();
    Some(Duration::new(secs, (nanos % 1_000_000_000) as u32))
}

fn grpc_timeout_text() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => header_bytes(16),
        3 => ("[ \t]?", "[-+]?", "[0-9]{0,10}", "[HMSmunhs ]?", "[ \t]?")
            .prop_map(|(a, s, d, u, b)| format!("{a}{s}{d}{u}{b}").into_bytes()),
        1 => ("[0-9]{1,8}", header_byte()).prop_map(|(d, u)| {
            let mut raw = d.into_bytes();
            raw.push(u);
            raw
        }),
    ]
}

fn pushback_text() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => header_bytes(24),
        3 => (blank(), "[-+]?", digits(), "[.ms]?", blank())
            .prop_map(|(a, s, d, u, b)| format!("{a}{s}{d}{u}{b}").into_bytes()),
    ]
}

/// `grpc-retry-pushback-ms`: a non-negative integer of milliseconds; anything else (negative,
/// unparsable, too large for `u64`) means "do not retry", which the parser reports as `None`.
fn pushback_model(raw: &[u8]) -> Option<Duration> {
    let text = delay_seconds(raw)?;
    text.parse::<u64>().ok().map(Duration::from_millis)
}

proptest! {
    #![proptest_config(config())]

    /// Every value agrees with the specification's grammar.
    #[test]
    fn grpc_timeout_hostile_text(raw in grpc_timeout_text()) {
        prop_assert_eq!(parse_grpc_timeout(&value(&raw)), grpc_timeout_model(&raw), "{:?}", String::from_utf8_lossy(&raw));
    }

    /// Every valid value round-trips, zero-padded or not; a ninth digit is refused.
    #[test]
    fn grpc_timeout_round_trip(n in 0..=99_999_999u64, unit in proptest::sample::select(b"HMSmun".to_vec()), pad in any::<bool>()) {
        let text = if pad { format!("{n:08}{}", unit as char) } else { format!("{n}{}", unit as char) };
        let per_unit = match unit {
            b'H' => Duration::from_secs(3600),
            b'M' => Duration::from_secs(60),
            b'S' => Duration::from_secs(1),
            b'm' => Duration::from_millis(1),
            b'u' => Duration::from_micros(1),
            _ => Duration::from_nanos(1),
        };
        let expected = per_unit * u32::try_from(n).unwrap();
        prop_assert_eq!(parse_grpc_timeout(&value(text.as_bytes())), Some(expected));
        let nine = format!("1{n:08}{}", unit as char);
        prop_assert_eq!(parse_grpc_timeout(&value(nine.as_bytes())), None);
    }

    /// Every push-back value agrees with the model, and the gRPC classifier turns an invalid one
    /// into `Duration::MAX` ("do not retry") and a valid one into the hint.
    #[test]
    fn grpc_pushback_hostile_text(raw in pushback_text()) {
        let v = value(&raw);
        let parsed = parse_grpc_pushback(&v);
        prop_assert_eq!(parsed, pushback_model(&raw));
        let res = http::Response::builder()
            .header("grpc-status", "14")
            .header("grpc-retry-pushback-ms", v)
            .body(())
            .unwrap();
        let outcome = GrpcResponse::default().classify_head(res.status(), res.headers());
        prop_assert_eq!(outcome.retry_after(), Some(parsed.unwrap_or(Duration::MAX)));
    }

    /// Push-back round trip, with surrounding spaces; negative values are "do not retry".
    #[test]
    fn grpc_pushback_round_trip(n in any::<u64>(), a in blank(), b in blank()) {
        let ok = format!("{a}{n}{b}");
        prop_assert_eq!(parse_grpc_pushback(&value(ok.as_bytes())), Some(Duration::from_millis(n)));
        let negative = format!("{a}-{n}{b}");
        prop_assert_eq!(parse_grpc_pushback(&value(negative.as_bytes())), None);
    }

    /// `grpc-status`: a number names its code; junk and unknown numbers are UNKNOWN.
    #[test]
    fn grpc_status_hostile_text(raw in prop_oneof![header_bytes(12), (blank(), "-?[0-9]{1,12}", blank()).prop_map(|(a, d, b)| format!("{a}{d}{b}").into_bytes())]) {
        let code = GrpcCode::from_header(&value(&raw));
        let expected = std::str::from_utf8(&raw)
            .ok()
            .and_then(|t| t.trim_matches([' ', '\t']).parse::<i32>().ok())
            .map_or(GrpcCode::Unknown, GrpcCode::from_i32);
        prop_assert_eq!(code, expected);
    }
}

// ---------------------------------------------------------------------------------------------
// Idempotency-Key
// ---------------------------------------------------------------------------------------------

const MAX_KEY: usize = 255;

/// The key a header value names, from RFC 8941 (sf-string) and the bare-token form: `None` for a
/// refused value.
fn key_model(raw: &[u8]) -> Option<String> {
    let raw = raw.trim_ascii();
    let key = if let Some(rest) = raw.strip_prefix(b"\"") {
        let mut out = String::new();
        let mut i = 0;
        loop {
            match *rest.get(i)? {
                b'\\' => match rest.get(i + 1)? {
                    c @ (b'"' | b'\\') => {
                        out.push(char::from(*c));
                        i += 2;
                    }
                    _ => return None,
                },
                b'"' if i + 1 == rest.len() => break out,
                b'"' => return None,
                c @ 0x20..=0x7e => {
                    out.push(char::from(c));
                    i += 1;
                }
                _ => return None,
            }
        }
    } else {
        if !raw.iter().all(|&b| (0x21..=0x7e).contains(&b) && b != b'"') {
            return None;
        }
        String::from_utf8(raw.to_vec()).ok()?
    };
    (1..=MAX_KEY).contains(&key.len()).then_some(key)
}

/// Header bytes rich in what matters to the key grammar: quotes, backslashes, spaces, tabs.
fn key_text() -> impl Strategy<Value = Vec<u8>> {
    let pick = |rng: &mut fastrand::Rng| match rng.u8(..16) {
        0..=2 => b'"',
        3..=5 => b'\\',
        6..=7 => b' ',
        8 => b'\t',
        9 => rng.u8(0x80..),
        _ => rng.u8(0x21..=0x7e),
    };
    prop_oneof![
        4 => seeded(24, pick),
        1 => header_bytes(300),
        2 => (blank(), seeded(30, |rng| rng.u8(0x20..=0x7e)), blank()).prop_map(|(a, k, b)| {
            let mut raw = a.into_bytes();
            raw.push(b'"');
            raw.extend(k);
            raw.push(b'"');
            raw.extend(b.into_bytes());
            raw
        }),
        1 => (250..=260usize, any::<bool>()).prop_map(|(n, quoted)| {
            let k = "k".repeat(n);
            if quoted { format!("\"{k}\"") } else { k }.into_bytes()
        }),
    ]
}

/// A key of 1..=255 characters drawn from `low..=0x7e`, leaving out `"` unless `quotes`.
fn key(low: u8, quotes: bool) -> impl Strategy<Value = String> {
    seeded(MAX_KEY - 1, move |rng| {
        loop {
            let b = rng.u8(low..=0x7e);
            if quotes || b != b'"' {
                return b;
            }
        }
    })
    .prop_map(|mut k| {
        k.push(b'k');
        String::from_utf8(k).unwrap()
    })
}

/// `key` as an sf-string.
fn quote(key: &str) -> String {
    let mut out = String::from("\"");
    for c in key.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

proptest! {
    #![proptest_config(config())]

    /// Any header value: accepted exactly when the grammar accepts it, with the same key, and an
    /// accepted key is 1..=255 printable ASCII characters.
    #[test]
    fn idempotency_key_hostile_text(raw in key_text()) {
        let parsed = IdempotencyKey::parse(&value(&raw));
        let model = key_model(&raw);
        prop_assert_eq!(
            parsed.as_ref().ok().map(|k| k.as_str().to_owned()),
            model,
            "{:?} -> {:?}",
            String::from_utf8_lossy(&raw),
            parsed
        );
        if let Ok(k) = parsed {
            prop_assert!((1..=MAX_KEY).contains(&k.as_str().len()));
            prop_assert!(k.as_str().bytes().all(|b| (0x20..=0x7e).contains(&b)));
        }
    }

    /// The quoted and the bare form of a key are the same key.
    #[test]
    fn idempotency_key_quoted_equals_bare(key in key(0x21, false), a in blank(), b in blank()) {
        let bare = IdempotencyKey::parse(&value(format!("{a}{key}{b}").as_bytes())).unwrap();
        let quoted = IdempotencyKey::parse(&value(format!("{a}{}{b}", quote(&key)).as_bytes())).unwrap();
        prop_assert_eq!(bare.as_str(), key.as_str());
        prop_assert_eq!(&quoted, &bare);
    }

    /// Any key, spaces and quotes included, survives quoting; one character too many is refused
    /// in both forms.
    #[test]
    fn idempotency_key_round_trip(key in key(0x20, true), extra in "[!#-~]{1,40}") {
        let parsed = IdempotencyKey::parse(&value(quote(&key).as_bytes())).unwrap();
        prop_assert_eq!(parsed.as_str(), key.as_str());
        let long = format!("{}{extra}", "k".repeat(MAX_KEY + 1 - extra.len().min(MAX_KEY)));
        prop_assert!(long.len() > MAX_KEY);
        prop_assert!(IdempotencyKey::parse(&value(long.as_bytes())).is_err());
        prop_assert!(IdempotencyKey::parse(&value(quote(&long).as_bytes())).is_err());
    }
}

// ---------------------------------------------------------------------------------------------
// Idempotency records
// ---------------------------------------------------------------------------------------------

fn header_name() -> impl Strategy<Value = HeaderName> {
    const TCHAR: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-.^_`|~";
    prop_oneof![
        2 => seeded(23, |rng| TCHAR[rng.usize(..TCHAR.len())]).prop_map(|mut n| {
            n.push(b'x');
            HeaderName::from_bytes(&n).unwrap()
        }),
        1 => proptest::sample::select(vec![
            http::header::CONTENT_TYPE,
            http::header::LOCATION,
            http::header::ETAG,
            http::header::VARY,
        ]),
    ]
}

fn header_map() -> impl Strategy<Value = HeaderMap> {
    proptest::collection::vec((header_name(), header_bytes(40)), 0..12).prop_map(|hs| {
        let mut map = HeaderMap::new();
        for (name, v) in hs {
            map.append(name, value(&v));
        }
        map
    })
}

fn completion() -> impl Strategy<Value = Completion> {
    let status = (100u16..=999).prop_map(|s| StatusCode::from_u16(s).unwrap());
    let body = seeded(300, |rng| rng.u8(..)).prop_map(Bytes::from);
    let trailers = proptest::option::of(header_map());
    prop_oneof![
        4 => (status.clone(), header_map(), body, trailers).prop_map(
            |(status, headers, body, trailers)| {
                Completion::Response(StoredResponse { status, headers, body, trailers })
            }
        ),
        1 => status.prop_map(|status| Completion::NotReplayable { status }),
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    Truncate(Index),
    Set(Index, u8),
    Insert(Index, u8),
    Remove(Index, usize),
    /// Four bytes that look like a huge length or count.
    Huge(Index, [u8; 4]),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<Index>(), 1..8usize).prop_map(|(i, n)| Mutation::Remove(i, n)),
        (
            any::<Index>(),
            proptest::sample::select(vec![
                [0xff, 0xff, 0xff, 0xff],
                [0x7f, 0xff, 0xff, 0xff],
                [0x00, 0x00, 0x9c, 0x40],
                [0x00, 0x01, 0x00, 0x00],
                [0x00, 0x00, 0xff, 0xff],
            ])
        )
            .prop_map(|(i, w)| Mutation::Huge(i, w)),
    ]
}

fn mutate(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    match m {
        Mutation::Truncate(i) => bytes.truncate(i.index(bytes.len())),
        Mutation::Set(i, b) => {
            let i = i.index(bytes.len());
            bytes[i] = *b;
        }
        Mutation::Insert(i, b) => {
            let i = i.index(bytes.len() + 1);
            bytes.insert(i, *b);
        }
        Mutation::Remove(i, n) => {
            let i = i.index(bytes.len());
            let end = (i + n).min(bytes.len());
            bytes.drain(i..end);
        }
        Mutation::Huge(i, w) => {
            let i = i.index(bytes.len());
            for (k, b) in w.iter().enumerate() {
                if let Some(slot) = bytes.get_mut(i + k) {
                    *slot = *b;
                }
            }
        }
    }
}

/// A decoded record must be one `encode` can write, and write back to the same record.
fn check_decoded(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(c) = Completion::decode(bytes) {
        let again = Completion::decode(&c.encode());
        prop_assert_eq!(
            again.as_ref(),
            Ok(&c),
            "a decoded record re-encodes to itself"
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// Every record round-trips.
    #[test]
    fn completion_round_trip(c in completion()) {
        let bytes = c.encode();
        prop_assert_eq!(Completion::decode(&bytes), Ok(c));
    }

    /// Arbitrary bytes decode or fail; never panic.
    #[test]
    fn completion_decode_arbitrary_bytes(
        bytes in prop_oneof![
            seeded(64, |rng| rng.u8(..)),
            seeded(1024, |rng| rng.u8(..)),
            // Plausible heads (version and kind 1 or 2) on random tails.
            (1..=2u8, 1..=2u8, seeded(256, |rng| rng.u8(..))).prop_map(|(v, k, tail)| {
                let mut b = vec![v, k];
                b.extend(tail);
                b
            }),
        ],
    ) {
        check_decoded(&bytes)?;
    }

    /// Valid records with a few bytes changed, inserted, removed or cut decode or fail; a strict
    /// prefix of a record is never taken for a whole one (a half-written record must not replay
    /// a truncated body).
    #[test]
    fn completion_decode_mutated(
        c in completion(),
        mutations in proptest::collection::vec(mutation(), 1..4),
        cut in any::<Index>(),
    ) {
        let bytes = c.encode().to_vec();
        let prefix = &bytes[..cut.index(bytes.len())];
        prop_assert!(Completion::decode(prefix).is_err(), "a prefix of {} bytes decoded", prefix.len());
        let mut hostile = bytes.clone();
        for m in &mutations {
            mutate(&mut hostile, m);
        }
        check_decoded(&hostile)?;
    }
}

/// A version-1 record (version, kind, status, header count, headers, body; big-endian length
/// prefixes) written by hand, so it can claim more headers than a `HeaderMap` holds. Version 1
/// is an older form that decoders keep reading.
fn v1_record(status: u16, count: u32, headers: &[(Vec<u8>, Vec<u8>)], body: &[u8]) -> Vec<u8> {
    let mut out = vec![1, 1];
    out.extend_from_slice(&status.to_be_bytes());
    out.extend_from_slice(&count.to_be_bytes());
    for (name, value) in headers {
        out.extend_from_slice(&u16::try_from(name.len()).unwrap().to_be_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(&u32::try_from(value.len()).unwrap().to_be_bytes());
        out.extend_from_slice(value);
    }
    out.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// 40,000 distinct tiny headers: more than a `HeaderMap` can hold (it panics on `append` past its
/// limit), so the decoder must refuse the record, not crash.
#[test]
fn completion_with_more_headers_than_a_header_map_holds() {
    // The hand-written layout is still one the decoder reads; otherwise this test would prove
    // nothing and `v1_record` must follow the format.
    let small = v1_record(
        200,
        2,
        &[(b"a".to_vec(), b"1".to_vec()), (b"b".to_vec(), Vec::new())],
        b"x",
    );
    let mut headers = HeaderMap::new();
    headers.append("a", HeaderValue::from_static("1"));
    headers.append("b", HeaderValue::from_static(""));
    assert_eq!(
        Completion::decode(&small),
        Ok(Completion::Response(StoredResponse {
            status: StatusCode::OK,
            headers,
            body: Bytes::from_static(b"x"),
            trailers: None,
        })),
        "v1_record no longer matches the record format"
    );

    let many: Vec<_> = (0..40_000u32)
        .map(|i| (format!("h{i:x}").into_bytes(), Vec::new()))
        .collect();
    let huge = v1_record(200, 40_000, &many, b"");
    let decoded = std::panic::catch_unwind(|| Completion::decode(&huge));
    let decoded = decoded.expect("decoding 40,000 headers panicked");
    assert!(decoded.is_err(), "no HeaderMap holds 40,000 names");
    // The same name 40,000 times is one header with many values: decodable or refused.
    let same: Vec<_> = (0..40_000)
        .map(|_| (b"h".to_vec(), b"v".to_vec()))
        .collect();
    let _ = Completion::decode(&v1_record(200, 40_000, &same, b""));
    // A count far beyond the bytes present: refused, without reserving room for it.
    assert!(Completion::decode(&v1_record(200, u32::MAX, &[], b"")).is_err());
}
