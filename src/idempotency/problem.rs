//! The layer's answers: `application/problem+json` (RFC 9457) with a stable `type` per case,
//! written by the crate's one problem writer.

use std::time::Duration;

use http::{Response, StatusCode};

use crate::replay::Buffered;

/// The `type` URIs of the layer's problem responses, under the names the layer has always
/// used: the same constants as in [`problems`](crate::problems), where each is documented.
pub mod problem_types {
    pub use crate::problems::{
        IDEMPOTENCY_HANDLER_FAILED as HANDLER_FAILED, IDEMPOTENCY_KEY_IN_FLIGHT as IN_FLIGHT,
        IDEMPOTENCY_KEY_INVALID as INVALID_KEY, IDEMPOTENCY_KEY_MISSING as MISSING_KEY,
        IDEMPOTENCY_KEY_REUSED as MISMATCH, IDEMPOTENCY_OUTCOME_UNKNOWN as OUTCOME_UNKNOWN,
        IDEMPOTENCY_PRINCIPAL_MISSING as NO_PRINCIPAL,
        IDEMPOTENCY_RECORD_UNREADABLE as UNREADABLE_RECORD,
        IDEMPOTENCY_REQUEST_TOO_LARGE as TOO_LARGE,
        IDEMPOTENCY_REQUEST_UNREADABLE as UNREADABLE_BODY,
        IDEMPOTENCY_RESPONSE_NOT_REPLAYABLE as NOT_REPLAYABLE,
        IDEMPOTENCY_STORE_FULL as STORE_FULL, IDEMPOTENCY_STORE_UNAVAILABLE as STORE_UNAVAILABLE,
    };
}

/// A problem+json response, with `Retry-After` (whole seconds, at least 1) when given.
pub(crate) fn problem<B>(
    status: StatusCode,
    kind: &str,
    detail: &str,
    retry_after: Option<Duration>,
) -> Response<Buffered<B>> {
    crate::problem::response(status, kind, detail, retry_after, Buffered::full)
}
