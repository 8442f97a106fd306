//! Every problem response the crate sends: the `type` URIs of its `application/problem+json`
//! (RFC 9457) answers, each pointing at its own heading on this page.
//!
//! A layer in HTTP response mode answers with a body like
//!
//! ```json
//! {"type":"https://docs.rs/tower-rampart/latest/tower_rampart/problems#idempotency-key-missing",
//!  "title":"Bad Request","status":400,"detail":"this request needs an Idempotency-Key header"}
//! ```
//!
//! - `type`: one of the constants of this module. Match on it, not on `detail` or `title`.
//! - `title`: the status code's reason phrase.
//! - `status`: the HTTP status code, as on the response.
//! - `detail`: a human-readable explanation of this occurrence; its wording may change.
//!
//! Where the layer knows how long to wait, the response has a `Retry-After` header in whole
//! seconds, rounded up and at least 1.
//!
//! ```
//! use tower_rampart::{idempotency::problem_types, problems};
//!
//! // The modules' own names are the same strings.
//! assert_eq!(problem_types::MISSING_KEY, problems::IDEMPOTENCY_KEY_MISSING);
//! assert!(problems::CIRCUIT_OPEN.ends_with("/problems#circuit-open"));
//! ```
//!
//! # Circuit breaker layer
//!
//! ## circuit-open
//!
//! [`CIRCUIT_OPEN`]: **503 Service Unavailable**, sent by a
//! [`CircuitBreakerLayer`](crate::circuit_breaker::CircuitBreakerLayer) in HTTP response mode
//! (also in the server [`pipeline`](crate::pipeline)). The response's extensions hold the
//! [`CircuitOpen`](crate::circuit_breaker::CircuitOpen).
//!
//! - **When:** the breaker refused the call without making it: the circuit is open because the
//!   downstream has been failing or slow, it was forced open, or it is half-open and all its
//!   probe calls are taken.
//! - **Retry:** yes, after `Retry-After` (the time until the breaker lets a probe through).
//!   Without `Retry-After` (forced open, or no known wait) back off before retrying. The request
//!   was not run, so retrying is safe for any method.
//!
//! # Timeout layer
//!
//! ## timeout
//!
//! [`TIMEOUT`]: **504 Gateway Timeout** (or the status the layer was configured to answer, e.g.
//! 503), sent by a [`TimeoutLayer`](crate::timeout::TimeoutLayer) in HTTP response mode. The
//! response's extensions hold the [`Elapsed`](crate::timeout::Elapsed).
//!
//! - **When:** the call took longer than the layer's timeout and was dropped.
//! - **Retry:** only if the request is idempotent (a safe method, or a request with an
//!   `Idempotency-Key`): the call was cancelled part-way and may have taken effect. No
//!   `Retry-After`.
//!
//! # Idempotency-Key layer
//!
//! Sent by an [`IdempotencyLayer`](crate::idempotency::IdempotencyLayer), which also exports
//! these URIs as [`idempotency::problem_types`](crate::idempotency::problem_types).
//!
//! ## idempotency-key-missing
//!
//! [`IDEMPOTENCY_KEY_MISSING`]: **400 Bad Request**.
//!
//! - **When:** the layer requires a key
//!   ([`required`](crate::idempotency::Builder::required)) and a request with a covered method
//!   has no `Idempotency-Key` header. The request was not run.
//! - **Retry:** not as is: send it again with an `Idempotency-Key`.
//!
//! ## idempotency-key-invalid
//!
//! [`IDEMPOTENCY_KEY_INVALID`]: **400 Bad Request**.
//!
//! - **When:** the `Idempotency-Key` header is not a valid key (neither a Structured Field
//!   String nor a bare token, too long, or with characters outside visible ASCII). The request
//!   was not run.
//! - **Retry:** not as is: send it again with a valid key.
//!
//! ## idempotency-principal-missing
//!
//! [`IDEMPOTENCY_PRINCIPAL_MISSING`]: **400 Bad Request**.
//!
//! - **When:** the layer scopes keys by principal
//!   ([`scope`](crate::idempotency::Builder::scope)) and finds none for this request (e.g. it
//!   did not pass authentication). The request was not run.
//! - **Retry:** not as is: send it again as an authenticated principal.
//!
//! ## idempotency-request-too-large
//!
//! [`IDEMPOTENCY_REQUEST_TOO_LARGE`]: **413 Content Too Large**.
//!
//! - **When:** the request body is larger than the layer's limit
//!   ([`max_request_body`](crate::idempotency::Builder::max_request_body)). The request was not
//!   run.
//! - **Retry:** no: the same body is refused again.
//!
//! ## idempotency-request-unreadable
//!
//! [`IDEMPOTENCY_REQUEST_UNREADABLE`]: **400 Bad Request**.
//!
//! - **When:** reading the request body failed (the client went away, or the transport
//!   failed). The request was not run.
//! - **Retry:** yes, with the same key.
//!
//! ## idempotency-key-in-flight
//!
//! [`IDEMPOTENCY_KEY_IN_FLIGHT`]: **409 Conflict**, with `Retry-After`.
//!
//! - **When:** a request with the same key is still running (and, with
//!   [`wait_for_in_flight`](crate::idempotency::Builder::wait_for_in_flight), did not finish
//!   within the wait). This request was not run.
//! - **Retry:** yes, with the same key, after `Retry-After`: once the first request completes,
//!   a retry gets its response replayed.
//!
//! ## idempotency-key-reused
//!
//! [`IDEMPOTENCY_KEY_REUSED`]: **422 Unprocessable Content**.
//!
//! - **When:** the key was already used for a different request (another method, path, query,
//!   body or fingerprinted header). This request was not run.
//! - **Retry:** not with this key: a different request needs a new key.
//!
//! ## idempotency-response-not-replayable
//!
//! [`IDEMPOTENCY_RESPONSE_NOT_REPLAYABLE`]: **409 Conflict**.
//!
//! - **When:** a request with this key already ran and completed (`detail` names its status),
//!   but its response could not be kept for replay: too large, too slow to read, or its body
//!   failed. It was not run again.
//! - **Retry:** no: the request has run and never runs again under this key. Find out its
//!   result another way (e.g. a `GET` of the resource).
//!
//! ## idempotency-outcome-unknown
//!
//! [`IDEMPOTENCY_OUTCOME_UNKNOWN`]: **409 Conflict**.
//!
//! - **When:** the first request with this key started but was cut off part-way by the
//!   crate's own timeout placed inside the Idempotency-Key layer (its caller got that timeout's
//!   504): it may or may not have taken effect. It is never run again, and the timeout's answer
//!   is never replayed as if it were the handler's.
//! - **Retry:** not with this key. Find out what happened another way (e.g. a `GET` of the
//!   resource) and, if it did not happen, send the request again with a new key. Avoid this
//!   answer by placing the Idempotency-Key layer inside the total timeout, not outside it.
//!
//! ## idempotency-store-unavailable
//!
//! [`IDEMPOTENCY_STORE_UNAVAILABLE`]: **503 Service Unavailable**, with `Retry-After: 1`.
//!
//! - **When:** the idempotency store failed or did not answer in time, and the layer fails
//!   closed ([`OnStoreError::FailClosed`](crate::idempotency::OnStoreError::FailClosed), the
//!   default). The request was not run.
//! - **Retry:** yes, with the same key, after `Retry-After`.
//!
//! ## idempotency-store-full
//!
//! [`IDEMPOTENCY_STORE_FULL`]: **503 Service Unavailable**, with `Retry-After`: when the store
//! expects room (the memory store: when its oldest completed record passes the retention floor,
//! or the soonest lease ends, from 1 s to 1 h), else 1 s.
//!
//! - **When:** the store is at its size bound and takes no new key: the memory store is full of
//!   in-flight records and records younger than its retention floor. The request was not run.
//! - **Retry:** yes, with the same key, after `Retry-After`.
//!
//! ## idempotency-record-unreadable
//!
//! [`IDEMPOTENCY_RECORD_UNREADABLE`]: **500 Internal Server Error**.
//!
//! - **When:** the store holds a record for this key that cannot be read (corrupt, or written by
//!   an unknown version of the crate). The request was not run, since it may already have run.
//! - **Retry:** not until an operator removes the record or it expires: until then every request
//!   with this key gets this answer.
//!
//! ## idempotency-handler-failed
//!
//! [`IDEMPOTENCY_HANDLER_FAILED`]: **500 Internal Server Error**, or **503 Service
//! Unavailable** with `Retry-After` when the server shut down.
//!
//! - **When:** the handler panicked (500; the key was released), its response body failed
//!   before any of it was sent (500; the key is kept as completed; a body that fails once
//!   streaming ends the stream with an error instead), or the server shut down while the
//!   handler ran (503).
//! - **Retry:** yes, with the same key: after a panic the request runs again (it may have done
//!   part of its work); after a failed body a retry gets
//!   [idempotency-response-not-replayable](#idempotency-response-not-replayable); after a
//!   shutdown, retry after `Retry-After`.
//!
//! # Chaos layer
//!
//! ## chaos-fault-injected
//!
//! [`CHAOS_FAULT_INJECTED`]: the **4xx or 5xx** the fault names, or **500** for an injected
//! error, sent by a `ChaosLayer` (feature `chaos`) in `respond_http` mode; the response's
//! extensions hold the `Injected` fault.
//!
//! - **When:** fault injection chose this call; the request was not run.
//! - **Retry:** as for the real status: the point of injecting it is to see what your clients do.

