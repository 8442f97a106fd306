//! Idempotency-Key support for HTTP handlers (IETF draft-ietf-httpapi-idempotency-key-header):
//! the building blocks, first. A retried POST must never run twice.
//!
//! - [`IdempotencyKey`]: the header, as a Structured Field String or a bare token.
//! - [`Fingerprint`]: what makes a request the same request (method, path, query, body, chosen
//!   headers), hashed with SHA-256.
//! - [`Store`]: claim / complete / release / renew with owner tokens and short renewed leases,
//!   and [`MemoryStore`], the embedded default.
//! - [`Completion`]: what a completed key replays, with a compact versioned binary form.
//!
//! The tower layer that puts these together (replay, 409 / 422 answers, detached handlers,
//! lease heartbeats) and the Redis store come next.

mod fingerprint;
mod key;
mod record;
mod store;

pub use fingerprint::Fingerprint;
pub use key::{IdempotencyKey, KeyError, MAX_KEY_LEN};
pub use record::{Completion, DecodeError, StoredResponse};
pub use store::{Claim, MemoryStore, OwnerToken, Store, StoreError};
