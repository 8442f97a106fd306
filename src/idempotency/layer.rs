//! The Idempotency-Key layer and its builder.

use std::{fmt, sync::Arc, time::Duration};

use http::{HeaderName, Method, request, response};
use tower_layer::Layer;

use super::{Event, Idempotency, MemoryStore, Store, events::Listener, outage::Outage};
use crate::ConfigError;

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
}

pub(crate) struct Settings<St> {
    pub(crate) store: St,
    /// What the background store calls share: one backoff, a bound on releases.
    pub(crate) outage: Outage,
    options: Options,
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
    settings: Arc<Settings<St>>,
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
            },
        }
    }
}

/// Builds an [`IdempotencyLayer`].
#[must_use]
pub struct Builder<St> {
    store: St,
    options: Options,
}

impl<St> fmt::Debug for Builder<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("methods", &self.options.methods)
            .field("required", &self.options.required)
            .finish_non_exhaustive()
    }
}

impl<St: Store> Builder<St> {
    /// Where keys live.
    pub fn store<St2: Store>(self, store: St2) -> Builder<St2> {
        Builder {
            store,
            options: self.options,
        }
    }

    /// The methods the layer applies to; others pass through untouched.
    pub fn methods(mut self, methods: &[Method]) -> Self {
        self.options.methods = methods.to_vec();
        self
    }

    /// Whether a request without a key is refused (400) or passes through unprotected.
    pub fn required(mut self, required: bool) -> Self {
        self.options.required = required;
        self
    }

    /// Headers whose values are part of the request's fingerprint.
    pub fn fingerprint_headers(mut self, headers: &[HeaderName]) -> Self {
        self.options.fingerprint_headers = headers.to_vec();
        self
    }

    /// The largest request body (413 above).
    pub fn max_request_body(mut self, bytes: usize) -> Self {
        self.options.max_request_body = bytes;
        self
    }

    /// The largest response kept for replay; a larger one reaches the first caller and later
    /// ones get a 409 that says so.
    pub fn max_response_body(mut self, bytes: usize) -> Self {
        self.options.max_response_body = bytes;
        self
    }

    /// How long the layer reads a response body to keep it (30 s by default). A body still
    /// streaming after that reaches the first caller in full, and the key is completed as not
    /// replayable: never released, so the request never runs again.
    pub fn response_body_timeout(mut self, timeout: Duration) -> Self {
        self.options.response_body_timeout = timeout;
        self
    }

