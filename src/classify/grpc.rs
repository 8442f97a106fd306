//! Classification of gRPC calls by status code.

use std::time::Duration;

use http::{HeaderValue, StatusCode};

#[cfg(feature = "tonic")]
use super::Classify;
use super::{BodyEnd, Outcome, retry_after::parse_grpc_pushback};

const PUSHBACK: &str = "grpc-retry-pushback-ms";

/// An absent push-back is no hint; a present but invalid one means "do not retry".
fn pushback_hint(value: Option<&HeaderValue>) -> Option<Duration> {
    value.map(|v| parse_grpc_pushback(v).unwrap_or(Duration::MAX))
}

/// The gRPC status codes (numbering from the gRPC specification).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
#[allow(missing_docs)]
pub enum GrpcCode {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl GrpcCode {
    const ALL: [GrpcCode; 17] = [
        GrpcCode::Ok,
        GrpcCode::Cancelled,
        GrpcCode::Unknown,
        GrpcCode::InvalidArgument,
        GrpcCode::DeadlineExceeded,
        GrpcCode::NotFound,
        GrpcCode::AlreadyExists,
        GrpcCode::PermissionDenied,
        GrpcCode::ResourceExhausted,
        GrpcCode::FailedPrecondition,
        GrpcCode::Aborted,
        GrpcCode::OutOfRange,
        GrpcCode::Unimplemented,
        GrpcCode::Internal,
        GrpcCode::Unavailable,
        GrpcCode::DataLoss,
        GrpcCode::Unauthenticated,
    ];

    /// The code for a number; numbers gRPC does not define map to `Unknown`, as the spec says.
    pub fn from_i32(n: i32) -> GrpcCode {
        usize::try_from(n)
            .ok()
            .and_then(|i| Self::ALL.get(i).copied())
            .unwrap_or(GrpcCode::Unknown)
    }

    /// Parses a `grpc-status` header value.
    pub fn from_header(value: &http::HeaderValue) -> GrpcCode {
        value
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
            .map_or(GrpcCode::Unknown, GrpcCode::from_i32)
    }

    /// The code a gRPC client derives from a non-200 HTTP status (gRPC's
    /// "HTTP to gRPC status code mapping").
    pub fn from_http_status(status: StatusCode) -> GrpcCode {
        match status.as_u16() {
            400 => GrpcCode::Internal,
            401 => GrpcCode::Unauthenticated,
            403 => GrpcCode::PermissionDenied,
            404 => GrpcCode::Unimplemented,
            429 | 502..=504 => GrpcCode::Unavailable,
            _ => GrpcCode::Unknown,
        }
    }
}

/// A set of gRPC codes.
///
/// ```
/// use tower_rampart::classify::{GrpcCode, GrpcCodes};
///
/// let codes = GrpcCodes::default().without(GrpcCode::ResourceExhausted);
/// assert!(codes.contains(GrpcCode::Unavailable));
/// assert!(!codes.contains(GrpcCode::ResourceExhausted));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcCodes(u32);

impl GrpcCodes {
    /// No code at all.
    pub const fn empty() -> Self {
        GrpcCodes(0)
    }

    /// Adds a code.
    pub const fn with(self, code: GrpcCode) -> Self {
        GrpcCodes(self.0 | 1 << code as u8)
    }

    /// Removes a code.
    pub const fn without(self, code: GrpcCode) -> Self {
        GrpcCodes(self.0 & !(1 << code as u8))
    }

