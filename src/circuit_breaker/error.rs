//! The error a rejected call returns, and its HTTP form.

use std::{fmt, sync::Arc, time::Duration};

use http::{Response, StatusCode};

use super::{Rejected, State};
use crate::{mode::ResponseBody, problem};

/// The call was not made because the circuit breaker is open.
///
/// In error mode the layer returns it boxed as a [`tower::BoxError`](crate::BoxError); get it back with
/// `downcast_ref`:
///
/// ```
/// use tower_rampart::circuit_breaker::CircuitOpen;
///
/// fn retry_hint(err: &tower_rampart::BoxError) -> Option<std::time::Duration> {
///     err.downcast_ref::<CircuitOpen>().and_then(CircuitOpen::retry_after)
/// }
/// # let _ = retry_hint;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircuitOpen {
    breaker: Arc<str>,
    state: State,
    retry_after: Option<Duration>,
}

impl CircuitOpen {
    pub(crate) fn new(breaker: Arc<str>, rejected: Rejected) -> Self {
        CircuitOpen {
            breaker,
            state: rejected.state(),
            retry_after: rejected.retry_after(),
        }
    }

    /// The breaker's name.
    pub fn breaker(&self) -> &str {
        &self.breaker
    }

    /// The state that refused the call.
    pub fn state(&self) -> State {
        self.state
    }

    /// How long until the breaker lets a probe through, when known.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// A `503 Service Unavailable` response with an `application/problem+json` body of type
    /// [`circuit-open`](crate::problems#circuit-open) and, when the wait is known, a
    /// `Retry-After` header in whole seconds (rounded up, at least 1). The response's extensions
    /// hold this `CircuitOpen`.
    pub fn to_response<B: ResponseBody>(&self) -> Response<B> {
        let mut res = problem::response(
            StatusCode::SERVICE_UNAVAILABLE,
            PROBLEM_TYPE,
            self,
            self.retry_after,
            B::from_bytes,
        );
        // Lets layers outside (a fallback) tell the breaker's 503 from the handler's.
        res.extensions_mut().insert(self.clone());
        res
    }
}

/// The problem `type` URI of the 503 answered by a breaker in HTTP mode:
/// [`problems::CIRCUIT_OPEN`](crate::problems::CIRCUIT_OPEN).
pub const PROBLEM_TYPE: &str = crate::problems::CIRCUIT_OPEN;

impl fmt::Display for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "circuit breaker `{}` is {}: call not permitted",
            self.breaker, self.state
        )?;
        if let Some(wait) = self.retry_after {
            write!(f, "; retry after {:.3}s", wait.as_secs_f64())?;
        }
        Ok(())
    }
}

impl std::error::Error for CircuitOpen {}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::header;

    #[test]
    fn http_form() {
        let e = CircuitOpen {
            breaker: Arc::from("a\"b"),
            state: State::Open,
            retry_after: Some(Duration::from_millis(1500)),
        };
        let res: Response<String> = e
            .to_response::<Bytes>()
            .map(|b| String::from_utf8(b.to_vec()).unwrap());
        assert_eq!(res.status(), 503);
        assert_eq!(res.headers()[header::RETRY_AFTER], "2");
        assert!(res.body().contains("a\\\"b"), "{}", res.body());
        let body: serde_json::Value = serde_json::from_str(res.body()).unwrap();
        assert_eq!(body["type"], PROBLEM_TYPE);
        assert_eq!(body["title"], "Service Unavailable");
        assert_eq!(body["status"], 503);
        assert_eq!(body["detail"], e.to_string());
        assert_eq!(res.extensions().get::<CircuitOpen>(), Some(&e));
        let forced = CircuitOpen {
            retry_after: None,
            state: State::ForcedOpen,
            ..e
        };
        assert!(
            forced
                .to_response::<Bytes>()
                .headers()
                .get(header::RETRY_AFTER)
                .is_none()
        );
    }
}
