//! Classification of HTTP responses by status code.

use std::time::SystemTime;

use http::{StatusCode, header::RETRY_AFTER};

#[cfg(feature = "reqwest")]
use super::Classify;
use super::{BodyEnd, Outcome, retry_after::parse_retry_after};

/// A set of HTTP status codes in the 400..=599 range, stored as a 200-bit map (cheap to copy).
///
/// ```
/// use http::StatusCode;
/// use tower_rampart::classify::StatusSet;
///
/// let set = StatusSet::empty().with_range(500..=599).without(StatusCode::NOT_IMPLEMENTED);
/// assert!(set.contains(StatusCode::BAD_GATEWAY));
/// assert!(!set.contains(StatusCode::NOT_IMPLEMENTED));
/// assert!(!set.contains(StatusCode::OK));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusSet([u64; 4]);

impl StatusSet {
    const BASE: u16 = 400;

    /// No status at all.
    pub const fn empty() -> Self {
        StatusSet([0; 4])
    }

    /// Adds one status. Codes outside 400..=599 are never failures and are ignored.
    pub fn with(mut self, status: StatusCode) -> Self {
        if let Some(bit) = Self::bit(status.as_u16()) {
            self.0[bit / 64] |= 1 << (bit % 64);
        }
        self
    }

    /// Removes one status.
    pub fn without(mut self, status: StatusCode) -> Self {
        if let Some(bit) = Self::bit(status.as_u16()) {
            self.0[bit / 64] &= !(1 << (bit % 64));
        }
        self
    }

    /// Adds every code of a range (clipped to 400..=599).
    pub fn with_range(mut self, range: std::ops::RangeInclusive<u16>) -> Self {
        for code in range {
            if let Some(bit) = Self::bit(code) {
                self.0[bit / 64] |= 1 << (bit % 64);
            }
        }
        self
    }

    /// Whether `status` is in the set.
    #[inline]
    pub fn contains(&self, status: StatusCode) -> bool {
        match Self::bit(status.as_u16()) {
            Some(bit) => self.0[bit / 64] & (1 << (bit % 64)) != 0,
            None => false,
        }
    }

    #[inline]
    fn bit(code: u16) -> Option<usize> {
        (Self::BASE..=599)
            .contains(&code)
            .then(|| usize::from(code - Self::BASE))
    }
}

impl StatusSet {
    /// 408, 429, 500, 502, 503 and 504: the statuses worth sending the same request again for
    /// (not 501 Not Implemented, which will not change).
    pub fn retryable() -> Self {
        StatusSet::empty()
            .with(StatusCode::REQUEST_TIMEOUT)
            .with(StatusCode::TOO_MANY_REQUESTS)
            .with(StatusCode::INTERNAL_SERVER_ERROR)
            .with(StatusCode::BAD_GATEWAY)
            .with(StatusCode::SERVICE_UNAVAILABLE)
            .with(StatusCode::GATEWAY_TIMEOUT)
    }
}

impl Default for StatusSet {
    /// 5xx, 408 Request Timeout and 429 Too Many Requests: the statuses that say the downstream is
    /// unwell or overloaded rather than that the request was wrong.
    fn default() -> Self {
        StatusSet::empty()
            .with_range(500..=599)
            .with(StatusCode::REQUEST_TIMEOUT)
            .with(StatusCode::TOO_MANY_REQUESTS)
    }
}

/// Classifies `http::Response<B>` by status: statuses in the set are failures (with the
/// `Retry-After` header as their hint), every other status a success, every `Err` a failure.
///
/// ```
/// use http::StatusCode;
/// use tower_rampart::classify::{Classify, HttpStatus, Outcome, StatusSet};
///
/// // Treat 501 as a success (the route is simply not there) and 404 as ignored.
/// let classifier = HttpStatus::new(StatusSet::default().without(StatusCode::NOT_IMPLEMENTED))
///     .ignore(StatusSet::empty().with(StatusCode::NOT_FOUND));
/// let res = |s: u16| http::Response::builder().status(s).body(()).unwrap();
/// assert_eq!(classifier.classify(Ok::<_, &()>(&res(501))), Outcome::Success);
/// assert_eq!(classifier.classify(Ok::<_, &()>(&res(404))), Outcome::Ignore);
/// assert_eq!(classifier.classify(Ok::<_, &()>(&res(502))), Outcome::FAILURE);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HttpStatus {
    failures: StatusSet,
    ignored: StatusSet,
}