    /// Whether the code is in the set.
    pub const fn contains(&self, code: GrpcCode) -> bool {
        self.0 & (1 << code as u8) != 0
    }
}

impl Default for GrpcCodes {
    /// UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, INTERNAL, UNKNOWN and DATA_LOSS: the
    /// codes that speak of the server's health rather than of the request.
    fn default() -> Self {
        GrpcCodes::empty()
            .with(GrpcCode::Unavailable)
            .with(GrpcCode::DeadlineExceeded)
            .with(GrpcCode::ResourceExhausted)
            .with(GrpcCode::Internal)
            .with(GrpcCode::Unknown)
            .with(GrpcCode::DataLoss)
    }
}

/// Classifies gRPC responses seen as `http::Response<B>` (a tonic `Channel`, a hyper client, a
/// tonic server's `Routes`).
///
/// A non-200 HTTP status is mapped to its gRPC code; otherwise a `grpc-status` header in the
/// response head (a trailers-only response, which is how servers send errors that happen before
/// any message) decides. A status that only arrives in the trailers after a streamed body is not
/// visible when the response head arrives: the head counts as a success, and a layer that follows
/// bodies (a breaker switched with
/// [`end_of_stream`](crate::circuit_breaker::CircuitBreakerLayer::end_of_stream)) judges the
/// trailers' `grpc-status` instead ([`end_outcome`](Self::end_outcome)). Every `Err` is a failure. A
/// `grpc-retry-pushback-ms` header becomes the failure's retry-after hint; a negative or
/// unparsable one, which gRPC defines as "do not retry", becomes `Duration::MAX` (a retry layer
/// stops; a breaker stays open for its longest open duration).
///
/// ```
/// use tower_rampart::classify::{Classify, GrpcResponse, Outcome};
///
/// let unavailable = http::Response::builder()
///     .header("grpc-status", "14")
///     .header("grpc-retry-pushback-ms", "300")
///     .body(())
///     .unwrap();
/// assert_eq!(
///     GrpcResponse::default().classify(Ok::<_, &()>(&unavailable)),
///     Outcome::failure_with_retry_after(std::time::Duration::from_millis(300)),
/// );
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GrpcResponse {
    failures: GrpcCodes,
}

impl GrpcResponse {
    /// Failures are exactly `failures`.
    pub const fn new(failures: GrpcCodes) -> Self {
        GrpcResponse { failures }
    }

    /// Classifies a response head.
    pub fn classify_head(&self, status: StatusCode, headers: &http::HeaderMap) -> Outcome {
        let code = if status != StatusCode::OK {
            GrpcCode::from_http_status(status)
        } else {
            match headers.get("grpc-status") {
                Some(v) => GrpcCode::from_header(v),
                None => return Outcome::Success,
            }
        };
        self.outcome(code, headers)
    }

    fn outcome(&self, code: GrpcCode, headers: &http::HeaderMap) -> Outcome {
        if self.failures.contains(code) {
            Outcome::Failure {
                retry_after: pushback_hint(headers.get(PUSHBACK)),
            }
        } else {
            Outcome::Success
        }
    }

    /// Whether a response's outcome waits for its trailers: a `200` whose head has no
    /// `grpc-status` (a trailers-only answer is final, and so is a non-200 status).
    ///
    /// ```
    /// use http::{HeaderMap, StatusCode};
    /// use tower_rampart::classify::{GrpcResponse, Outcome};
    ///
    /// let c = GrpcResponse::default();
    /// let mut trailers_only = HeaderMap::new();
    /// trailers_only.insert("grpc-status", "0".parse().unwrap());
    /// assert!(c.waits_for_end(&Outcome::Success, StatusCode::OK, &HeaderMap::new()));
    /// assert!(!c.waits_for_end(&Outcome::Success, StatusCode::OK, &trailers_only));
    /// ```
    #[inline]
    pub fn waits_for_end(
        &self,
        _head: &Outcome,
        status: StatusCode,
        headers: &http::HeaderMap,
    ) -> bool {
        status == StatusCode::OK && !headers.contains_key("grpc-status")
    }

    /// The outcome of a stream that ended as `end`: the trailers' `grpc-status` (with their
    /// `grpc-retry-pushback-ms` as the hint), a failure for a body error; a stream that ends
    /// without a status keeps the head's outcome (as tower-http's gRPC classifier does).
    #[inline]
    pub fn end_outcome(&self, head: Outcome, end: BodyEnd<'_>) -> Outcome {
        match end {
            BodyEnd::Failed => Outcome::FAILURE,
            BodyEnd::Trailers(trailers) => match trailers.get("grpc-status") {
                Some(v) => self.outcome(GrpcCode::from_header(v), trailers),
                None => head,
            },
            BodyEnd::Clean => head,
        }
    }
}

classify_http_response!(GrpcResponse, classify_head);

/// Classifies `Result<T, tonic::Status>` (a tonic client's generated methods, or a service over
/// `tonic::Status` errors) by the status code.
///
/// ```
/// use tower_rampart::classify::{Classify, Outcome, TonicStatus};
///
/// let c = TonicStatus::default();
/// assert_eq!(c.classify(Err::<&(), _>(&tonic::Status::unavailable("down"))), Outcome::FAILURE);
/// assert_eq!(c.classify(Err::<&(), _>(&tonic::Status::not_found("no"))), Outcome::Success);
/// ```
#[cfg(feature = "tonic")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TonicStatus {
    failures: GrpcCodes,
}

