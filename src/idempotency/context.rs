//! What the layer tells the handler, and what the handler can tell the layer.

use std::sync::Arc;

use super::{Lease, OwnerToken};

/// In the request's extensions while the handler runs: the scoped key, the owner token, and
/// the lease, so the handler can fence its own writes and learn if it lost the key.
///
/// With axum, take it as an extractor argument: `Extension(ctx): Extension<IdempotencyContext>`.
///
/// ```
/// use axum::Extension;
/// use tower_rampart::idempotency::IdempotencyContext;
///
/// async fn pay(Extension(ctx): Extension<IdempotencyContext>) -> String {
///     // Store the payment under a unique constraint on `ctx.key`, with `ctx.token`.
///     format!("{} by {:?}, lease held: {}", ctx.key, ctx.token, ctx.lease().is_held())
/// }
/// # let _: axum::routing::MethodRouter = axum::routing::post(pay);
/// ```
#[derive(Debug, Clone)]
pub struct IdempotencyContext {
    /// The key as stored (scope, then the client's key).
    pub key: Arc<str>,
    /// This execution's owner token: a fencing token for the handler's own writes (store it
    /// with the side effect under a unique constraint on the key, or make writes conditional
    /// on it), so that a stale owner's write is refused.
    pub token: OwnerToken,
    pub(crate) lease: Lease,
}

impl IdempotencyContext {
    /// Whether this execution still owns the key.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }
}

/// Put in a response's extensions by a handler: do not keep this response (the key is released
/// and a retry runs again). For answers given before anything was done, such as a validation
/// error or a lease found lost.
///
/// ```
/// use axum::response::{IntoResponse, Response};
/// use tower_rampart::idempotency::DoNotStore;
///
/// fn invalid() -> Response {
///     let mut res = (http::StatusCode::BAD_REQUEST, "amount must be positive").into_response();
///     res.extensions_mut().insert(DoNotStore);
///     res
/// }
/// # let _ = invalid();
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct DoNotStore;

/// The header that marks a replayed response.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";
