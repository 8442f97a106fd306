//! The layer's answers: `application/problem+json` (RFC 9457) with a stable `type` per case.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::retry::Buffered;

/// The `type` URIs of the layer's problem responses.
pub mod problem_types {
    /// 400: the request needs an `Idempotency-Key` and has none.
    pub const MISSING_KEY: &str =
        "https://docs.rs/tower-rampart/latest/tower_rampart/problems#idempotency-key-missing";
    /// 400: the `Idempotency-Key` is not a valid key.
    pub const INVALID_KEY: &str =
        "https://docs.rs/tower-rampart/latest/tower_rampart/problems#idempotency-key-invalid";
    /// 409: the first request with this key is still running.
    pub const IN_FLIGHT: &str =
        "https://docs.rs/tower-rampart/latest/tower_rampart/problems#idempotency-key-in-flight";
    /// 422: the key was used for a different request.
    pub const MISMATCH: &str =
        "https://docs.rs/tower-rampart/latest/tower_rampart/problems#idempotency-key-reused";
    /// 409: the key completed, but its response was too large or streamed, so it cannot be
    /// replayed; the request was not run again.
    pub const NOT_REPLAYABLE: &str = "https://docs.rs/tower-rampart/latest/tower_rampart/problems#idempotency-response-not-replayable";
    /// 413: the request body is larger than the layer's limit.
    pub const TOO_LARGE: &str =
        "https://docs.rs/tower-rampart/latest/tower_rampart/problems#idempotency-request-too-large";
    /// 400: the request body could not be read.
    pub const UNREADABLE_BODY: &str = "https://docs.rs/tower-rampart/latest/tower_rampart/problems#idempotency-request-unreadable";
    /// 503: the idempotency store failed or did not answer in time.
    pub const STORE_UNAVAILABLE: &str =
        "https://docs.rs/tower-rampart/latest/tower_rampart/problems#idempotency-store-unavailable";
    /// 400: the layer scopes keys by principal and this request has none.
    pub const NO_PRINCIPAL: &str =
        "https://docs.rs/tower-rampart/latest/tower_rampart/problems#idempotency-principal-missing";
    /// 503: the store is at its size bound and takes no new key for now.
    pub const STORE_FULL: &str =
        "https://docs.rs/tower-rampart/latest/tower_rampart/problems#idempotency-store-full";
    /// 500: the key's stored record cannot be read (corrupt, or written by an unknown
    /// version); the request was not run.
    pub const UNREADABLE_RECORD: &str =
        "https://docs.rs/tower-rampart/latest/tower_rampart/problems#idempotency-record-unreadable";
    /// 500: the handler panicked; the key was released.
    pub const HANDLER_FAILED: &str =
        "https://docs.rs/tower-rampart/latest/tower_rampart/problems#idempotency-handler-failed";
}

/// A problem+json response, with `Retry-After` (whole seconds, at least 1) when given.
pub(crate) fn problem<B>(
    status: StatusCode,
    kind: &str,
    detail: &str,
    retry_after: Option<Duration>,
) -> Response<Buffered<B>> {
    let title = status.canonical_reason().unwrap_or("Error");
    let body = format!(
        "{{\"type\":\"{kind}\",\"title\":\"{title}\",\"status\":{},\"detail\":\"{}\"}}",
        status.as_u16(),
        escape(detail)
    );
    let mut res = Response::new(Buffered::full(Bytes::from(body)));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    if let Some(wait) = retry_after {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
    res
}

/// `s` as the inside of a JSON string: quotes, backslashes and every control character escaped.
fn escape(s: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn escapes_every_control_character() {
        for c in (0u32..0x80).filter_map(char::from_u32) {
            let text = format!("a{c}b");
            let json = format!("\"{}\"", escape(&text));
            assert!(
                json.chars().all(|c| u32::from(c) >= 0x20 && c != '\u{7f}'),
                "{json:?}"
            );
            // Decoding gives the text back.
            let back: String = serde_json::from_str(&json).unwrap();
            assert_eq!(back, text);
        }
    }
}