#[cfg(feature = "tonic")]
impl TonicStatus {
    /// Failures are exactly `failures`.
    pub const fn new(failures: GrpcCodes) -> Self {
        TonicStatus { failures }
    }
}

#[cfg(feature = "tonic")]
impl<T> Classify<T, tonic::Status> for TonicStatus {
    fn classify(&self, result: Result<&T, &tonic::Status>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(status) => {
                let code = GrpcCode::from_i32(status.code() as i32);
                if self.failures.contains(code) {
                    let value = status
                        .metadata()
                        .get(PUSHBACK)
                        .map(|v| http::HeaderValue::from_bytes(v.as_bytes()));
                    Outcome::Failure {
                        retry_after: match value {
                            None => None,
                            Some(Ok(v)) => pushback_hint(Some(&v)),
                            Some(Err(_)) => Some(Duration::MAX),
                        },
                    }
                } else {
                    Outcome::Success
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use http::Response;

    use super::*;

    fn head(status: u16, grpc: Option<&'static str>) -> Response<()> {
        let mut b = Response::builder().status(status);
        if let Some(g) = grpc {
            b = b.header("grpc-status", g);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn grpc_codes_from_heads() {
        let c = GrpcResponse::default();
        let k = |r: Response<()>| c.classify(Ok::<_, &()>(&r));
        assert_eq!(k(head(200, None)), Outcome::Success);
        assert_eq!(k(head(200, Some("0"))), Outcome::Success);
        assert_eq!(k(head(200, Some("5"))), Outcome::Success);
        assert_eq!(k(head(200, Some("14"))), Outcome::FAILURE);
        assert_eq!(k(head(200, Some("4"))), Outcome::FAILURE);
        // Unknown numbers and junk are UNKNOWN, which is a failure by default.
        assert_eq!(k(head(200, Some("99"))), Outcome::FAILURE);
        assert_eq!(k(head(200, Some("x"))), Outcome::FAILURE);
        assert_eq!(k(head(503, None)), Outcome::FAILURE);
        let refuse = Response::builder()
            .header("grpc-status", "14")
            .header(PUSHBACK, "-1")
            .body(())
            .unwrap();
        assert_eq!(k(refuse).retry_after(), Some(Duration::MAX));
        assert_eq!(k(head(404, None)), Outcome::Success);
        assert_eq!(c.classify(Err::<&Response<()>, _>(&())), Outcome::FAILURE);
    }

    #[test]
    fn streams_wait_for_their_trailers() {
        let c = GrpcResponse::default();
        let follows = |r: &Response<()>| {
            let head = c.classify(Ok::<_, &()>(r));
            Classify::<Response<()>, ()>::follows_body(&c, &head, r)
        };
        assert!(follows(&head(200, None)));
        assert!(!follows(&head(200, Some("0"))), "trailers-only is final");
        assert!(!follows(&head(200, Some("14"))));
        assert!(!follows(&head(503, None)));

        let end = |t: &[(&'static str, &'static str)]| {
            let mut trailers = http::HeaderMap::new();
            for (k, v) in t {
                trailers.insert(*k, HeaderValue::from_static(v));
            }
            c.end_outcome(Outcome::Success, BodyEnd::Trailers(&trailers))
        };
        assert_eq!(end(&[("grpc-status", "0")]), Outcome::Success);
        assert_eq!(end(&[("grpc-status", "5")]), Outcome::Success);
        assert_eq!(
            end(&[("grpc-status", "14"), (PUSHBACK, "250")]),
            Outcome::failure_with_retry_after(Duration::from_millis(250))
        );
        assert_eq!(end(&[]), Outcome::Success, "no status: the head's outcome");
        assert_eq!(
            c.end_outcome(Outcome::Success, BodyEnd::Failed),
            Outcome::FAILURE
        );
        assert_eq!(
            c.end_outcome(Outcome::Success, BodyEnd::Clean),
            Outcome::Success
        );
    }

    #[test]
    fn code_numbers_round_trip() {
        for (i, code) in GrpcCode::ALL.iter().enumerate() {
            assert_eq!(GrpcCode::from_i32(i as i32), *code);
        }
        assert_eq!(GrpcCode::from_i32(-1), GrpcCode::Unknown);
    }
}
