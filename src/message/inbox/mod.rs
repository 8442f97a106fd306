//! The inbox over idempotency stores: each message's effect applied once per key, while the
//! key is remembered.
//!
//! [`InboxLayer`] wraps a consumer's handler. For each message it claims the message's key
//! (its id by default, or [`business_key`], or a function of your own) in a
//! [`Store`](crate::idempotency::Store) ([`MemoryStore`](crate::idempotency::MemoryStore),
//! `RedisStore` for Redis and Redis Cluster, any store of your own), then:
//!
//! | the store says | the inbox | the consumer |
//! |---|---|---|
//! | new | runs the handler, renewing the lease; on `Ok` stores "applied" for the TTL; on `Err` releases the key | [`Inboxed::Ran`]: ack; or the error's settlement |
//! | completed | does not run it | [`Inboxed::Duplicate`]: ack |
//! | in flight on another consumer | does not run it | [`RedeliverLater`](super::consumer::RedeliverLater) after [`in_flight_delay`](Builder::in_flight_delay) (at most the lease left) |
//! | same key, another kind or payload | does not run it | [`KeyReused`](super::consumer::KeyReused): dead letter `key-reused` |
//! | store failed or silent | does not run it (fail closed) | [`RedeliverLater`](super::consumer::RedeliverLater) after [`store_error_delay`](Builder::store_error_delay) |
//!
//! A message is "the same" when its kind and payload are ([`fingerprint`]: BLAKE3, as for
//! HTTP requests). Every `Ok` of the handler counts as applied (the key is completed), whatever
//! a consumer's classifier makes of the answer afterwards: put the inbox outermost, a retry
//! layer inside it (retries then run under one claim).
//!
//! # Guarantees
//!
//! Over a store outside the effect's transaction (memory, Redis), the inbox promises **at most
//! once per key while its record lives, subject to the lease**: the record lives for the TTL
//! (keep it longer than the broker's longest redelivery horizon); the lease protects only
//! while it is renewed. A handler stalled longer than the lease, or cut from the store for a
//! lease, may lose its key, and a redelivery of the same message may then run beside it:
//! [`InboxContext`] tells the handler ([`lost`](InboxContext::lost)), and its owner token
//! fences its own writes. A handler that fails releases its key, so its redelivery runs again
//! (a handler's partial effects must be its own to undo). A completion that cannot be stored
//! after the handler's success (the store gone for a whole lease) leaves the key to expire:
//! the message is acked, but a duplicate published later would run. Exactly-once effects with
//! no lease need the effect and the key in one transaction: the PostgreSQL inbox.

mod context;
mod future;
mod layer;
mod run;
mod service;

pub use context::InboxContext;
pub use future::InboxFuture;
pub use layer::{Builder, InboxLayer, MAX_PREFIX_LEN};
pub use service::Inbox;

use crate::{idempotency::Fingerprint, message::Message};

/// What the inbox did with a message.
///
/// ```
/// use tower_rampart::message::inbox::Inboxed;
///
/// assert_eq!(Inboxed::Ran(3).ran(), Some(3));
/// assert!(Inboxed::<u8>::Duplicate.is_duplicate());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inboxed<R> {
    /// The handler ran and answered this.
    Ran(R),
    /// The key was already handled: the handler did not run.
    Duplicate,
}

impl<R> Inboxed<R> {
    /// The handler's answer, if it ran.
    pub fn ran(self) -> Option<R> {
        match self {
            Inboxed::Ran(r) => Some(r),
            Inboxed::Duplicate => None,
        }
    }

    /// Whether the handler was skipped as a duplicate.
    pub fn is_duplicate(&self) -> bool {
        matches!(self, Inboxed::Duplicate)
    }
}

/// The default key: the message's id.
pub(crate) fn default_key(m: &Message) -> String {
    m.id().to_owned()
}

/// The design's business key: `correlation_id:kind` (one effect per kind of event per
/// business flow), or the message id when it has no correlation id.
///
/// ```
/// use tower_rampart::message::{inbox::business_key, Message};
///
/// let m = Message::new("m1", "order.paid", "{}").with_correlation_id("order-42");
/// assert_eq!(business_key(&m), "order-42:order.paid");
/// assert_eq!(business_key(&Message::new("m2", "order.paid", "{}")), "m2");
/// ```
pub fn business_key(m: &Message) -> String {
    match m.correlation_id() {
        Some(c) => format!("{c}:{}", m.kind()),
        None => m.id().to_owned(),
    }
}

/// What makes two messages with one key "the same message": their kind and payload, hashed
/// with BLAKE3 (length-prefixed). A key reused by another message is refused.
///
/// ```
/// use tower_rampart::message::{inbox::fingerprint, Message};
///
/// let a = fingerprint(&Message::new("m1", "order.paid", "{}"));
/// assert_eq!(a, fingerprint(&Message::new("m1", "order.paid", "{}").with_header("x", "y")));
/// assert_ne!(a, fingerprint(&Message::new("m1", "order.paid", "{ }")));
/// ```
pub fn fingerprint(m: &Message) -> Fingerprint {
    let mut h = blake3::Hasher::new();
    for part in [m.kind().as_bytes(), m.payload()] {
        h.update(&(part.len() as u64).to_be_bytes());
        h.update(part);
    }
    Fingerprint::from_bytes(*h.finalize().as_bytes())
}
