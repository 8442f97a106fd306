//! The `reqwest_middleware::Middleware` that runs a tower layer around the rest of the chain.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use ::reqwest_middleware::{Middleware, Next};
use http::Extensions;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::{NextService, error::into_middleware_error, next::LastAttempt};
use crate::{BoxError, ConfigError, pipeline::StandardClientLayer};

/// A [`reqwest_middleware::Middleware`] that runs a tower layer — by default the
/// [standard client pipeline](StandardClientLayer): total timeout > retry > circuit breaker
/// per `host:port` > attempt timeout — inside a `ClientWithMiddleware`, so calls keep
/// `RequestBuilder::send()`.
///
/// The middlewares after it in the chain run once per attempt ([`NextService`]), each time with
/// a copy of the extensions it was given; what the last attempt's middlewares wrote there comes
/// back out with a response (an error leaves the caller's extensions as they were). Requests
/// are copied for retries with `reqwest::Request::try_clone`: a streaming body is sent once.
///
/// Errors keep `reqwest_middleware`'s shape:
///
/// | what failed | error |
/// |---|---|
/// | the `reqwest::Client` (connect, timeout, body) | `Error::Reqwest`, unchanged |
/// | a middleware after this one | `Error::Middleware` with that middleware's `anyhow::Error`, unchanged |
/// | an open breaker | `Error::Middleware`: `downcast_ref::<`[`CircuitOpen`](crate::circuit_breaker::CircuitOpen)`>()` |
/// | a timeout | `Error::Middleware`: `downcast_ref::<`[`Elapsed`](crate::timeout::Elapsed)`>()` |
/// | anything else from the layer | `Error::Middleware`: `downcast_ref::<`[`BoxError`]`>()`, then its type |
///
/// A retry that gives up returns what the last attempt returned: a failure response stays a
/// response (`Ok`), as with `reqwest` alone.
///
/// ```no_run
/// use std::time::Duration;
/// use reqwest_middleware::{ClientBuilder, Error};
/// use tower_rampart::{
///     circuit_breaker::CircuitOpen,
///     pipeline::StandardClientLayer,
///     reqwest_middleware::RampartMiddleware,
///     timeout::Elapsed,
/// };
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pipeline = StandardClientLayer::builder()
///     .attempt_timeout(Duration::from_secs(2))
///     .build()?;
/// let client = ClientBuilder::new(reqwest::Client::new())
///     .with(RampartMiddleware::new(pipeline))
///     .build();
/// match client.get("http://127.0.0.1:8080/items").send().await {
///     Ok(res) => println!("{}", res.status()),
///     Err(Error::Middleware(e)) if e.is::<CircuitOpen>() => println!("refused: {e}"),
///     Err(Error::Middleware(e)) if e.is::<Elapsed>() => println!("timed out: {e}"),
///     Err(e) => println!("failed: {e}"),
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RampartMiddleware<L = StandardClientLayer> {
    layer: L,
}

impl RampartMiddleware {
    /// The standard client pipeline with its defaults
    /// ([`StandardClientLayer::builder`]`().build()`).
    ///
    /// ```
    /// use tower_rampart::reqwest_middleware::RampartMiddleware;
    ///
    /// # fn main() -> Result<(), tower_rampart::ConfigError> {
    /// let middleware = RampartMiddleware::standard()?;
    /// let breakers = middleware.layer().breakers(); // one per host:port, made on first use
    /// assert!(breakers.is_empty());
    /// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
    ///     .with(middleware)
    ///     .build();
    /// # let _ = client;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// None with the defaults; the signature leaves room for checked settings.
    pub fn standard() -> Result<Self, ConfigError> {
        Ok(RampartMiddleware::new(
            StandardClientLayer::builder().build()?,
        ))
    }
}