    /// How long completed keys are kept.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.options.ttl = ttl;
        self
    }

    /// The in-flight lease, renewed every third of it from the claim until the response is
    /// stored (10 s by default).
    ///
    /// Renewals run in a task of their own, so a handler that blocks its worker thread (a
    /// synchronous driver, a CPU-heavy step) keeps its key on a multi-thread runtime. On a
    /// current-thread runtime, or when every worker is blocked, nothing else runs meanwhile,
    /// renewals included: a handler that blocks longer than the lease there may run twice.
    /// Run blocking work with `tokio::task::spawn_blocking`.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.options.lease = lease;
        self
    }

    /// The time allowed for each store call.
    pub fn store_timeout(mut self, timeout: Duration) -> Self {
        self.options.store_timeout = timeout;
        self
    }

    /// What to do when the store is down.
    pub fn on_store_error(mut self, choice: OnStoreError) -> Self {
        self.options.on_store_error = choice;
        self
    }

    /// Namespaces keys by principal (e.g. a tenant or user set by auth middleware in the
    /// extensions): two principals never share or see each other's keys. A request for which
    /// `scope` returns `None` is refused with 400, never run unscoped.
    pub fn scope(
        mut self,
        scope: impl Fn(&request::Parts) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.options.scope = Scope::By(Arc::new(scope));
        self
    }

    /// One key space for every caller: the same key from two clients names the same request.
    /// Only for services with one client, or whose clients' keys are unguessable (UUIDs);
    /// otherwise a client can read another's response or squat its key for the TTL.
    pub fn global_keys(mut self) -> Self {
        self.options.scope = Scope::Global;
        self
    }

    /// Which responses are kept for replay (all of them by default, errors included, as the
    /// draft and Stripe do). A response not kept releases its key.
    pub fn keep_response_if(
        mut self,
        keep: impl Fn(&response::Parts) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.options.keep = Some(Arc::new(keep));
        self
    }

    /// Let a duplicate of a running request wait up to `wait` for it to finish and get its
    /// replay (or run, if the first one released its key), instead of an immediate 409. Off by
    /// default.
    pub fn wait_for_in_flight(mut self, wait: Duration) -> Self {
        self.options.wait_for_in_flight = Some(wait);
        self
    }

    /// The `Retry-After` sent with a 409 for a request whose first copy is still running (1 s
    /// by default, and never longer than the time left on the first one's lease): a hint that
    /// fits most handlers, rather than the whole lease.
    pub fn in_flight_retry_after(mut self, hint: Duration) -> Self {
        self.options.in_flight_retry_after = hint;
        self
    }

    /// Calls `listener` with every [`Event`] (each request's outcome, lease losses, completions
    /// that did not land). Listeners run inline: keep them short.
    ///
    /// ```
    /// use tower_rampart::idempotency::{EventKind, IdempotencyLayer};
    ///
    /// # fn main() -> Result<(), tower_rampart::ConfigError> {
    /// let layer = IdempotencyLayer::builder()
    ///     .global_keys()
    ///     .on_event(|e| {
    ///         if e.kind == EventKind::LeaseLost {
    ///             eprintln!("lease lost for {:?}", e.key);
    ///         }
    ///     })
    ///     .build()?;
    /// # let _ = layer;
    /// # Ok(())
    /// # }
    /// ```
    pub fn on_event(mut self, listener: impl Fn(&Event<'_>) + Send + Sync + 'static) -> Self {
        self.options.listeners.push(Arc::new(listener));
        self
    }

    /// Checks the values. Every duration is at most one year ([`MAX_DURATION`](crate::MAX_DURATION)):
    /// `Duration::MAX` meant as "forever" is refused here, never met as an overflow while a
    /// request runs.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first value out of range (by its name in configuration
    /// files, e.g. `ttl`) or settings that contradict each other.
    pub fn build(self) -> Result<IdempotencyLayer<St>, ConfigError> {
        let err = |m: &str| Err(ConfigError::new("idempotency", m));
        let field = |f: &'static str, m: &str| Err(ConfigError::field("idempotency", f, m));
        let o = &self.options;
        if o.methods.is_empty() {
            return field("methods", "must not be empty");
        }
        if let Scope::Unset = o.scope {
            return err(
                "choose how keys are separated between callers: .scope(|req| principal) or .global_keys()",
            );
        }
        // Above a year a duration is a mistake, and `Instant + Duration` could overflow.
        let check = |f: &'static str, d: Duration| ConfigError::check_duration("idempotency", f, d);
        check("ttl", o.ttl)?;
        check("lease", o.lease)?;
        check("store_timeout", o.store_timeout)?;
        check("response_body_timeout", o.response_body_timeout)?;
        check("in_flight_retry_after", o.in_flight_retry_after)?;
        if let Some(wait) = o.wait_for_in_flight {
            check("wait_for_in_flight", wait)?;
        }
        if o.response_body_timeout.is_zero() {
            return field("response_body_timeout", "must be above zero");
        }
        if o.lease < Duration::from_millis(30) {
            return field(
                "lease",
                "must be at least 30 ms (it is renewed every third of it)",
            );
        }
        if o.ttl <= o.lease {
            return field("ttl", "must be longer than the lease");
        }
        if o.store_timeout.is_zero() || o.store_timeout >= o.lease {
            return field(
                "store_timeout",
                "must be above zero and shorter than the lease",
            );
        }
        if o.max_request_body == 0 {
            return field("max_request_body", "must be above zero");
        }
        // Stored records carry 32-bit lengths.
        if o.max_response_body > u32::MAX as usize {
            return field("max_response_body", "must be at most 4 GiB");
        }
        Ok(IdempotencyLayer {
            settings: Arc::new(Settings {
                store: self.store,
                outage: Outage::default(),
                options: self.options,
            }),
        })
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
