//! The rest of a `ClientWithMiddleware`'s chain as a tower service, called once per attempt.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use ::reqwest_middleware::Next;
use http::Extensions;
use tower_service::Service;

use super::error::InnerMiddlewareError;
use crate::BoxError;

/// The middlewares after a [`RampartMiddleware`](super::RampartMiddleware) in its
/// `ClientWithMiddleware`, then the `reqwest::Client`, as a tower service of
/// `reqwest::Request`s: the service the middleware's tower layer wraps. Each call is one
/// attempt, and runs with its own copy of the extensions the middleware was given.
///
/// Its errors are boxed: a `reqwest::Error` as it is (so classifiers and
/// `downcast_ref::<reqwest::Error>()` see it), an error of a middleware further in wrapped
/// so that the middleware gives it back unchanged.
///
/// Only a [`RampartMiddleware`](super::RampartMiddleware) makes one. The layer it runs wraps
/// it for every lifetime `'a`; layers generic over their service, as tower's and this crate's
/// are, do:
///
/// ```
/// use std::time::Duration;
/// use tower::ServiceBuilder;
/// use tower_rampart::{
///     circuit_breaker::{CircuitBreakerLayer, Config},
///     classify::HttpStatus,
///     reqwest_middleware::RampartMiddleware,
///     timeout::TimeoutLayer,
/// };
///
/// # fn main() -> Result<(), tower_rampart::ConfigError> {
/// // One breaker per host:port around a 5 s timeout, without retries.
/// let stack = ServiceBuilder::new()
///     .layer(CircuitBreakerLayer::keyed_by_authority(Config::builder().build()?)
///         .classify(HttpStatus::default()))
///     .layer(TimeoutLayer::new(Duration::from_secs(5))?)
///     .into_inner();
/// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
///     .with(RampartMiddleware::new(stack))
///     .build();
/// # let _ = client;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct NextService<'a> {
    next: Next<'a>,
    // `None` when the caller gave none: no allocation, no reference count, no copy per attempt.
    extensions: Option<Arc<Extensions>>,
}

impl fmt::Debug for NextService<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NextService")
            .field(
                "extensions",
                &self.extensions.as_ref().map_or(0, |e| e.len()),
            )
            .finish_non_exhaustive()
    }
}

impl<'a> NextService<'a> {
    /// The chain after `next`; each attempt starts from a copy of `extensions`.
    pub(crate) fn new(next: Next<'a>, extensions: &Extensions) -> Self {
        NextService {
            next,
            extensions: (!extensions.is_empty()).then(|| Arc::new(extensions.clone())),
        }
    }
}

/// The extensions the last attempt's middlewares left, carried out on its response so the
/// [`RampartMiddleware`](super::RampartMiddleware) hands them back to its caller.
#[derive(Clone)]
pub(crate) struct LastAttempt(pub(crate) Extensions);

impl<'a> Service<reqwest::Request> for NextService<'a> {
    type Response = reqwest::Response;
    type Error = BoxError;
    type Future = AttemptFuture<'a>;

    #[inline]
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: reqwest::Request) -> AttemptFuture<'a> {
        let next = self.next.clone();
        let extensions = self.extensions.as_deref().cloned();
        // The attempt owns its extensions while `Next::run` borrows them: a future that holds
        // both is self-referential, so it is boxed (as `Next::run`'s own future is).
        AttemptFuture(Box::pin(async move {
            let Some(mut extensions) = extensions else {
                let mut none = Extensions::new();
                let result = next.run(req, &mut none).await;
                return finish(result, none);
            };
            let result = next.run(req, &mut extensions).await;
            finish(result, extensions)
        }))
    }
}

/// The attempt's outcome for the tower stack; what its middlewares wrote in the extensions
/// rides out on a response.
fn finish(
    result: ::reqwest_middleware::Result<reqwest::Response>,
    extensions: Extensions,
) -> Result<reqwest::Response, BoxError> {
    match result {
        Ok(mut res) => {
            if !extensions.is_empty() {
                res.extensions_mut().insert(LastAttempt(extensions));
            }
            Ok(res)
        }
        Err(::reqwest_middleware::Error::Reqwest(e)) => Err(Box::new(e)),
        Err(::reqwest_middleware::Error::Middleware(e)) => Err(Box::new(InnerMiddlewareError(e))),
    }
}

/// The future of one [`NextService`] call: the rest of the chain running one attempt.
///
/// ```
/// use std::future::Future;
/// use tower_rampart::reqwest_middleware::AttemptFuture;
///
/// fn is_send_future<F: Future + Send>() {}
/// is_send_future::<AttemptFuture<'static>>();
/// ```
pub struct AttemptFuture<'a>(
    Pin<Box<dyn Future<Output = Result<reqwest::Response, BoxError>> + Send + 'a>>,
);

impl fmt::Debug for AttemptFuture<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AttemptFuture")
    }
}

impl Future for AttemptFuture<'_> {
    type Output = Result<reqwest::Response, BoxError>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx)
    }
}
