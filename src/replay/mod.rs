//! Sending a request a second time: bodies held in memory ([`Buffered`], [`BufferBodyLayer`]),
//! copies of requests ([`Replay`], [`CloneRequest`], [`HttpReplay`]), and which requests may be
//! sent twice at all.
//!
//! Shared by retry (another attempt), fallback (a backup service gets the request the primary
//! failed) and idempotency (the handler gets the body the layer read to fingerprint it).

mod body;

use bytes::Bytes;
use http::{HeaderMap, Method, Request};

pub(crate) use body::Relay;
pub use body::{BufferBody, BufferBodyLayer, BufferFuture, Buffered, DEFAULT_BUFFER_LIMIT};

use crate::idempotency::IDEMPOTENCY_KEY;

/// Makes a copy of a request for a later attempt.
///
/// The retry layer asks once per attempt it might still make; `None` means the request cannot
/// (or must not) be sent again, and the call gets exactly one attempt.
pub trait Replay<Req> {
    /// A copy of `req` for another attempt, or `None`.
    fn replay(&self, req: &Req) -> Option<Req>;
}

/// Every `Req: Clone` can be sent again (non-HTTP services).
///
/// ```
/// use tower_rampart::replay::{CloneRequest, Replay};
///
/// assert_eq!(CloneRequest.replay(&"ping"), Some("ping"));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct CloneRequest;

impl<Req: Clone> Replay<Req> for CloneRequest {
    #[inline]
    fn replay(&self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

/// HTTP requests: only methods that are safe to repeat, and only bodies that can be copied.
///
/// By default GET, HEAD, OPTIONS, PUT, DELETE and TRACE are retried; POST and PATCH only when
/// they carry an `Idempotency-Key` header (see
/// [`SetIdempotencyKeyLayer`](crate::retry::SetIdempotencyKeyLayer), which adds one). Bodies must
/// implement [`ReplayBody`]: wrap streaming bodies with [`BufferBodyLayer`] first.
///
/// ```
/// use tower_rampart::replay::{HttpReplay, Replay};
///
/// let get = http::Request::get("/").body(String::new()).unwrap();
/// let post = http::Request::post("/").body(String::from("{}")).unwrap();
/// let keyed = http::Request::post("/").header("idempotency-key", "\"k1\"").body(String::new()).unwrap();
/// assert!(HttpReplay::default().replay(&get).is_some());
/// assert!(HttpReplay::default().replay(&post).is_none());
/// assert!(HttpReplay::default().replay(&keyed).is_some());
/// assert!(HttpReplay::any_method().replay(&post).is_some());
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpReplay {
    any_method: bool,
}

impl HttpReplay {
    /// Retries every method, POST without a key included. Only for downstreams that
    /// deduplicate by themselves.
    pub fn any_method() -> Self {
        HttpReplay { any_method: true }
    }

    /// Whether a request with this method and headers may be sent twice.
    pub fn allows(&self, method: &Method, headers: &HeaderMap) -> bool {
        self.any_method
            || matches!(
                *method,
                Method::GET
                    | Method::HEAD
                    | Method::OPTIONS
                    | Method::PUT
                    | Method::DELETE
                    | Method::TRACE
            )
            || headers.contains_key(IDEMPOTENCY_KEY)
    }
}

impl<B: ReplayBody> Replay<Request<B>> for HttpReplay {
    fn replay(&self, req: &Request<B>) -> Option<Request<B>> {
        if !self.allows(req.method(), req.headers()) {
            return None;
        }
        copy(req)
    }
}

/// A copy of an HTTP request whose body can be copied.
fn copy<B: ReplayBody>(req: &Request<B>) -> Option<Request<B>> {
    let mut copy = Request::new(req.body().try_clone_body()?);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    *copy.extensions_mut() = req.extensions().clone();
    Some(copy)
}

/// gRPC calls: every call is a POST, so the HTTP method says nothing. As in gRPC's own retry
/// policy, a call may be sent again unless its method is marked as not safe to repeat; which
/// statuses are worth another attempt is the classifier's call
/// ([`GrpcResponse`](crate::classify::GrpcResponse): UNAVAILABLE by default).
///
/// Methods are named by their path, `/package.Service/Method`; a whole service by
/// `/package.Service/`. Bodies must be in memory: put [`BufferBodyLayer`] outside the retry.
///
/// ```
/// use tower_rampart::replay::{GrpcReplay, Replay};
///
/// let replay = GrpcReplay::default().never("/payments.Payments/Charge");
/// let call = |path: &str| http::Request::post(path).body(bytes::Bytes::new()).unwrap();
/// assert!(replay.replay(&call("/payments.Payments/Get")).is_some());
/// assert!(replay.replay(&call("/payments.Payments/Charge")).is_none());
/// assert!(GrpcReplay::default().never("/payments.Payments/").replay(&call("/payments.Payments/Get")).is_none());
/// ```
#[derive(Debug, Clone, Default)]
pub struct GrpcReplay {
    never: Vec<Box<str>>,
}

impl GrpcReplay {
    /// Never sends calls to `method` (`/package.Service/Method`) twice, or to any method of a
    /// service given as `/package.Service/`: for RPCs that are not idempotent.
    pub fn never(mut self, method: &str) -> Self {
        self.never.push(method.into());
        self
    }

    /// Whether a call to this path may be sent twice.
    pub fn allows(&self, path: &str) -> bool {
        !self.never.iter().any(|m| {
            if m.ends_with('/') {
                path.starts_with(&**m)
            } else {
                path == &**m
            }
        })
    }
}

impl<B: ReplayBody> Replay<Request<B>> for GrpcReplay {
    fn replay(&self, req: &Request<B>) -> Option<Request<B>> {
        if !self.allows(req.uri().path()) {
            return None;
        }
        copy(req)
    }
}

#[cfg(feature = "reqwest")]
impl Replay<reqwest::Request> for HttpReplay {
    /// `reqwest::Request::try_clone`: streaming bodies cannot be cloned and are sent once.
    fn replay(&self, req: &reqwest::Request) -> Option<reqwest::Request> {
        if !self.allows(req.method(), req.headers()) {
            return None;
        }
        req.try_clone()
    }
}

/// A request body that can be copied for another attempt, when it is in memory.
pub trait ReplayBody: Sized {
    /// A copy, or `None` for a body that streams.
    fn try_clone_body(&self) -> Option<Self>;
}

macro_rules! clone_bodies {
    ($($t:ty),*) => {$(
        impl ReplayBody for $t {
            #[inline]
            fn try_clone_body(&self) -> Option<Self> {
                Some(self.clone())
            }
        }
    )*};
}

clone_bodies!(
    (),
    String,
    Vec<u8>,
    Bytes,
    &'static str,
    &'static [u8],
    http_body_util::Full<Bytes>,
    http_body_util::Empty<Bytes>
);

impl<B> ReplayBody for Buffered<B> {
    fn try_clone_body(&self) -> Option<Self> {
        self.try_clone()
    }
}
