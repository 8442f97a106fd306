//! The Idempotency-Key layer's builder: every setting, checked at build time.

use std::{fmt, sync::Arc, time::Duration};

use http::{HeaderName, Method, request, response};

use super::{
    Event, IdempotencyLayer, Store,
    layer::{OnStoreError, Options, Scope, Settings},
    outage::Outage,
};
use crate::ConfigError;

/// Builds an [`IdempotencyLayer`].
#[must_use]
pub struct Builder<St> {
    pub(super) store: St,
    pub(super) options: Options,
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

    /// The largest response kept for replay (1 MiB by default); a larger one reaches the first
    /// caller and later ones get a 409 that says so. It also bounds the copy kept of a
    /// streaming response.
    pub fn max_response_body(mut self, bytes: usize) -> Self {
        self.options.max_response_body = bytes;
        self
    }

    /// How long the layer reads a response body to keep it, from the handler's return (30 s by
    /// default). A body still streaming after that reaches the first caller in full, and the
    /// key is completed as not replayable: never released, so the request never runs again. It
    /// also bounds how long a body is read after its first caller went away.
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
    /// Renewals run apart from the handler's task (one task per layer watches the keys in
    /// flight, and a key still running at its first renewal gets a task of its own), so a
    /// handler that blocks its worker thread (a synchronous driver, a CPU-heavy step) keeps
    /// its key on a multi-thread runtime. On a
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

    /// Whether events ([`Event::key`]) and `tracing` fields show keys as they are (`true`), or
    /// redacted (`false`, the default): `blake3:` and the first 12 hex digits of the key's
    /// BLAKE3 hash, the same for the same key on every instance, so that one key's events can
    /// still be followed. A scoped key carries the caller's principal, and a client's key is
    /// the handle of its request: raw keys belong only in logs as protected as the store.
    ///
    /// ```
    /// use tower_rampart::idempotency::IdempotencyLayer;
    ///
    /// # fn main() -> Result<(), tower_rampart::ConfigError> {
    /// let layer = IdempotencyLayer::builder()
    ///     .global_keys()
    ///     .on_event(|e| println!("{:?} {:?}", e.kind, e.key)) // Some("blake3:…")
    ///     .build()?;
    /// let debugging = IdempotencyLayer::builder().global_keys().log_raw_keys(true).build()?;
    /// # let _ = (layer, debugging);
    /// # Ok(())
    /// # }
    /// ```
    pub fn log_raw_keys(mut self, raw: bool) -> Self {
        self.options.log_raw_keys = raw;
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
        self.options.meters.bind_now();
        Ok(IdempotencyLayer {
            settings: Arc::new(Settings {
                store: self.store,
                outage: Outage::default(),
                renewals: Default::default(),
                options: self.options,
            }),
        })
    }
}
