//! Classification by error names written in configuration.
//!
//! Operators list error names in configuration files, as design documents do:
//!
//! ```yaml
//! retry_policy:
//!   retryable_exceptions: ["NetworkTimeout", "ServiceUnavailable"]
//!   non_retryable_exceptions: ["ValidationError", "AuthenticationFailed"]
//! ```
//!
//! [`ErrorNames`] is the catalogue of names such a list may use (standard names, HTTP statuses,
//! gRPC codes, and the names of your own [`NamedError`] types). [`ErrorNames::compile`] turns a
//! list into a [`NameSet`] at start-up, refusing unknown names with an [`UnknownName`]; a
//! [`ByName`] classifier then uses the sets to decide what a finished call meant.

use std::{
    any::{Any, TypeId},
    error::Error,
    fmt,
    sync::Arc,
};

use http::StatusCode;

use super::{BodyEnd, Classify, GrpcCode, GrpcCodes, Outcome};
use crate::{BoxError, circuit_breaker::CircuitOpen};

/// An error type of your own whose values answer to names in configuration (typically an enum's
/// variant names).
///
/// Register the type with [`ErrorNames::register`]; a configured name then matches an error of
/// this type whose [`error_name`](Self::error_name) is that name, wherever it sits in the error's
/// chain (the error itself, the error inside a [`BoxError`], or a
/// [`source()`](std::error::Error::source) link).
///
/// ```
/// use tower_rampart::classify::{ErrorNames, NamedError};
///
/// #[derive(Debug)]
/// enum LedgerError {
///     InsufficientFunds,
///     LedgerLocked,
/// }
///
/// impl std::fmt::Display for LedgerError {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         f.write_str(self.error_name())
///     }
/// }
///
/// impl std::error::Error for LedgerError {}
///
/// impl NamedError for LedgerError {
///     const NAMES: &'static [&'static str] = &["InsufficientFunds", "LedgerLocked"];
///
///     fn error_name(&self) -> &str {
///         match self {
///             LedgerError::InsufficientFunds => "InsufficientFunds",
///             LedgerError::LedgerLocked => "LedgerLocked",
///         }
///     }
/// }
///
/// let names = ErrorNames::default().register::<LedgerError>();
/// let locked = names.compile(&["LedgerLocked"]).unwrap();
/// assert!(locked.matches_error(&LedgerError::LedgerLocked));
/// assert!(!locked.matches_error(&LedgerError::InsufficientFunds));
/// let boxed: tower_rampart::BoxError = Box::new(LedgerError::LedgerLocked);
/// assert!(locked.matches_error(&boxed));
/// ```
pub trait NamedError: Error + 'static {
    /// Every name [`error_name`](Self::error_name) can answer, so that configuration can be
    /// checked when it is compiled.
    const NAMES: &'static [&'static str];

    /// This error's name: one of [`NAMES`](Self::NAMES).
    fn error_name(&self) -> &str;
}

/// How a response shows what [`ByName`] and [`NameSet::matches_response`] look at: its HTTP
/// status, its gRPC code, and whether it is a circuit breaker's refusal.
///
/// Implemented for `http::Response<B>`, `reqwest::Response` (feature `reqwest`) and
/// `tonic::Response<T>` (feature `tonic`). Implement it for your own response types; every method
/// defaults to "nothing to see".
///
/// ```
/// use http::StatusCode;
/// use tower_rampart::classify::{GrpcCode, InspectResponse};
///
/// let res = http::Response::builder().header("grpc-status", "14").body(()).unwrap();
/// assert_eq!(res.http_status(), Some(StatusCode::OK));
/// assert_eq!(res.grpc_code(), Some(GrpcCode::Unavailable));
/// assert!(!res.is_breaker_refusal());
///
/// struct Reply(u16);
/// impl InspectResponse for Reply {
///     fn http_status(&self) -> Option<StatusCode> {
///         StatusCode::from_u16(self.0).ok()
///     }
/// }
/// assert_eq!(Reply(503).http_status(), Some(StatusCode::SERVICE_UNAVAILABLE));
/// ```
pub trait InspectResponse {
    /// The response's HTTP status, if it has one.
    fn http_status(&self) -> Option<StatusCode> {
        None
    }

    /// The response's gRPC code, if it carries one in its head (a trailers-only answer's
    /// `grpc-status` header).
    fn grpc_code(&self) -> Option<GrpcCode> {
        None
    }

    /// Whether the response is a circuit breaker's refusal (it carries a
    /// [`CircuitOpen`] in its extensions; see [`breaker_refusal`](super::breaker_refusal)).
    fn is_breaker_refusal(&self) -> bool {
        false
    }
}

