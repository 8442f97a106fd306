//! The event listeners of the layers that report events through a chain of closures.

use std::{fmt, sync::Arc};

/// A listener function for events of type `E`.
type ListenerFn<E> = Arc<dyn Fn(&E) + Send + Sync>;

/// A layer's listeners for events of type `E`, if any: calls copy a pointer only when one is
/// set. Each layer reports its own events through an inherent `emit` of its own.
pub(crate) struct Listener<E>(pub(crate) Option<ListenerFn<E>>);

impl<E: 'static> Listener<E> {
    /// The listeners so far, then `g`.
    pub(crate) fn and(self, g: impl Fn(&E) + Send + Sync + 'static) -> Self {
        Listener(Some(match self.0 {
            None => Arc::new(g),
            Some(f) => Arc::new(move |e: &E| {
                f(e);
                g(e);
            }),
        }))
    }
}

impl<E> Clone for Listener<E> {
    #[inline]
    fn clone(&self) -> Self {
        Listener(self.0.clone())
    }
}

impl<E> Default for Listener<E> {
    fn default() -> Self {
        Listener(None)
    }
}

impl<E> fmt::Debug for Listener<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "Some(..)" } else { "None" })
    }
}