/// The absolute `type` URI for the heading `$fragment` of this page.
macro_rules! problem_type {
    ($fragment:literal) => {
        concat!(
            "https://docs.rs/tower-rampart/latest/tower_rampart/problems#",
            $fragment
        )
    };
}

/// [503: the circuit breaker refused the call](crate::problems#circuit-open).
pub const CIRCUIT_OPEN: &str = problem_type!("circuit-open");
/// [504: the call took longer than the timeout](crate::problems#timeout).
pub const TIMEOUT: &str = problem_type!("timeout");
/// [400: the request needs an `Idempotency-Key` and has none](crate::problems#idempotency-key-missing).
pub const IDEMPOTENCY_KEY_MISSING: &str = problem_type!("idempotency-key-missing");
/// [400: the `Idempotency-Key` is not a valid key](crate::problems#idempotency-key-invalid).
pub const IDEMPOTENCY_KEY_INVALID: &str = problem_type!("idempotency-key-invalid");
/// [400: keys are scoped by principal and the request has none](crate::problems#idempotency-principal-missing).
pub const IDEMPOTENCY_PRINCIPAL_MISSING: &str = problem_type!("idempotency-principal-missing");
/// [413: the request body is larger than the layer's limit](crate::problems#idempotency-request-too-large).
pub const IDEMPOTENCY_REQUEST_TOO_LARGE: &str = problem_type!("idempotency-request-too-large");
/// [400: the request body could not be read](crate::problems#idempotency-request-unreadable).
pub const IDEMPOTENCY_REQUEST_UNREADABLE: &str = problem_type!("idempotency-request-unreadable");
/// [409: the first request with this key is still running](crate::problems#idempotency-key-in-flight).
pub const IDEMPOTENCY_KEY_IN_FLIGHT: &str = problem_type!("idempotency-key-in-flight");
/// [422: the key was used for a different request](crate::problems#idempotency-key-reused).
pub const IDEMPOTENCY_KEY_REUSED: &str = problem_type!("idempotency-key-reused");
/// [409: the key completed but its response cannot be replayed](crate::problems#idempotency-response-not-replayable).
pub const IDEMPOTENCY_RESPONSE_NOT_REPLAYABLE: &str =
    problem_type!("idempotency-response-not-replayable");