impl HttpStatus {
    /// Failures are exactly `failures`; nothing is ignored.
    pub const fn new(failures: StatusSet) -> Self {
        HttpStatus {
            failures,
            ignored: StatusSet::empty(),
        }
    }

    /// Failures are [`StatusSet::retryable`]: the classifier for a retry layer.
    pub fn retryable() -> Self {
        HttpStatus::new(StatusSet::retryable())
    }

    /// Statuses that count as neither success nor failure. A status in both sets is a failure.
    pub const fn ignore(mut self, ignored: StatusSet) -> Self {
        self.ignored = ignored;
        self
    }

    /// Classifies a status and its headers alone.
    pub fn classify_status(&self, status: StatusCode, headers: &http::HeaderMap) -> Outcome {
        if self.failures.contains(status) {
            let retry_after = headers
                .get(RETRY_AFTER)
                .and_then(|v| parse_retry_after(v, SystemTime::now()));
            Outcome::Failure { retry_after }
        } else if self.ignored.contains(status) {
            Outcome::Ignore
        } else {
            Outcome::Success
        }
    }

    /// Whether a response's outcome waits for the end of its body: only a success does (a
    /// failure or an ignored status is final at the head), so that a body failing after a
    /// `200` counts as a failure.
    ///
    /// ```
    /// use tower_rampart::classify::{HttpStatus, Outcome};
    ///
    /// let h = http::HeaderMap::new();
    /// let c = HttpStatus::default();
    /// assert!(c.waits_for_end(&Outcome::Success, http::StatusCode::OK, &h));
    /// assert!(!c.waits_for_end(&Outcome::FAILURE, http::StatusCode::BAD_GATEWAY, &h));
    /// ```
    #[inline]
    pub fn waits_for_end(
        &self,
        head: &Outcome,
        _status: StatusCode,
        _headers: &http::HeaderMap,
    ) -> bool {
        *head == Outcome::Success
    }

    /// The outcome of a response whose body ended as `end`: a body error is a failure, a clean
    /// end keeps the head's outcome (trailers are not read).
    #[inline]
    pub fn end_outcome(&self, head: Outcome, end: BodyEnd<'_>) -> Outcome {
        match end {
            BodyEnd::Failed => Outcome::FAILURE,
            BodyEnd::Clean | BodyEnd::Trailers(_) => head,
        }
    }
}

classify_http_response!(HttpStatus, classify_status);

#[cfg(feature = "reqwest")]
impl<E> Classify<reqwest::Response, E> for HttpStatus {
    /// Statuses as for `http::Response`; every error (connect, timeout, body, or a layer's
    /// boxed error) is a failure.
    #[inline]
    fn classify(&self, result: Result<&reqwest::Response, &E>) -> Outcome {
        match result {
            Ok(res) => self.classify_status(res.status(), res.headers()),
            Err(_) => Outcome::FAILURE,
        }
    }

    fn error_type(
        &self,
        result: Result<&reqwest::Response, &E>,
    ) -> Option<std::borrow::Cow<'static, str>> {
        let res = result.ok()?;
        Some(super::error_type_of(res.status(), res.headers()))
    }

    #[inline]
    fn follows_body(&self, head: &Outcome, res: &reqwest::Response) -> bool {
        self.waits_for_end(head, res.status(), res.headers())
    }

    #[inline]
    fn classify_end(&self, head: Outcome, end: BodyEnd<'_>) -> Outcome {
        self.end_outcome(head, end)
    }

    /// A breaker's `CircuitOpen` error, or a response carrying a breaker's mark (an
    /// `http::Response` a breaker answered, converted to a `reqwest::Response`).
    #[inline]
    fn is_refused(&self, result: Result<&reqwest::Response, &E>) -> bool
    where
        E: 'static,
    {
        match result {
            Ok(res) => res
                .extensions()
                .get::<crate::circuit_breaker::CircuitOpen>()
                .is_some(),
            Err(e) => <Self as Classify<reqwest::Response, E>>::is_refusal(self, e),
        }
    }
}
