//! Keys a server's requests by the route axum matched (`MatchedPath`): one breaker per route.

use std::{
    borrow::Borrow,
    fmt,
    hash::{Hash, Hasher},
};

use axum::extract::MatchedPath;

use super::KeyFn;

/// Keys an `http::Request` by the route axum's `Router` matched for it (its
/// [`MatchedPath`], the route's template such as `/items/{id}`), or by
/// [`MatchedRoute::UNMATCHED`] when there is none: one breaker per route, so that a failing
/// route does not refuse the others. The server pipeline's
/// [`breaker_per_route`](crate::pipeline::ServerBuilder::breaker_per_route) uses it.
///
/// axum inserts the `MatchedPath` before it calls the route's service, so a layer added with
/// `Router::layer` or `Router::route_layer` sees it. A layer around the whole router from
/// outside (`ServiceBuilder` around `Router::into_service`, or `axum::serve` of a layered
/// router service) runs before any route is matched: every request gets the unmatched key.
/// Requests no route matches (the router's fallback, a 404) share the unmatched key too.
///
/// ```
/// use axum::{Router, routing::get};
/// use tower_rampart::circuit_breaker::{ByRoute, CircuitBreakerLayer, Config};
///
/// # fn main() -> Result<(), tower_rampart::ConfigError> {
/// let config = Config::builder().name("api").build()?;
/// // `ByRoute` keys any `http::Request<B>`: name one request type for the layer.
/// let breakers = CircuitBreakerLayer::keyed::<http::Request<()>, _, _>(config, ByRoute)
///     .classify(tower_rampart::classify::HttpStatus::default())
///     .respond_http();
/// let family = breakers.breakers();
/// let app: Router = Router::new()
///     .route("/items/{id}", get(|| async { "item" }))
///     .layer(breakers);
/// # let _ = app;
/// // After a call to /items/7, `family.get("/items/{id}")` is that route's breaker.
/// assert!(family.is_empty());
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct ByRoute;

impl<B> KeyFn<http::Request<B>> for ByRoute {
    type Key = MatchedRoute;

    #[inline]
    fn key(&self, req: &http::Request<B>) -> MatchedRoute {
        // A clone of the path's `Arc<str>`: no allocation per call.
        MatchedRoute(req.extensions().get::<MatchedPath>().cloned())
    }
}

/// The key of [`ByRoute`]: the route template axum matched, or none. It compares, hashes and
/// prints as its template (`/items/{id}`), or as [`UNMATCHED`](Self::UNMATCHED); a family of
/// per-route breakers is looked up by that text (`family.get("/items/{id}")`).
///
/// ```
/// use tower_rampart::circuit_breaker::{ByRoute, KeyFn, MatchedRoute};
///
/// // A request that went through no router: no route matched.
/// let req = http::Request::get("/items/7").body(()).unwrap();
/// let key: MatchedRoute = ByRoute.key(&req);
/// assert_eq!(key.to_string(), MatchedRoute::UNMATCHED);
/// assert!(key.path().is_none());
/// ```
#[derive(Clone)]
pub struct MatchedRoute(Option<MatchedPath>);

impl MatchedRoute {
    /// The key of requests no route matched. Route templates start with `/`, so it names none.
    pub const UNMATCHED: &'static str = "(unmatched)";

    /// The matched route's template, if a route matched.
    pub fn path(&self) -> Option<&str> {
        self.0.as_ref().map(MatchedPath::as_str)
    }

    /// The template, or [`UNMATCHED`](Self::UNMATCHED).
    pub fn as_str(&self) -> &str {
        self.path().unwrap_or(Self::UNMATCHED)
    }
}

impl fmt::Debug for MatchedRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for MatchedRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// Equality and hashing by the text, as `Borrow<str>` requires.
impl PartialEq for MatchedRoute {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for MatchedRoute {}

impl Hash for MatchedRoute {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl Borrow<str> for MatchedRoute {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}
