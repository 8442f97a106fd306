//! Idempotency-Key for HTTP handlers (IETF draft-ietf-httpapi-idempotency-key-header): a retried
//! POST never runs twice.
//!
//! - [`IdempotencyLayer`]: on an axum `Router` or any `http` service; replays completed
//!   requests, answers 409 / 422 / 400 / 413 as problem+json, runs handlers detached from the
//!   client connection (in the caller's `tracing` span) and renews their lease while they run,
//!   streams responses (SSE) to the first caller as they are produced while keeping a copy,
//!   and never stores the crate's own timeout or breaker answers as the handler's.
//! - [`IdempotencyKey`]: the header, as a Structured Field String or a bare token.
//! - [`Fingerprint`]: what makes a request the same request (method, path, query, body, chosen
//!   headers), hashed with BLAKE3.
//! - [`Store`]: claim / complete / release / renew with owner tokens and short renewed leases,
//!   and [`MemoryStore`], the embedded default, bounded in bytes.
//! - [`IdempotencyContext`] and [`Lease`]: what the handler knows of its key (the owner token,
//!   a fencing token for its own writes) and whether it still holds it.
//! - [`testing::FaultyStore`]: fault injection for any store, to test handlers under faults.
//! - [`Completion`]: what a completed key replays, with a compact versioned binary form.
//!
//! - `RedisStore` (feature `redis`): Redis and Redis Cluster, one Lua script per operation.

mod builder;
mod claim;
mod context;
mod detach;
mod events;
mod fingerprint;
mod instrument;
mod key;
mod layer;
mod lease;
mod outage;
mod owner;
mod problem;
mod record;
mod redact;
mod relay;
mod renew;
mod replayed;
mod request;
mod service;
mod store;
pub mod testing;

/// The redis crate's TLS settings for [`RedisStore::connect_tls`] and
/// [`RedisStore::connect_cluster_tls`] (a private CA, a client certificate), re-exported so that
/// naming them needs no `redis` dependency of your own.
#[cfg(feature = "redis-tls")]
pub use ::redis::TlsCertificates;
pub use builder::Builder;
pub use context::{DoNotStore, IDEMPOTENT_REPLAYED, IdempotencyContext};
pub use events::{Event, EventKind};
pub use fingerprint::Fingerprint;
pub use instrument::metric_names;
pub use key::{IDEMPOTENCY_KEY, IdempotencyKey, KeyError, MAX_KEY_LEN};
pub use layer::{IdempotencyLayer, OnStoreError};
pub use lease::Lease;
pub use problem::problem_types;
pub use record::{Completion, DecodeError, StoredResponse};
pub use service::Idempotency;
#[cfg(feature = "postgres")]
pub use store::PostgresStore;
#[cfg(feature = "redis")]
pub use store::RedisStore;
pub use store::{
    Claim, DEFAULT_MAX_BYTES, DEFAULT_RETENTION_FLOOR, MemoryStore, MemoryStoreBuilder, OwnerToken,
    Store, StoreError, StoreErrorKind, TYPICAL_RECORD_BYTES,
};