/// [409: the first request with this key was cut off part-way; its outcome is unknown](crate::problems#idempotency-outcome-unknown).
pub const IDEMPOTENCY_OUTCOME_UNKNOWN: &str = problem_type!("idempotency-outcome-unknown");
/// [503: the idempotency store failed or did not answer in time](crate::problems#idempotency-store-unavailable).
pub const IDEMPOTENCY_STORE_UNAVAILABLE: &str = problem_type!("idempotency-store-unavailable");
/// [503: the store is at its size bound](crate::problems#idempotency-store-full).
pub const IDEMPOTENCY_STORE_FULL: &str = problem_type!("idempotency-store-full");
/// [500: the key's stored record cannot be read](crate::problems#idempotency-record-unreadable).
pub const IDEMPOTENCY_RECORD_UNREADABLE: &str = problem_type!("idempotency-record-unreadable");
/// [500 or 503: the handler failed or the server shut down](crate::problems#idempotency-handler-failed).
pub const IDEMPOTENCY_HANDLER_FAILED: &str = problem_type!("idempotency-handler-failed");
/// [4xx/5xx: a fault the chaos layer injected](crate::problems#chaos-fault-injected).
pub const CHAOS_FAULT_INJECTED: &str = problem_type!("chaos-fault-injected");

#[cfg(test)]
mod tests {
    use super::*;

