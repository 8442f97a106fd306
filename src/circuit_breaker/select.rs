//! Which breaker guards a request: the layer's one breaker, or one per key.

use std::sync::Arc;

use super::Breaker;

/// Picks the breaker that guards a request.
///
/// [`Single`] always picks the layer's one breaker; [`Keyed`](super::Keyed) keeps one per key.
/// Implement it to pick breakers your own way.
pub trait SelectBreaker<Req> {
    /// The breaker for `req`.
    fn select(&self, req: &Req) -> Arc<Breaker>;
}

/// One breaker for every request.
#[derive(Debug, Clone)]
pub struct Single(pub(crate) Arc<Breaker>);

impl<Req> SelectBreaker<Req> for Single {
    #[inline]
    fn select(&self, _: &Req) -> Arc<Breaker> {
        self.0.clone()
    }
}