impl<L> RampartMiddleware<L> {
    /// Runs `layer` around the rest of the chain: a [`StandardClientLayer`], any tower layer
    /// of this crate, or a stack of them (`tower::ServiceBuilder::into_inner`).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower::ServiceBuilder;
    /// use tower_rampart::{
    ///     pipeline::StandardClientLayer,
    ///     reqwest_middleware::RampartMiddleware,
    ///     retry::SetIdempotencyKeyLayer,
    /// };
    ///
    /// # fn main() -> Result<(), tower_rampart::ConfigError> {
    /// // Every POST gets an Idempotency-Key, so the pipeline may retry it.
    /// let stack = ServiceBuilder::new()
    ///     .layer(SetIdempotencyKeyLayer::new())
    ///     .layer(StandardClientLayer::builder().attempt_timeout(Duration::from_secs(5)).build()?)
    ///     .into_inner();
    /// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
    ///     .with(RampartMiddleware::new(stack))
    ///     .build();
    /// # let _ = client;
    /// # Ok(())
    /// # }
    /// ```
    pub fn new(layer: L) -> Self {
        RampartMiddleware { layer }
    }

    /// The layer, to read or steer it (a [`StandardClientLayer`]'s
    /// [`breakers`](StandardClientLayer::breakers)).
    pub fn layer(&self) -> &L {
        &self.layer
    }
}

impl From<StandardClientLayer> for RampartMiddleware {
    fn from(layer: StandardClientLayer) -> Self {
        RampartMiddleware::new(layer)
    }
}

/// The service `L` makes around the chain after the middleware.
type Stack<'a, L> = <L as Layer<NextService<'a>>>::Service;

// Written out as `async_trait` expands the trait's `async fn`, so this crate needs no proc
// macro of its own; the box is the trait's.
impl<L> Middleware for RampartMiddleware<L>
where
    L: for<'a> Layer<NextService<'a>> + Send + Sync + 'static,
    for<'a> Stack<'a, L>: Service<reqwest::Request, Response = reqwest::Response> + Send,
    for<'a> <Stack<'a, L> as Service<reqwest::Request>>::Error: Into<BoxError>,
    for<'a> <Stack<'a, L> as Service<reqwest::Request>>::Future: Send,
{
    fn handle<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        req: reqwest::Request,
        extensions: &'life1 mut Extensions,
        next: Next<'life2>,
    ) -> Pin<
        Box<
            dyn Future<Output = ::reqwest_middleware::Result<reqwest::Response>>
                + Send
                + 'async_trait,
        >,
    >
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            let service = self.layer.layer(NextService::new(next, extensions));
            match Oneshot::new(service, req).await {
                Ok(mut res) => {
                    if let Some(LastAttempt(last)) = res.extensions_mut().remove::<LastAttempt>() {
                        *extensions = last;
                    }
                    Ok(res)
                }
                Err(e) => Err(into_middleware_error(e.into())),
            }
        })
    }
}

pin_project! {
    /// One call of a service: made ready, then called.
    struct Oneshot<S: Service<reqwest::Request>> {
        service: S,
        req: Option<reqwest::Request>,
        #[pin]
        call: Option<S::Future>,
    }
}

impl<S: Service<reqwest::Request>> Oneshot<S> {
    fn new(service: S, req: reqwest::Request) -> Self {
        Oneshot {
            service,
            req: Some(req),
            call: None,
        }
    }
}

impl<S: Service<reqwest::Request>> Future for Oneshot<S> {
    type Output = Result<S::Response, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if this.call.is_none() {
            // The request is taken only once the service is ready: it may say Pending first.
            if let Err(e) = ready!(this.service.poll_ready(cx)) {
                return Poll::Ready(Err(e));
            }
            let req = this.req.take().expect("Oneshot polled after completion");
            this.call.set(Some(this.service.call(req)));
        }
        match this.call.as_pin_mut() {
            Some(call) => call.poll(cx),
            None => unreachable!("the call was just made"),
        }
    }
}