    /// Every constant of this module; [`every_constant_is_listed`] fails when one is missing.
    const ALL: &[&str] = &[
        CIRCUIT_OPEN,
        TIMEOUT,
        IDEMPOTENCY_KEY_MISSING,
        IDEMPOTENCY_KEY_INVALID,
        IDEMPOTENCY_PRINCIPAL_MISSING,
        IDEMPOTENCY_REQUEST_TOO_LARGE,
        IDEMPOTENCY_REQUEST_UNREADABLE,
        IDEMPOTENCY_KEY_IN_FLIGHT,
        IDEMPOTENCY_KEY_REUSED,
        IDEMPOTENCY_RESPONSE_NOT_REPLAYABLE,
        IDEMPOTENCY_OUTCOME_UNKNOWN,
        IDEMPOTENCY_STORE_UNAVAILABLE,
        IDEMPOTENCY_STORE_FULL,
        IDEMPOTENCY_RECORD_UNREADABLE,
        IDEMPOTENCY_HANDLER_FAILED,
        CHAOS_FAULT_INJECTED,
    ];

    const SOURCE: &str = include_str!("problems.rs");
    const BASE: &str = "https://docs.rs/tower-rampart/latest/tower_rampart/problems#";

    /// The module doc's headings, by level (`#` = 1).
    fn headings() -> Vec<(usize, &'static str)> {
        SOURCE
            .lines()
            .filter_map(|l| l.strip_prefix("//! #"))
            .map(|h| {
                let level = 1 + h.len() - h.trim_start_matches('#').len();
                (level, h.trim_start_matches('#').trim())
            })
            .collect()
    }

    /// The anchor rustdoc gives a heading: lowercased, spaces as hyphens, other punctuation
    /// dropped.
    fn anchor(heading: &str) -> String {
        heading
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c.to_ascii_lowercase()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn every_type_has_its_own_heading_and_every_heading_a_type() {
        let mut fragments: Vec<&str> = ALL
            .iter()
            .map(|uri| uri.strip_prefix(BASE).expect("one base URI"))
            .collect();
        for f in &fragments {
            // The heading text is the fragment itself, so its anchor is too.
            assert_eq!(anchor(f), *f, "fragment {f:?} is not its own anchor");
        }
        let mut types: Vec<&str> = headings()
            .into_iter()
            .filter(|(level, _)| *level == 2)
            .map(|(_, h)| h)
            .collect();
        fragments.sort_unstable();
        types.sort_unstable();
        assert_eq!(fragments, types, "constants and `##` headings differ");
        // No other heading takes (and so moves, as `-1`) one of the anchors.
        let mut anchors: Vec<String> = headings().iter().map(|(_, h)| anchor(h)).collect();
        let n = anchors.len();
        anchors.sort_unstable();
        anchors.dedup();
        assert_eq!(anchors.len(), n, "two headings share an anchor");
    }

    #[test]
    fn every_constant_is_listed() {
        let declared = SOURCE
            .lines()
            .filter(|l| l.starts_with("pub const "))
            .count();
        assert_eq!(declared, ALL.len());
    }
}