/// `InspectResponse` for an HTTP response type with `status()`, `headers()` and `extensions()`.
macro_rules! inspect_http_response {
    ($(#[$attr:meta])* [$($generics:tt)*] $response:ty) => {
        $(#[$attr])*
        impl<$($generics)*> InspectResponse for $response {
            #[inline]
            fn http_status(&self) -> Option<StatusCode> {
                Some(self.status())
            }

            /// The `grpc-status` header of the response head, when present. A status sent only
            /// in the trailers of a streamed body is not visible here.
            #[inline]
            fn grpc_code(&self) -> Option<GrpcCode> {
                self.headers().get("grpc-status").map(GrpcCode::from_header)
            }

            /// The breaker's mark ([`breaker_refusal`](super::breaker_refusal)).
            #[inline]
            fn is_breaker_refusal(&self) -> bool {
                self.extensions().get::<CircuitOpen>().is_some()
            }
        }
    };
}

inspect_http_response!([B] http::Response<B>);
inspect_http_response!(#[cfg(feature = "reqwest")] [] reqwest::Response);

#[cfg(feature = "tonic")]
impl<T> InspectResponse for tonic::Response<T> {
    /// A successful tonic response has no status to inspect (errors arrive as `tonic::Status`).
    #[inline]
    fn is_breaker_refusal(&self) -> bool {
        self.extensions().get::<CircuitOpen>().is_some()
    }
}

/// Responses with nothing to inspect: errors alone are matched by name. For the common
/// non-HTTP responses of a service; your own types implement the trait in one line
/// (`impl InspectResponse for MyReply {}`), since every method has a default.
macro_rules! nothing_to_inspect {
    ($($t:ty),* $(,)?) => {
        $(impl InspectResponse for $t {})*
    };
}

nothing_to_inspect!(
    (),
    bool,
    u8,
    u16,
    u32,
    u64,
    u128,
    usize,
    i8,
    i16,
    i32,
    i64,
    i128,
    isize,
    f32,
    f64,
    char,
    String,
    &'static str,
    bytes::Bytes,
);

impl<T> InspectResponse for Vec<T> {}

impl<T> InspectResponse for Option<T> {}

// ---------------------------------------------------------------------------------------------
// What a name means.

/// Error kinds recognised by type, one bit each.
const TIMEOUT: u8 = 1;
const CONNECTION: u8 = 1 << 1;
const CIRCUIT_OPEN: u8 = 1 << 2;

/// The HTTP statuses 100..=599, one bit each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HttpBits([u64; 8]);

impl HttpBits {
    const FIRST: u16 = 100;
    const LAST: u16 = 599;
    const EMPTY: HttpBits = HttpBits([0; 8]);

    const fn with_range(mut self, from: u16, to: u16) -> Self {
        let mut code = from;
        while code <= to {
            let bit = (code - Self::FIRST) as usize;
            self.0[bit / 64] |= 1 << (bit % 64);
            code += 1;
        }
        self
    }

    const fn with(self, code: u16) -> Self {
        self.with_range(code, code)
    }

    const fn union(mut self, other: HttpBits) -> Self {
        let mut i = 0;
        while i < 8 {
            self.0[i] |= other.0[i];
            i += 1;
        }
        self
    }

    const fn is_empty(&self) -> bool {
        let mut i = 0;
        while i < 8 {
            if self.0[i] != 0 {
                return false;
            }
            i += 1;
        }
        true
    }

    #[inline]
    fn contains(&self, status: StatusCode) -> bool {
        let code = status.as_u16();
        if !(Self::FIRST..=Self::LAST).contains(&code) {
            return false;
        }
        let bit = usize::from(code - Self::FIRST);
        self.0[bit / 64] & (1 << (bit % 64)) != 0
    }
}

/// What one name matches: HTTP statuses, gRPC codes and error kinds.
#[derive(Debug, Clone, Copy)]
struct Meaning {
    http: HttpBits,
    grpc: GrpcCodes,
    kinds: u8,
}

impl Meaning {
    const NONE: Meaning = Meaning {
        http: HttpBits::EMPTY,
        grpc: GrpcCodes::empty(),
        kinds: 0,
    };

    const fn http(mut self, code: u16) -> Self {
        self.http = self.http.with(code);
        self
    }

    const fn http_range(mut self, from: u16, to: u16) -> Self {
        self.http = self.http.with_range(from, to);
        self
    }

    const fn grpc(mut self, code: GrpcCode) -> Self {
        self.grpc = self.grpc.with(code);
        self
    }

    const fn kind(mut self, kind: u8) -> Self {
        self.kinds |= kind;
        self
    }

    fn add(&mut self, other: Meaning) {
        self.http = self.http.union(other.http);
        for code in GRPC_NAMES.iter().map(|(_, c)| *c) {
            if other.grpc.contains(code) {
                self.grpc = self.grpc.with(code);
            }
        }
        self.kinds |= other.kinds;
    }
}

const NETWORK_TIMEOUT: Meaning = Meaning::NONE
    .kind(TIMEOUT)
    .http(408)
    .http(504)
    .grpc(GrpcCode::DeadlineExceeded);
const CONNECTION_ERROR: Meaning = Meaning::NONE.kind(CONNECTION);
const SERVICE_UNAVAILABLE: Meaning = Meaning::NONE.http(503).grpc(GrpcCode::Unavailable);
const TOO_MANY_REQUESTS: Meaning = Meaning::NONE.http(429).grpc(GrpcCode::ResourceExhausted);
/// 5xx, and the gRPC codes `google.rpc.Code` maps to a 5xx.
const SERVER_ERROR: Meaning = Meaning::NONE
    .http_range(500, 599)
    .grpc(GrpcCode::Internal)
    .grpc(GrpcCode::Unknown)
    .grpc(GrpcCode::DataLoss)
    .grpc(GrpcCode::Unavailable)
    .grpc(GrpcCode::Unimplemented)
    .grpc(GrpcCode::DeadlineExceeded);
/// 4xx, and the gRPC codes `google.rpc.Code` maps to a 4xx.
const CLIENT_ERROR: Meaning = Meaning::NONE
    .http_range(400, 499)
    .grpc(GrpcCode::Cancelled)
    .grpc(GrpcCode::InvalidArgument)
    .grpc(GrpcCode::NotFound)
    .grpc(GrpcCode::AlreadyExists)
    .grpc(GrpcCode::PermissionDenied)
    .grpc(GrpcCode::ResourceExhausted)
    .grpc(GrpcCode::FailedPrecondition)
    .grpc(GrpcCode::Aborted)
    .grpc(GrpcCode::OutOfRange)
    .grpc(GrpcCode::Unauthenticated);
const VALIDATION_ERROR: Meaning = Meaning::NONE
    .http(400)
    .http(422)
    .grpc(GrpcCode::InvalidArgument)
    .grpc(GrpcCode::OutOfRange)
    .grpc(GrpcCode::FailedPrecondition);
const AUTHENTICATION_FAILED: Meaning = Meaning::NONE.http(401).grpc(GrpcCode::Unauthenticated);
const PERMISSION_DENIED: Meaning = Meaning::NONE.http(403).grpc(GrpcCode::PermissionDenied);
const NOT_FOUND: Meaning = Meaning::NONE.http(404).grpc(GrpcCode::NotFound);
const CONFLICT: Meaning = Meaning::NONE
    .http(409)
    .grpc(GrpcCode::Aborted)
    .grpc(GrpcCode::AlreadyExists);
const CIRCUIT_OPEN_M: Meaning = Meaning::NONE.kind(CIRCUIT_OPEN);

/// The standard names, in the order [`ErrorNames::known`] lists them.
const STANDARD: &[(&str, Meaning)] = &[
    ("NetworkTimeout", NETWORK_TIMEOUT),
    ("Timeout", NETWORK_TIMEOUT),
    ("ConnectionError", CONNECTION_ERROR),
    ("NetworkError", CONNECTION_ERROR),
    ("ServiceUnavailable", SERVICE_UNAVAILABLE),
    ("TooManyRequests", TOO_MANY_REQUESTS),
    ("RateLimited", TOO_MANY_REQUESTS),
    ("ServerError", SERVER_ERROR),
    ("ClientError", CLIENT_ERROR),
    ("ValidationError", VALIDATION_ERROR),
    ("BadRequest", VALIDATION_ERROR),
    ("AuthenticationFailed", AUTHENTICATION_FAILED),
    ("Unauthorized", AUTHENTICATION_FAILED),
    ("PermissionDenied", PERMISSION_DENIED),
    ("Forbidden", PERMISSION_DENIED),
    ("NotFound", NOT_FOUND),
    ("Conflict", CONFLICT),
    ("CircuitOpen", CIRCUIT_OPEN_M),
];

/// gRPC's code names, as the specification spells them.
const GRPC_NAMES: [(&str, GrpcCode); 17] = [
    ("OK", GrpcCode::Ok),
    ("CANCELLED", GrpcCode::Cancelled),
    ("UNKNOWN", GrpcCode::Unknown),
    ("INVALID_ARGUMENT", GrpcCode::InvalidArgument),
    ("DEADLINE_EXCEEDED", GrpcCode::DeadlineExceeded),
    ("NOT_FOUND", GrpcCode::NotFound),
    ("ALREADY_EXISTS", GrpcCode::AlreadyExists),
    ("PERMISSION_DENIED", GrpcCode::PermissionDenied),
    ("RESOURCE_EXHAUSTED", GrpcCode::ResourceExhausted),
    ("FAILED_PRECONDITION", GrpcCode::FailedPrecondition),
    ("ABORTED", GrpcCode::Aborted),
    ("OUT_OF_RANGE", GrpcCode::OutOfRange),
    ("UNIMPLEMENTED", GrpcCode::Unimplemented),
    ("INTERNAL", GrpcCode::Internal),
    ("UNAVAILABLE", GrpcCode::Unavailable),
    ("DATA_LOSS", GrpcCode::DataLoss),
    ("UNAUTHENTICATED", GrpcCode::Unauthenticated),
];

const HTTP_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

const STATUS_COUNT: usize = (HttpBits::LAST - HttpBits::FIRST + 1) as usize;

/// "100" to "599", as ASCII digits.
static STATUS_TEXT: [[u8; 3]; STATUS_COUNT] = {
    let mut table = [[0u8; 3]; STATUS_COUNT];
    let mut i = 0;
    while i < STATUS_COUNT {
        let code = i + HttpBits::FIRST as usize;
        table[i] = [
            b'0' + (code / 100) as u8,
            b'0' + (code / 10 % 10) as u8,
            b'0' + (code % 10) as u8,
        ];
        i += 1;
    }
    table
};

fn status_text(i: usize) -> &'static str {
    std::str::from_utf8(&STATUS_TEXT[i]).unwrap_or("")
}

/// The gRPC code named `name` (`UNAVAILABLE`), as configuration files write it.
pub(crate) fn grpc_code_named(name: &str) -> Option<GrpcCode> {
    GRPC_NAMES.iter().find(|(n, _)| *n == name).map(|(_, c)| *c)
}

/// The meaning of a built-in name (standard name, gRPC code, HTTP status or class).
fn builtin(name: &str) -> Option<Meaning> {
    if let Some((_, m)) = STANDARD.iter().find(|(n, _)| *n == name) {
        return Some(*m);
    }
    if let Some(code) = grpc_code_named(name) {
        return Some(Meaning::NONE.grpc(code));
    }
    match name.as_bytes() {
        [d @ b'1'..=b'5', b'x', b'x'] | [d @ b'1'..=b'5', b'X', b'X'] => {
            let from = u16::from(d - b'0') * 100;
            Some(Meaning::NONE.http_range(from, from + 99))
        }
        [a, b, c] if [a, b, c].iter().all(|d| d.is_ascii_digit()) => {
            let code = u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0');
            (HttpBits::FIRST..=HttpBits::LAST)
                .contains(&code)
                .then(|| Meaning::NONE.http(code))
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// The catalogue.

type NameOf = for<'a> fn(&'a (dyn Error + 'static)) -> Option<&'a str>;
type AsError = for<'a> fn(&'a (dyn Any + 'static)) -> Option<&'a (dyn Error + 'static)>;

fn name_of<'a, E: NamedError>(e: &'a (dyn Error + 'static)) -> Option<&'a str> {
    e.downcast_ref::<E>().map(E::error_name)
}

fn as_error<'a, E: NamedError>(e: &'a (dyn Any + 'static)) -> Option<&'a (dyn Error + 'static)> {
    e.downcast_ref::<E>().map(|e| e as &(dyn Error + 'static))
}

/// One registered [`NamedError`] type.
#[derive(Debug, Clone, Copy)]
struct Registered {
    type_id: TypeId,
    names: &'static [&'static str],
    name_of: NameOf,
    as_error: AsError,
}

/// The catalogue of error names a configuration may use: the standard names below, every HTTP
/// status and class, every gRPC code name, and the names of the [`NamedError`] types you
/// [`register`](Self::register).
///
/// Names are matched exactly, case included. A name [`compile`](Self::compile) does not know is an
/// error, never ignored.
///
/// | name | matches a response | matches an error (in its chain) |
/// |---|---|---|
/// | `NetworkTimeout`, `Timeout` | HTTP 408, 504; gRPC `DEADLINE_EXCEEDED` | the [`timeout`](crate::timeout) layer's `Elapsed`, `tokio::time::error::Elapsed`, an `io::Error` of kind `TimedOut`, a `reqwest::Error` whose `is_timeout()`, a `tonic::Status` `DEADLINE_EXCEEDED` |
/// | `ConnectionError`, `NetworkError` | — | an `io::Error` of kind `ConnectionRefused`, `ConnectionReset`, `ConnectionAborted`, `NotConnected`, `BrokenPipe`, `UnexpectedEof`, `AddrNotAvailable`, `HostUnreachable`, `NetworkUnreachable` or `NetworkDown`; a `reqwest::Error` whose `is_connect()`, or whose `is_request()` and not `is_timeout()` |
/// | `ServiceUnavailable` | HTTP 503; gRPC `UNAVAILABLE` | a `tonic::Status` `UNAVAILABLE`; a `reqwest::Error` with status 503 (`error_for_status`) |
/// | `TooManyRequests`, `RateLimited` | HTTP 429; gRPC `RESOURCE_EXHAUSTED` | the same codes in errors |
/// | `ServerError` | any HTTP 5xx; gRPC `INTERNAL`, `UNKNOWN`, `DATA_LOSS`, `UNAVAILABLE`, `UNIMPLEMENTED`, `DEADLINE_EXCEEDED` (the codes `google.rpc.Code` maps to a 5xx) | the same codes in errors |
/// | `ClientError` | any HTTP 4xx; gRPC `CANCELLED`, `INVALID_ARGUMENT`, `NOT_FOUND`, `ALREADY_EXISTS`, `PERMISSION_DENIED`, `RESOURCE_EXHAUSTED`, `FAILED_PRECONDITION`, `ABORTED`, `OUT_OF_RANGE`, `UNAUTHENTICATED` (mapped to a 4xx) | the same codes in errors |
/// | `ValidationError`, `BadRequest` | HTTP 400, 422; gRPC `INVALID_ARGUMENT`, `OUT_OF_RANGE`, `FAILED_PRECONDITION` | the same codes in errors |
/// | `AuthenticationFailed`, `Unauthorized` | HTTP 401; gRPC `UNAUTHENTICATED` | the same codes in errors |
/// | `PermissionDenied`, `Forbidden` | HTTP 403; gRPC `PERMISSION_DENIED` | the same codes in errors |
/// | `NotFound` | HTTP 404; gRPC `NOT_FOUND` | the same codes in errors |
/// | `Conflict` | HTTP 409; gRPC `ABORTED`, `ALREADY_EXISTS` | the same codes in errors |
/// | `CircuitOpen` | a breaker's refusal (its 503 carrying a [`CircuitOpen`] in the extensions) | a [`CircuitOpen`] error |
/// | `100` ..= `599` | that HTTP status | a `reqwest::Error` with that status |
/// | `1xx` ..= `5xx` (also `1XX` ..= `5XX`) | any status of that class | a `reqwest::Error` with such a status |
/// | `OK`, `CANCELLED`, ..., `UNAVAILABLE`, `UNAUTHENTICATED` (every gRPC code name) | that `grpc-status` in the response head | a `tonic::Status` with that code |
/// | a registered [`NamedError`]'s name | — | an error of that type whose `error_name()` is the name |
///
/// "Errors" are the error itself, the error inside a [`BoxError`] (or any
/// `Box<dyn Error>`/`Arc<dyn Error>`), then its [`source()`](std::error::Error::source) links (and
/// the error an `io::Error` wraps), at most 16 deep. An error whose own type is not one of those
/// listed, nor boxed, nor registered, is not seen at all: box it (`map_err(Into::into)`).
/// `reqwest::Error` needs feature `reqwest`, `tonic::Status` feature `tonic`. A response's HTTP
/// status is matched as it is: a gRPC answer with a non-200 HTTP status (from a proxy, say) is
/// matched by its HTTP names (`503`, `ServiceUnavailable`), not by a gRPC code. A registered
/// type may use a built-in name too: the name then matches both.
///
/// ```
/// use tower_rampart::classify::ErrorNames;
///
/// let names = ErrorNames::default();
/// let retryable = names.compile(&["NetworkTimeout", "ServiceUnavailable", "429", "5xx"]).unwrap();
/// let res = http::Response::builder().status(503).body(()).unwrap();
/// assert!(retryable.matches_response(&res));
/// let timed_out = std::io::Error::from(std::io::ErrorKind::TimedOut);
/// assert!(retryable.matches_error(&timed_out));
///
/// let err = names.compile(&["ServiceUnavialable"]).unwrap_err();
/// assert_eq!(err.suggestion(), Some("ServiceUnavailable"));
/// ```
#[derive(Debug, Clone, Default)]
pub struct ErrorNames {
    registered: Vec<Registered>,
}

impl ErrorNames {
    /// Adds the names of `E` ([`NamedError::NAMES`]). Registering a type twice changes nothing.
    ///
    /// ```
    /// use tower_rampart::classify::{ErrorNames, NamedError};
    ///
    /// #[derive(Debug)]
    /// struct Throttled;
    /// impl std::fmt::Display for Throttled {
    ///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    ///         f.write_str("throttled")
    ///     }
    /// }
    /// impl std::error::Error for Throttled {}
    /// impl NamedError for Throttled {
    ///     const NAMES: &'static [&'static str] = &["Throttled"];
    ///     fn error_name(&self) -> &str {
    ///         "Throttled"
    ///     }
    /// }
    ///
    /// let names = ErrorNames::default().register::<Throttled>();
    /// assert!(names.known().any(|n| n == "Throttled"));
    /// assert!(names.compile(&["Throttled", "ServiceUnavailable"]).is_ok());
    /// ```
    pub fn register<E: NamedError>(mut self) -> Self {
        let type_id = TypeId::of::<E>();
        if !self.registered.iter().any(|r| r.type_id == type_id) {
            self.registered.push(Registered {
                type_id,
                names: E::NAMES,
                name_of: name_of::<E>,
                as_error: as_error::<E>,
            });
        }
        self
    }

    /// Every name [`compile`](Self::compile) accepts: the standard names, the gRPC code names,
    /// the HTTP classes (`1xx` ..= `5xx`, whose `1XX` spellings are accepted too), the HTTP
    /// statuses `100` ..= `599`, then the registered types' names.
    ///
    /// ```
    /// use tower_rampart::classify::ErrorNames;
    ///
    /// let names = ErrorNames::default();
    /// let known: Vec<&str> = names.known().collect();
    /// assert_eq!(known[0], "NetworkTimeout");
    /// assert!(known.contains(&"UNAVAILABLE"));
    /// assert!(known.contains(&"5xx"));
    /// assert!(known.contains(&"503"));
    /// ```
    pub fn known(&self) -> impl Iterator<Item = &'static str> + '_ {
        STANDARD
            .iter()
            .map(|(n, _)| *n)
            .chain(GRPC_NAMES.iter().map(|(n, _)| *n))
            .chain(HTTP_CLASSES)
            .chain((0..STATUS_COUNT).map(status_text))
            .chain(self.registered.iter().flat_map(|r| r.names.iter().copied()))
    }

    /// Compiles a list of names into a [`NameSet`]: call it once, at start-up. The first name
    /// that is not [known](Self::known) is an [`UnknownName`], with a close known name to suggest
    /// when there is one. An empty list gives a set that matches nothing.
    ///
    /// ```
    /// use tower_rampart::classify::ErrorNames;
    ///
    /// let names = ErrorNames::default();
    /// let from_config: Vec<String> = vec!["ValidationError".into(), "AuthenticationFailed".into()];
    /// let never = names.compile(&from_config).unwrap();
    /// let res = http::Response::builder().status(422).body(()).unwrap();
    /// assert!(never.matches_response(&res));
    ///
    /// let err = names.compile(&["NetworkTimeout", "networktimeout"]).unwrap_err();
    /// assert_eq!(err.index(), 1);
    /// assert_eq!(err.name(), "networktimeout");
    /// assert_eq!(err.suggestion(), Some("NetworkTimeout"));
    /// ```
    pub fn compile(&self, names: &[impl AsRef<str>]) -> Result<NameSet, UnknownName> {
        let mut meaning = Meaning::NONE;
        let mut types: Vec<TypeMatch> = self
            .registered
            .iter()
            .map(|r| TypeMatch {
                registered: *r,
                wanted: Vec::new(),
            })
            .collect();
        for (index, name) in names.iter().enumerate() {
            let name = name.as_ref();
            let mut known = false;
            if let Some(m) = builtin(name) {
                meaning.add(m);
                known = true;
            }
            for t in &mut types {
                if let Some(n) = t.registered.names.iter().find(|n| **n == name) {
                    if !t.wanted.contains(n) {
                        t.wanted.push(n);
                    }
                    known = true;
                }
            }
            if !known {
                return Err(UnknownName {
                    name: name.to_owned(),
                    index,
                    suggestion: self.suggest(name),
                });
            }
        }
        Ok(NameSet(Arc::new(Inner {
            http: meaning.http,
            grpc: meaning.grpc,
            kinds: meaning.kinds,
            types: types
                .into_iter()
                .map(|t| TypeMatchFrozen {
                    registered: t.registered,
                    wanted: t.wanted.into_boxed_slice(),
                })
                .collect(),
            names: names.iter().map(|n| Box::from(n.as_ref())).collect(),
        })))
    }

    /// The known name closest to `name`, if one is close enough.
    fn suggest(&self, name: &str) -> Option<&'static str> {
        let wanted = normalise(name);
        let limit = (wanted.len() / 4).clamp(1, 4);
        let mut best: Option<(usize, &'static str)> = None;
        for candidate in self.known() {
            let d = distance(&wanted, &normalise(candidate));
            if d <= limit && best.is_none_or(|(b, _)| d < b) {
                best = Some((d, candidate));
            }
        }
        best.map(|(_, n)| n)
    }
}

/// Lower case, without `_` and `-`: `DEADLINE_EXCEEDED` and `DeadlineExceeded` are neighbours.
fn normalise(name: &str) -> Vec<char> {
    name.chars()
        .filter(|c| !matches!(c, '_' | '-'))
        .flat_map(char::to_lowercase)
        .collect()
}

/// Optimal string alignment distance: insertions, deletions, substitutions and transpositions
/// of neighbours (`ia` for `ai`) cost one each.
fn distance(a: &[char], b: &[char]) -> usize {
    let width = b.len() + 1;
    let mut rows = vec![0usize; (a.len() + 1) * width];
    let at = |i: usize, j: usize| i * width + j;
    for i in 0..=a.len() {
        rows[at(i, 0)] = i;
    }
    for j in 0..=b.len() {
        rows[at(0, j)] = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (rows[at(i - 1, j)] + 1)
                .min(rows[at(i, j - 1)] + 1)
                .min(rows[at(i - 1, j - 1)] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(rows[at(i - 2, j - 2)] + 1);
            }
            rows[at(i, j)] = d;
        }
    }
    rows[at(a.len(), b.len())]
}

/// A configured error name that [`ErrorNames`] does not know.
///
/// ```
/// use tower_rampart::classify::ErrorNames;
///
/// let err = ErrorNames::default()
///     .compile(&["NetworkTimeout", "ServiceUnavialable"])
///     .unwrap_err();
/// assert_eq!(err.name(), "ServiceUnavialable");
/// assert_eq!(err.index(), 1);
/// assert_eq!(err.suggestion(), Some("ServiceUnavailable"));
/// assert_eq!(
///     err.to_string(),
///     "unknown error name \"ServiceUnavialable\" (entry 1); did you mean \"ServiceUnavailable\"?",
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownName {
    name: String,
    index: usize,
    suggestion: Option<&'static str>,
}

impl UnknownName {
    /// The name as configured.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its position in the list (from 0).
    pub fn index(&self) -> usize {
        self.index
    }

    /// A known name close to it, if there is one.
    pub fn suggestion(&self) -> Option<&'static str> {
        self.suggestion
    }
}

impl fmt::Display for UnknownName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown error name {:?} (entry {})",
            self.name, self.index
        )?;
        if let Some(s) = self.suggestion {
            write!(f, "; did you mean {s:?}?")?;
        }
        Ok(())
    }
}

impl Error for UnknownName {}

// ---------------------------------------------------------------------------------------------
// Compiled sets.

/// Registered type while compiling.
struct TypeMatch {
    registered: Registered,
    wanted: Vec<&'static str>,
}

/// A registered type and the names of it a set matches (possibly none: the type is still used to
/// see an error of that type as an error).
struct TypeMatchFrozen {
    registered: Registered,
    wanted: Box<[&'static str]>,
}

struct Inner {
    http: HttpBits,
    grpc: GrpcCodes,
    kinds: u8,
    types: Box<[TypeMatchFrozen]>,
    /// The names as configured, for `Debug`.
    names: Box<[Box<str>]>,
}

/// How many links of an error's chain are looked at.
const MAX_DEPTH: usize = 16;

/// A compiled list of error names (see [`ErrorNames`] for what each name matches). Cheap to
/// clone (an `Arc`); matching neither allocates nor locks.
///
/// ```
/// use tower_rampart::{BoxError, classify::ErrorNames};
///
/// let set = ErrorNames::default().compile(&["ConnectionError", "UNAVAILABLE"]).unwrap();
/// let refused: BoxError = Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
/// assert!(set.matches_error(&refused));
/// let grpc = http::Response::builder().header("grpc-status", "14").body(()).unwrap();
/// assert!(set.matches_response(&grpc));
/// assert_eq!(set.names().collect::<Vec<_>>(), ["ConnectionError", "UNAVAILABLE"]);
/// ```
#[derive(Clone)]
pub struct NameSet(Arc<Inner>);

impl NameSet {
    /// The names the set was compiled from, as configured.
    ///
    /// ```
    /// use tower_rampart::classify::ErrorNames;
    ///
    /// let set = ErrorNames::default().compile(&["503"]).unwrap();
    /// assert_eq!(set.names().next(), Some("503"));
    /// ```
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.0.names.iter().map(|n| &**n)
    }

    /// Whether the set was compiled from an empty list (it matches nothing).
    ///
    /// ```
    /// use tower_rampart::classify::ErrorNames;
    ///
    /// assert!(ErrorNames::default().compile(&[] as &[&str]).unwrap().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.0.names.is_empty()
    }

    /// Whether a response matches: its HTTP status, its gRPC code
    /// ([`InspectResponse::grpc_code`]), or, for `CircuitOpen`, a breaker's refusal.
    ///
    /// ```
    /// use tower_rampart::classify::ErrorNames;
    ///
    /// let set = ErrorNames::default().compile(&["TooManyRequests"]).unwrap();
    /// let res = |s: u16| http::Response::builder().status(s).body(()).unwrap();
    /// assert!(set.matches_response(&res(429)));
    /// assert!(!set.matches_response(&res(200)));
    /// ```
    #[inline]
    pub fn matches_response<R: InspectResponse + ?Sized>(&self, response: &R) -> bool {
        let inner = &*self.0;
        if inner.kinds & CIRCUIT_OPEN != 0 && response.is_breaker_refusal() {
            return true;
        }
        if !inner.http.is_empty()
            && response
                .http_status()
                .is_some_and(|s| inner.http.contains(s))
        {
            return true;
        }
        response.grpc_code().is_some_and(|c| inner.grpc.contains(c))
    }

    /// Whether an error matches: any link of its chain (the error itself or the error inside a
    /// `BoxError`, then its `source()` links, at most 16) that the set's names match. The error
    /// must be one of the types [`ErrorNames`] lists, a boxed error, or a registered type.
    ///
    /// ```
    /// use tower_rampart::{BoxError, classify::ErrorNames};
    ///
    /// let set = ErrorNames::default().compile(&["Timeout"]).unwrap();
    /// let elapsed: BoxError = Box::new(std::io::Error::new(std::io::ErrorKind::TimedOut, "slow"));
    /// assert!(set.matches_error(&elapsed));
    /// assert!(!set.matches_error(&"not an error type"));
    /// ```
    pub fn matches_error<E: 'static>(&self, error: &E) -> bool {
        let Some(mut link) = self.root(error) else {
            return false;
        };
        for _ in 0..MAX_DEPTH {
            if self.link_matches(link) {
                return true;
            }
            match next_link(link) {
                Some(next) => link = next,
                None => return false,
            }
        }
        false
    }

    /// `error` as a `dyn Error`, when its type is one we know.
    fn root<'a, E: 'static>(&self, error: &'a E) -> Option<&'a (dyn Error + 'static)> {
        let any = error as &(dyn Any + 'static);
        macro_rules! try_as {
            ($($ty:ty),* $(,)?) => {
                $(
                    if let Some(e) = any.downcast_ref::<$ty>() {
                        return Some(e);
                    }
                )*
            };
        }
        macro_rules! try_boxed {
            ($($ty:ty),* $(,)?) => {
                $(
                    if let Some(e) = any.downcast_ref::<$ty>() {
                        return Some(&**e);
                    }
                )*
            };
        }
        try_boxed!(
            BoxError,
            Box<dyn Error + Send + 'static>,
            Box<dyn Error + 'static>,
            Arc<dyn Error + Send + Sync + 'static>,
        );
        try_as!(
            std::io::Error,
            crate::timeout::Elapsed,
            CircuitOpen,
            tokio::time::error::Elapsed,
        );
        #[cfg(feature = "tonic")]
        try_as!(tonic::Status);
        #[cfg(feature = "reqwest")]
        try_as!(reqwest::Error);
        self.0
            .types
            .iter()
            .find_map(|t| (t.registered.as_error)(any))
    }

    /// Whether one link of a chain matches.
    fn link_matches(&self, link: &(dyn Error + 'static)) -> bool {
        let inner = &*self.0;
        if let Some(io) = link.downcast_ref::<std::io::Error>() {
            if inner.kinds & io_kind(io.kind()) != 0 {
                return true;
            }
        } else if link.is::<crate::timeout::Elapsed>() || link.is::<tokio::time::error::Elapsed>() {
            if inner.kinds & TIMEOUT != 0 {
                return true;
            }
        } else if link.is::<CircuitOpen>() {
            if inner.kinds & CIRCUIT_OPEN != 0 {
                return true;
            }
        } else if self.foreign_link_matches(link) {
            return true;
        }
        inner.types.iter().any(|t| {
            !t.wanted.is_empty()
                && (t.registered.name_of)(link).is_some_and(|n| t.wanted.contains(&n))
        })
    }

    /// Whether a `tonic::Status` or `reqwest::Error` link matches.
    #[allow(unused_variables)]
    fn foreign_link_matches(&self, link: &(dyn Error + 'static)) -> bool {
        let inner = &*self.0;
        #[cfg(feature = "tonic")]
        if let Some(status) = link.downcast_ref::<tonic::Status>() {
            let code = GrpcCode::from_i32(status.code() as i32);
            return inner.grpc.contains(code);
        }
        #[cfg(feature = "reqwest")]
        if let Some(e) = link.downcast_ref::<reqwest::Error>() {
            let timeout = e.is_timeout();
            let kinds = if timeout { TIMEOUT } else { 0 }
                | if e.is_connect() || (e.is_request() && !timeout) {
                    CONNECTION
                } else {
                    0
                };
            let by_status = e.status().is_some_and(|s| inner.http.contains(s));
            return inner.kinds & kinds != 0 || by_status;
        }
        false
    }
}

/// The kind bit an `io::ErrorKind` stands for.
fn io_kind(kind: std::io::ErrorKind) -> u8 {
    use std::io::ErrorKind::*;
    match kind {
        TimedOut => TIMEOUT,
        ConnectionRefused | ConnectionReset | ConnectionAborted | NotConnected | BrokenPipe
        | UnexpectedEof | AddrNotAvailable | HostUnreachable | NetworkUnreachable | NetworkDown => {
            CONNECTION
        }
        _ => 0,
    }
}

/// The next link of a chain: the error an `io::Error` wraps (its `source()` skips it), else
/// `source()`.
fn next_link<'a>(link: &'a (dyn Error + 'static)) -> Option<&'a (dyn Error + 'static)> {
    if let Some(wrapped) = link
        .downcast_ref::<std::io::Error>()
        .and_then(std::io::Error::get_ref)
    {
        return Some(wrapped);
    }
    link.source()
}

impl fmt::Debug for NameSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("NameSet").field(&self.0.names).finish()
    }
}

// ---------------------------------------------------------------------------------------------
// The classifier.

/// A classifier driven by configured error names, around a base classifier.
///
/// - If the [`except`](Self::except) set matches, the call is [`Outcome::Ignore`]: never a
///   failure, never retried, not counted by a breaker.
/// - Else, if an [`only`](Self::only) set is given, failures are exactly what it matches: a
///   matching call is a failure (with the base's retry-after hint when the base also calls it a
///   failure, e.g. a 503's `Retry-After`; else [`Outcome::FAILURE`]). A call it does not match
///   keeps the base's outcome, except that a base failure becomes [`Outcome::Ignore`]: a
///   success stays a success, so a breaker's window still counts successes.
/// - Else the base decides.
///
/// Whether a call is a breaker's refusal ([`Classify::is_refusal`], [`Classify::is_refused`]) is
/// the base's answer, whatever the names say: the retry layer still never retries a refusal.
///
/// Responses must implement [`InspectResponse`]; errors may be of any type (see [`ErrorNames`]
/// for the types that are looked into).
///
/// ```
/// use tower_rampart::classify::{ByName, Classify, ErrorNames, HttpStatus, Outcome};
///
/// let names = ErrorNames::default();
/// let classifier = ByName::new(HttpStatus::retryable())
///     .only(names.compile(&["NetworkTimeout", "ServiceUnavailable"]).unwrap())
///     .except(names.compile(&["ValidationError", "AuthenticationFailed"]).unwrap());
/// let res = |s: u16| http::Response::builder().status(s).body(()).unwrap();
/// let k = |s: u16| classifier.classify(Ok::<_, &tower_rampart::BoxError>(&res(s)));
/// assert_eq!(k(503), Outcome::FAILURE);
/// assert_eq!(k(500), Outcome::Ignore); // a failure for the base, not one of the names
/// assert_eq!(k(422), Outcome::Ignore);
/// assert_eq!(k(200), Outcome::Success);
///
/// let timeout: tower_rampart::BoxError =
///     Box::new(std::io::Error::from(std::io::ErrorKind::TimedOut));
/// assert_eq!(classifier.classify(Err::<&http::Response<()>, _>(&timeout)), Outcome::FAILURE);
/// ```
#[derive(Debug, Clone)]
pub struct ByName<C> {
    base: C,
    retry_on: Option<NameSet>,
    never: Option<NameSet>,
    /// Lists that a configuration reload may replace; when set, they replace the two above.
    live: Option<LiveNames>,
    /// The live lists as one call found them when it started ([`Classify::for_call`]): when
    /// set, they replace all of the above.
    pinned: Option<Arc<NamePair>>,
}

/// The two name lists of a [`ByName`] classifier, replaceable while it classifies: a
/// configuration registry keeps one per policy and sets new lists on reload. Cheap to clone;
/// every clone (and every classifier made with it) sees the same lists.
///
/// A call reads the lists with one lock-free load (no allocation); a classification uses one
/// pair of lists, the old or the new, never one of each. A retried call keeps the pair it
/// started with for all its attempts ([`Classify::for_call`]), as it keeps its retry policy: a
/// reload applies to calls that start after it.
///
/// ```
/// use tower_rampart::classify::{ByName, Classify, ErrorNames, HttpStatus, LiveNames, Outcome};
///
/// let names = ErrorNames::default();
/// let lists = LiveNames::new(Some(names.compile(&["503"]).unwrap()), None);
/// let classifier = ByName::live(HttpStatus::default(), lists.clone());
/// let res = |s: u16| http::Response::builder().status(s).body(()).unwrap();
/// let k = |s: u16| classifier.classify(Ok::<_, &tower_rampart::BoxError>(&res(s)));
/// assert_eq!(k(502), Outcome::Ignore);
/// lists.set(Some(names.compile(&["5xx"]).unwrap()), None);
/// assert_eq!(k(502), Outcome::FAILURE);
/// ```
#[derive(Clone)]
pub struct LiveNames(Arc<arc_swap::ArcSwap<NamePair>>);

/// `retry_on` and `never`.
type NamePair = (Option<NameSet>, Option<NameSet>);

impl LiveNames {
    /// Lists to start with: failures are exactly what `retry_on` matches (when given), and what
    /// `never` matches is never a failure.
    pub fn new(retry_on: Option<NameSet>, never: Option<NameSet>) -> Self {
        LiveNames(Arc::new(arc_swap::ArcSwap::from_pointee((retry_on, never))))
    }

    /// Replaces both lists, for every classifier made with this (or a clone).
    pub fn set(&self, retry_on: Option<NameSet>, never: Option<NameSet>) {
        self.0.store(Arc::new((retry_on, never)));
    }
}

impl fmt::Debug for LiveNames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pair = self.0.load();
        f.debug_struct("LiveNames")
            .field("retry_on", &pair.0)
            .field("never", &pair.1)
            .finish()
    }
}

impl<C> ByName<C> {
    /// Names nothing yet: `base` decides everything.
    ///
    /// ```
    /// use tower_rampart::classify::{ByName, Classify, HttpStatus, Outcome};
    ///
    /// let c = ByName::new(HttpStatus::default());
    /// let res = http::Response::builder().status(502).body(()).unwrap();
    /// assert_eq!(c.classify(Ok::<_, &()>(&res)), Outcome::FAILURE);
    /// ```
    pub fn new(base: C) -> Self {
        ByName {
            base,
            retry_on: None,
            never: None,
            live: None,
            pinned: None,
        }
    }

    /// Names from `lists`, which may be replaced while the classifier runs
    /// ([`LiveNames::set`]); they take the place of [`only`](Self::only) and
    /// [`except`](Self::except).
    pub fn live(base: C, lists: LiveNames) -> Self {
        ByName {
            base,
            retry_on: None,
            never: None,
            live: Some(lists),
            pinned: None,
        }
    }

    /// Failures are exactly the calls `set` matches (the `retryable_exceptions` of a
    /// configuration).
    ///
    /// ```
    /// use tower_rampart::classify::{ByName, Classify, ErrorNames, HttpStatus, Outcome};
    ///
    /// let c = ByName::new(HttpStatus::default())
    ///     .only(ErrorNames::default().compile(&["409"]).unwrap());
    /// let res = |s: u16| http::Response::builder().status(s).body(()).unwrap();
    /// assert_eq!(c.classify(Ok::<_, &()>(&res(409))), Outcome::FAILURE);
    /// assert_eq!(c.classify(Ok::<_, &()>(&res(502))), Outcome::Ignore);
    /// ```
    pub fn only(mut self, set: NameSet) -> Self {
        self.retry_on = Some(set);
        self
    }

    /// The calls `set` matches are never failures (the `non_retryable_exceptions` of a
    /// configuration); this wins over [`only`](Self::only).
    ///
    /// ```
    /// use tower_rampart::classify::{ByName, Classify, ErrorNames, HttpStatus, Outcome};
    ///
    /// let c = ByName::new(HttpStatus::default())
    ///     .except(ErrorNames::default().compile(&["NotFound", "501"]).unwrap());
    /// let res = http::Response::builder().status(501).body(()).unwrap();
    /// assert_eq!(c.classify(Ok::<_, &()>(&res)), Outcome::Ignore);
    /// ```
    pub fn except(mut self, set: NameSet) -> Self {
        self.never = Some(set);
        self
    }

    /// The base classifier.
    ///
    /// ```
    /// use tower_rampart::classify::{ByName, HttpStatus};
    ///
    /// assert_eq!(*ByName::new(HttpStatus::default()).base(), HttpStatus::default());
    /// ```
    pub fn base(&self) -> &C {
        &self.base
    }
}

impl<C, Res, E> Classify<Res, E> for ByName<C>
where
    C: Classify<Res, E>,
    Res: InspectResponse,
    E: 'static,
{
    fn classify(&self, result: Result<&Res, &E>) -> Outcome {
        match (&self.pinned, &self.live) {
            (Some(pair), _) => self.decide(pair.0.as_ref(), pair.1.as_ref(), result),
            (None, None) => self.decide(self.retry_on.as_ref(), self.never.as_ref(), result),
            (None, Some(lists)) => {
                let pair = lists.0.load();
                self.decide(pair.0.as_ref(), pair.1.as_ref(), result)
            }
        }
    }

    /// Live lists are pinned as they are now (a reference count, no allocation, no lock), so a
    /// reload during the call does not change how its later attempts are judged.
    #[inline]
    fn for_call(&self) -> Self
    where
        Self: Clone,
    {
        let mut one_call = self.clone();
        if let Some(lists) = one_call.live.take() {
            one_call.pinned = Some(lists.0.load_full());
        }
        one_call
    }

    /// As the base classifier says.
    #[inline]
    fn follows_body(&self, head: &Outcome, response: &Res) -> bool {
        self.base.follows_body(head, response)
    }

    /// As the base classifier says.
    fn error_type(&self, result: Result<&Res, &E>) -> Option<std::borrow::Cow<'static, str>> {
        self.base.error_type(result)
    }

    /// The base's outcome of the end, narrowed by the names as at the head: the trailers'
    /// `grpc-status` is the name of a stream's end; a body error or a clean end has none.
    fn classify_end(&self, head: Outcome, end: BodyEnd<'_>) -> Outcome {
        let decide = |retry_on: Option<&NameSet>, never: Option<&NameSet>| {
            let matches = |set: &NameSet| match end {
                BodyEnd::Trailers(trailers) => set.matches_response(&Trailers(trailers)),
                _ => false,
            };
            if never.is_some_and(matches) {
                return Outcome::Ignore;
            }
            let base = self.base.classify_end(head, end);
            narrow(base, retry_on.map(matches))
        };
        match (&self.pinned, &self.live) {
            (Some(pair), _) => decide(pair.0.as_ref(), pair.1.as_ref()),
            (None, None) => decide(self.retry_on.as_ref(), self.never.as_ref()),
            (None, Some(lists)) => {
                let pair = lists.0.load();
                decide(pair.0.as_ref(), pair.1.as_ref())
            }
        }
    }

    #[inline]
    fn is_refusal(&self, error: &E) -> bool
    where
        E: 'static,
    {
        self.base.is_refusal(error)
    }

    #[inline]
    fn is_refused(&self, result: Result<&Res, &E>) -> bool
    where
        E: 'static,
    {
        self.base.is_refused(result)
    }
}

impl<C> ByName<C> {
    /// The outcome of `result` under the lists `retry_on` and `never`.
    fn decide<Res, E>(
        &self,
        retry_on: Option<&NameSet>,
        never: Option<&NameSet>,
        result: Result<&Res, &E>,
    ) -> Outcome
    where
        C: Classify<Res, E>,
        Res: InspectResponse,
        E: 'static,
    {
        let matches = |set: &NameSet| match result {
            Ok(res) => set.matches_response(res),
            Err(e) => set.matches_error(e),
        };
        if never.is_some_and(matches) {
            return Outcome::Ignore;
        }
        let base = self.base.classify(result);
        narrow(base, retry_on.map(matches))
    }
}

/// The base's outcome under an `only` list that the call matched (`Some(true)`), did not match
/// (`Some(false)`), or that is not set (`None`).
fn narrow(base: Outcome, only_matched: Option<bool>) -> Outcome {
    match only_matched {
        None => base,
        Some(true) => match base {
            Outcome::Failure { .. } => base,
            _ => Outcome::FAILURE,
        },
        Some(false) => match base {
            Outcome::Failure { .. } => Outcome::Ignore,
            other => other,
        },
    }
}

/// A stream's trailers, seen as a response for names: their `grpc-status` is the code.
struct Trailers<'a>(&'a http::HeaderMap);

impl InspectResponse for Trailers<'_> {
    fn grpc_code(&self) -> Option<GrpcCode> {
        self.0.get("grpc-status").map(GrpcCode::from_header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_text_table() {
        assert_eq!(status_text(0), "100");
        assert_eq!(status_text(403), "503");
        assert_eq!(status_text(STATUS_COUNT - 1), "599");
    }

    #[test]
    fn builtin_names() {
        assert!(builtin("5xx").is_some());
        assert!(builtin("5XX").is_some());
        assert!(builtin("5Xx").is_none());
        assert!(builtin("6xx").is_none());
        assert!(builtin("099").is_none());
        assert!(builtin("600").is_none());
        assert!(builtin("100").is_some());
        assert!(builtin("unavailable").is_none());
        assert!(builtin("UNAVAILABLE").is_some());
        let m = builtin("ServerError").unwrap();
        assert!(m.http.contains(StatusCode::BAD_GATEWAY));
        assert!(!m.http.contains(StatusCode::NOT_FOUND));
        assert!(m.grpc.contains(GrpcCode::Unavailable));
    }

    #[test]
    fn distances() {
        let d = |a: &str, b: &str| distance(&normalise(a), &normalise(b));
        assert_eq!(d("ServiceUnavialable", "ServiceUnavailable"), 1);
        assert_eq!(d("DeadlineExceeded", "DEADLINE_EXCEEDED"), 0);
        assert_eq!(d("", "abc"), 3);
        assert_eq!(d("kitten", "sitting"), 3);
    }

    #[test]
    fn suggestions() {
        let names = ErrorNames::default();
        let s = |n: &str| names.suggest(n);
        assert_eq!(s("ServiceUnavialable"), Some("ServiceUnavailable"));
        assert_eq!(s("Timout"), Some("Timeout"));
        assert_eq!(s("not_found"), Some("NotFound"));
        assert_eq!(s("DeadlineExceeded"), Some("DEADLINE_EXCEEDED"));
        assert_eq!(s("5xxx"), Some("5xx"));
        assert_eq!(s("CompletelyDifferentThing"), None);
    }

    #[test]
    fn stream_ends_are_narrowed_by_names() {
        let names = ErrorNames::default();
        let mut unavailable = http::HeaderMap::new();
        unavailable.insert("grpc-status", http::HeaderValue::from_static("14"));
        let mut not_found = http::HeaderMap::new();
        not_found.insert("grpc-status", http::HeaderValue::from_static("5"));
        let end = |c: &ByName<super::super::GrpcResponse>, e: BodyEnd<'_>| {
            Classify::<http::Response<()>, ()>::classify_end(c, Outcome::Success, e)
        };
        let base = super::super::GrpcResponse::default();
        let only = ByName::new(base).only(names.compile(&["NOT_FOUND"]).unwrap());
        assert_eq!(end(&only, BodyEnd::Trailers(&not_found)), Outcome::FAILURE);
        assert_eq!(end(&only, BodyEnd::Trailers(&unavailable)), Outcome::Ignore);
        let except = ByName::new(base).except(names.compile(&["UNAVAILABLE"]).unwrap());
        assert_eq!(
            end(&except, BodyEnd::Trailers(&unavailable)),
            Outcome::Ignore
        );
        assert_eq!(end(&except, BodyEnd::Failed), Outcome::FAILURE);
        let plain = ByName::new(base);
        assert_eq!(
            end(&plain, BodyEnd::Trailers(&unavailable)),
            Outcome::FAILURE
        );
        let head = http::Response::new(());
        assert!(Classify::<_, ()>::follows_body(
            &plain,
            &Outcome::Success,
            &head
        ));
    }

    #[test]
    fn every_known_name_compiles() {
        let names = ErrorNames::default();
        let known: Vec<&str> = names.known().collect();
        assert_eq!(known.len(), STANDARD.len() + 17 + 5 + STATUS_COUNT);
        for n in &known {
            assert!(names.compile(&[n]).is_ok(), "{n}");
        }
        let all = names.compile(&known).unwrap();
        assert!(all.matches_response(&http::Response::new(())));
    }
}
