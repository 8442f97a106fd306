//! The crate's one writer of `application/problem+json` (RFC 9457) answers: the circuit
//! breaker's 503, the timeout's 504 and the Idempotency-Key layer's 4xx/5xx all come from
//! [`response`]. The `type` URIs it is given live in [`crate::problems`].

use std::{
    fmt::{self, Write},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

/// A problem+json response with `status`: the body holds `type` (`kind`), `title` (the status's
/// canonical reason), `status` and `detail`, every string escaped; `Retry-After` is set, in whole
/// seconds, when `retry_after` is given. `body` turns the finished JSON into the caller's body
/// type (`B::from`, `Buffered::full`), so the body is written once and never copied.
pub(crate) fn response<B>(
    status: StatusCode,
    kind: &str,
    detail: impl fmt::Display,
    retry_after: Option<Duration>,
    body: impl FnOnce(Bytes) -> B,
) -> Response<B> {
    let mut res = Response::new(body(Bytes::from(json(status, kind, detail))));
    *res.status_mut() = status;
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    if let Some(wait) = retry_after {
        headers.insert(
            header::RETRY_AFTER,
            HeaderValue::from(retry_after_secs(wait)),
        );
    }
    res
}

/// `wait` as `Retry-After` delay-seconds: whole seconds rounded up, at least 1 (a zero would
/// invite an immediate retry storm), saturating instead of overflowing for `Duration::MAX`.
pub(crate) fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs()
        .saturating_add(u64::from(wait.subsec_nanos() > 0))
        .max(1)
}

/// The JSON object, written into one buffer: `detail` is formatted straight through the
/// escaper, so it needs no `String` of its own.
fn json(status: StatusCode, kind: &str, detail: impl fmt::Display) -> String {
    let title = status.canonical_reason().unwrap_or("Error");
    // The fixed text is 47 bytes; the crate's details (up to ~130 bytes) fit in the rest.
    let mut out = String::with_capacity(192 + kind.len() + title.len());
    out.push_str("{\"type\":\"");
    escape_into(&mut out, kind);
    out.push_str("\",\"title\":\"");
    escape_into(&mut out, title);
    out.push_str("\",\"status\":");
    out.push_str(status.as_str());
    out.push_str(",\"detail\":\"");
    // Writing to a `String` cannot fail; only a `Display` impl that reports an error could.
    let _ = write!(Escaper(&mut out), "{detail}");
    out.push_str("\"}");
    out
}

/// Appends `s` as the inside of a JSON string: quotes, backslashes and every control character
/// (U+0000 to U+001F and U+007F) escaped; runs of other characters are copied whole.
fn escape_into(out: &mut String, s: &str) {
    let mut copied = 0;
    for (i, c) in s.char_indices() {
        let escaped = match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            c if u32::from(c) < 0x20 || c == '\u{7f}' => "",
            _ => continue,
        };
        out.push_str(&s[copied..i]);
        if escaped.is_empty() {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push_str(escaped);
        }
        copied = i + c.len_utf8();
    }
    out.push_str(&s[copied..]);
}

/// A `fmt::Write` that escapes what is written to it into the `String` it wraps.
struct Escaper<'a>(&'a mut String);

impl Write for Escaper<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        escape_into(self.0, s);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_of(res: &Response<Bytes>) -> serde_json::Value {
        serde_json::from_slice(res.body()).expect("valid JSON")
    }

    #[test]
    fn escapes_every_control_character() {
        for c in (0u32..0x80).chain([0x80, 0x9f, 0x2028, 0xfeff, 0x1f600]) {
            let c = char::from_u32(c).unwrap();
            let text = format!("a{c}b\"\\{c}");
            let mut inner = String::new();
            escape_into(&mut inner, &text);
            assert!(
                inner.chars().all(|c| u32::from(c) >= 0x20 && c != '\u{7f}'),
                "{inner:?}"
            );
            // Decoding gives the text back.
            let back: String = serde_json::from_str(&format!("\"{inner}\"")).unwrap();
            assert_eq!(back, text);
        }
    }

    #[test]
    fn every_field_round_trips() {
        let detail = "quote \" backslash \\ newline \n nul \0 del \u{7f} é ✓";
        let res = response(
            StatusCode::CONFLICT,
            "https://example.com/p#x",
            detail,
            None,
            Bytes::from,
        );
        assert_eq!(res.status(), StatusCode::CONFLICT);
        assert_eq!(
            res.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        assert!(res.headers().get(header::RETRY_AFTER).is_none());
        let v = body_of(&res);
        assert_eq!(v["type"], "https://example.com/p#x");
        assert_eq!(v["title"], "Conflict");
        assert_eq!(v["status"], 409);
        assert_eq!(v["detail"], detail);
        assert_eq!(v.as_object().unwrap().len(), 4);
    }

    #[test]
    fn display_details_are_escaped_as_they_are_written() {
        struct Parts;
        impl fmt::Display for Parts {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let control = '\u{1}';
                write!(f, "a\"{control}\n{:.1}", 1.25)
            }
        }
        let res = response(StatusCode::OK, "t", Parts, None, Bytes::from);
        assert_eq!(body_of(&res)["detail"], "a\"\u{1}\n1.2");
    }

    #[test]
    fn unregistered_status_gets_a_title() {
        let status = StatusCode::from_u16(599).unwrap();
        let v = body_of(&response(status, "t", "d", None, Bytes::from));
        assert_eq!(v["status"], 599);
        assert_eq!(v["title"], "Error");
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up_and_at_least_one() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_nanos(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1200)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(7)), 7);
        assert_eq!(retry_after_secs(Duration::MAX), u64::MAX);
        assert_eq!(retry_after_secs(Duration::new(u64::MAX - 1, 1)), u64::MAX);

        let header = |wait| {
            response(
                StatusCode::SERVICE_UNAVAILABLE,
                "t",
                "d",
                Some(wait),
                Bytes::from,
            )
            .headers()[header::RETRY_AFTER]
                .to_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(header(Duration::ZERO), "1");
        assert_eq!(header(Duration::from_millis(1200)), "2");
        assert_eq!(header(Duration::MAX), u64::MAX.to_string());
    }
}
