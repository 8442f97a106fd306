//! The Idempotency-Key layer and its settings (the builder is in `builder.rs`).

use std::{fmt, sync::Arc, time::Duration};

use http::{HeaderName, Method, request, response};
use tower_layer::Layer;

use super::{Builder, Idempotency, MemoryStore, events::Listener, outage::Outage};

type ScopeFn = Arc<dyn Fn(&request::Parts) -> Option<String> + Send + Sync>;

/// How keys are separated by caller: chosen explicitly at build time.
#[derive(Clone)]
pub(crate) enum Scope {
    /// Not chosen yet: `build` refuses.
    Unset,
    /// One key space for every caller (keys must then be unguessable and unique per client).
    Global,
    /// Keys live under the principal this function names; `None` refuses the request (400).
    By(ScopeFn),
}
type KeepFn = Arc<dyn Fn(&response::Parts) -> bool + Send + Sync>;

/// What to do when the store fails or does not answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStoreError {
    /// Answer 503 with `Retry-After` (the default: the safe choice for payments).
    FailClosed,
    /// Run the handler without protection, with a warning event and a metric.
    FailOpen,
}

/// Everything but the store, shared by the builder and the running layer.
#[derive(Clone)]
pub(crate) struct Options {
    pub(crate) methods: Vec<Method>,
    pub(crate) required: bool,
    pub(crate) fingerprint_headers: Vec<HeaderName>,
    pub(crate) max_request_body: usize,
    pub(crate) max_response_body: usize,
    pub(crate) ttl: Duration,
    pub(crate) lease: Duration,
    pub(crate) store_timeout: Duration,
    pub(crate) on_store_error: OnStoreError,
    pub(crate) scope: Scope,
    pub(crate) response_body_timeout: Duration,
    pub(crate) keep: Option<KeepFn>,
    pub(crate) wait_for_in_flight: Option<Duration>,
    pub(crate) in_flight_retry_after: Duration,
    pub(crate) listeners: Vec<Listener>,
    /// Events and logs show keys as they are, not redacted.
    pub(crate) log_raw_keys: bool,
    /// Metric handles (a builder's copy is never bound: the layer binds its own).
    pub(crate) meters: super::instrument::Meters,
}

pub(crate) struct Settings<St> {
    pub(crate) store: St,
    /// What the background store calls share: one backoff, a bound on releases.
    pub(crate) outage: Outage,
    /// The in-flight keys waiting for their first renewal.
    pub(crate) renewals: super::renew::Queue,
    pub(super) options: Options,
}

impl<St> AsRef<Outage> for Settings<St> {
    fn as_ref(&self) -> &Outage {
        &self.outage
    }
}

impl<St> std::ops::Deref for Settings<St> {
    type Target = Options;

    fn deref(&self) -> &Options {
        &self.options
    }
}

/// Makes POST and PATCH handlers idempotent under an `Idempotency-Key` header: the first request
/// runs, later ones with the same key and the same request get the stored response (marked
/// `Idempotent-Replayed: true`), concurrent ones 409, a different request under the key 422.
///
/// Defaults: POST and PATCH, key required (400 without one), request bodies up to 1 MiB (413
/// above), stored responses up to 1 MiB read within 30 s, completed keys kept 24 h, a 10 s
/// lease renewed every third of it from the claim until the response is stored, 1 s per store
/// call, fail closed, a [`MemoryStore`] of 64 MiB.
///
/// How keys are separated between callers has no default: choose [`Builder::scope`] (keys
/// live under a principal, e.g. the tenant set by auth middleware) or [`Builder::global_keys`]
/// (one key space; the IETF draft expects keys unique per client), or `build` fails.
///
/// # Streaming responses
///
/// A response body that is in memory when the handler returns (JSON, text) is stored, then
/// sent. A body that streams (server-sent events, a chunked download) reaches the first caller
/// as the handler produces it: the headers at once, each frame as it comes, while a copy is
/// kept for the store up to [`Builder::max_response_body`]. The key completes when the body
/// ends, and the end (its last frame, trailers, or end of stream) is sent only after the first
/// attempt to store it returned, so a client that read the whole body and retries at once gets
/// the replay. Duplicates meanwhile get 409, as for any request still running; a larger body,
/// one slower than [`Builder::response_body_timeout`], or one that fails, completes the key as
/// not replayable. A first caller that goes away mid-stream does not stop the handler's body:
/// until its key is completed it is read to the end, within the body timeout.
///
/// # Where to place it
///
/// Inside the total timeout, outside everything that may refuse or cut off the handler:
///
/// ```text
/// total timeout  >  Idempotency-Key  >  (the handler, with its own timeouts inside it)
/// ```
///
/// The handler runs detached from its caller: a timeout outside this layer bounds how long the
/// caller waits, while the handler runs on and its result is stored for the retry. A timeout
/// placed inside (between this layer and the handler) cancels the handler part-way: its 504 is
/// never stored as the handler's answer; the key completes as "outcome unknown" (later requests
/// get 409 [`OUTCOME_UNKNOWN`](super::problem_types::OUTCOME_UNKNOWN), never a second run). A
/// circuit breaker inside that refuses the call (its 503 carries
/// [`CircuitOpen`](crate::circuit_breaker::CircuitOpen)) frees the key, since the handler never
/// ran: a retry runs it.
///
/// ```
/// use tower_rampart::idempotency::IdempotencyLayer;
///
/// # fn main() -> Result<(), tower_rampart::ConfigError> {
/// let layer = IdempotencyLayer::builder()
///     // The tenant header is set by the auth middleware in front of this layer.
///     .scope(|req| req.headers.get("x-tenant")?.to_str().ok().map(str::to_owned))
///     .build()?;
/// let app: axum::Router = axum::Router::new()
///     .route("/payments", axum::routing::post(|| async { (axum::http::StatusCode::CREATED, "{}") }))
///     .layer(layer);
/// # let _ = app;
/// # Ok(())
/// # }
/// ```
pub struct IdempotencyLayer<St = MemoryStore> {
    pub(super) settings: Arc<Settings<St>>,
}

impl<St> Clone for IdempotencyLayer<St> {
    fn clone(&self) -> Self {
        IdempotencyLayer {
            settings: self.settings.clone(),
        }
    }
}

impl<St> fmt::Debug for IdempotencyLayer<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyLayer")
            .field("methods", &self.settings.methods)
            .field("required", &self.settings.required)
            .finish_non_exhaustive()
    }
}

impl IdempotencyLayer {
    /// A builder with the defaults above.
    pub fn builder() -> Builder<MemoryStore> {
        Builder {
            store: MemoryStore::new(),
            options: Options {
                methods: vec![Method::POST, Method::PATCH],
                required: true,
                fingerprint_headers: Vec::new(),
                max_request_body: 1 << 20,
                max_response_body: 1 << 20,
                ttl: Duration::from_secs(24 * 3600),
                lease: Duration::from_secs(10),
                store_timeout: Duration::from_secs(1),
                on_store_error: OnStoreError::FailClosed,
                scope: Scope::Unset,
                response_body_timeout: Duration::from_secs(30),
                keep: None,
                wait_for_in_flight: None,
                in_flight_retry_after: Duration::from_secs(1),
                listeners: Vec::new(),
                log_raw_keys: false,
                meters: Default::default(),
            },
        }
    }
}

impl<S, St> Layer<S> for IdempotencyLayer<St> {
    type Service = Idempotency<S, St>;

    fn layer(&self, inner: S) -> Self::Service {
        Idempotency {
            inner,
            settings: self.settings.clone(),
        }
    }
}
