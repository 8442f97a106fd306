//! A client layer that gives every POST and PATCH an `Idempotency-Key`, once per logical
//! request, so that every attempt of a retried call carries the same key.

use std::task::{Context, Poll};

use http::{HeaderValue, Method};
use tower_layer::Layer;
use tower_service::Service;

use crate::idempotency::IDEMPOTENCY_KEY;

/// Adds `Idempotency-Key: "<uuid v4>"` (a Structured Field String, as the IETF draft says) to
/// POST and PATCH requests that have none. Place it outside the retry layer, so the key is made
/// once per logical request and every attempt repeats it.
///
/// ```
/// use tower::{Service, ServiceBuilder, ServiceExt};
/// use tower_rampart::retry::SetIdempotencyKeyLayer;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let mut svc = ServiceBuilder::new()
///     .layer(SetIdempotencyKeyLayer::new())
///     .service_fn(|req: http::Request<()>| async move {
///         Ok::<_, std::convert::Infallible>(req.headers().get("idempotency-key").cloned())
///     });
/// let post = http::Request::post("/payments").body(()).unwrap();
/// let key = svc.ready().await.unwrap().call(post).await.unwrap().unwrap();
/// assert_eq!(key.len(), 38, "a quoted UUID");
/// let get = http::Request::get("/payments").body(()).unwrap();
/// assert!(svc.ready().await.unwrap().call(get).await.unwrap().is_none());
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct SetIdempotencyKeyLayer {
    bare: bool,
}

impl SetIdempotencyKeyLayer {
    /// Quoted keys (`"0f6c…"`), as the draft specifies.
    pub fn new() -> Self {
        SetIdempotencyKeyLayer { bare: false }
    }

    /// Bare keys (`0f6c…`), for servers that expect a plain token.
    pub fn bare() -> Self {
        SetIdempotencyKeyLayer { bare: true }
    }
}

impl<S> Layer<S> for SetIdempotencyKeyLayer {
    type Service = SetIdempotencyKey<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SetIdempotencyKey {
            inner,
            bare: self.bare,
        }
    }
}

/// The service of [`SetIdempotencyKeyLayer`].
#[derive(Debug, Clone)]
pub struct SetIdempotencyKey<S> {
    inner: S,
    bare: bool,
}

impl<S> SetIdempotencyKey<S> {
    /// Gives `inner`'s POST and PATCH requests quoted keys, like [`SetIdempotencyKeyLayer::new`].
    pub fn new(inner: S) -> Self {
        SetIdempotencyKey { inner, bare: false }
    }

    /// Gives `inner`'s POST and PATCH requests bare keys, like [`SetIdempotencyKeyLayer::bare`].
    pub fn bare(inner: S) -> Self {
        SetIdempotencyKey { inner, bare: true }
    }

    inner_service_accessors!();

    fn key(&self) -> HeaderValue {
        let id = uuid::Uuid::new_v4();
        let mut buf = [0u8; 38];
        let text = if self.bare {
            &*id.hyphenated().encode_lower(&mut buf[..36])
        } else {
            buf[0] = b'"';
            buf[37] = b'"';
            id.hyphenated().encode_lower(&mut buf[1..37]);
            std::str::from_utf8(&buf).expect("ascii")
        };
        HeaderValue::from_str(text).expect("a UUID is a valid header value")
    }
}

fn needs_key(method: &Method, headers: &http::HeaderMap) -> bool {
    (*method == Method::POST || *method == Method::PATCH) && !headers.contains_key(IDEMPOTENCY_KEY)
}

impl<S, B> Service<http::Request<B>> for SetIdempotencyKey<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> S::Future {
        if needs_key(req.method(), req.headers()) {
            let key = self.key();
            req.headers_mut().insert(IDEMPOTENCY_KEY, key);
        }
        self.inner.call(req)
    }
}

#[cfg(feature = "reqwest")]
impl<S> Service<reqwest::Request> for SetIdempotencyKey<S>
where
    S: Service<reqwest::Request>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: reqwest::Request) -> S::Future {
        if needs_key(req.method(), req.headers()) {
            let key = self.key();
            req.headers_mut().insert(IDEMPOTENCY_KEY, key);
        }
        self.inner.call(req)
    }
}
