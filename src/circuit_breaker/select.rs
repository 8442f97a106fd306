//! Which breaker guards a request: the layer's one breaker, or one per key.

use std::{ops::Deref, sync::Arc};

use super::Breaker;

/// Picks the breaker that guards a request.
///
/// [`Single`] always picks the layer's one breaker, [`Static`] the same from static memory,
/// [`Keyed`](super::Keyed) one per key. Implement it to pick breakers your own way.
pub trait SelectBreaker<Req> {
    /// How the call's future holds the breaker.
    type Breaker: Deref<Target = Breaker>;

    /// The breaker for `req`.
    fn select(&self, req: &Req) -> Self::Breaker;
}

/// One breaker for every request, reference-counted.
#[derive(Debug, Clone)]
pub struct Single(pub(crate) Arc<Breaker>);

impl<Req> SelectBreaker<Req> for Single {
    type Breaker = Arc<Breaker>;

    #[inline]
    fn select(&self, _: &Req) -> Arc<Breaker> {
        self.0.clone()
    }
}

/// One breaker for every request, in static memory: calls take no reference count. See
/// [`CircuitBreakerLayer::leak`](super::CircuitBreakerLayer::leak).
#[derive(Debug, Clone, Copy)]
pub struct Static(pub(crate) &'static Breaker);

impl<Req> SelectBreaker<Req> for Static {
    type Breaker = &'static Breaker;

    #[inline]
    fn select(&self, _: &Req) -> &'static Breaker {
        self.0
    }
}
