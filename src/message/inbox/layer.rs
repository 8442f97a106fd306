//! The inbox layer and its builder: every duration checked when built.

use std::{fmt, sync::Arc, time::Duration};

use tower_layer::Layer;

use super::{Inbox, default_key};
use crate::{ConfigError, idempotency::Store};

const LAYER: &str = "inbox";

/// The longest key prefix accepted, in bytes.
pub const MAX_PREFIX_LEN: usize = 128;

pub(crate) type KeyFn = Arc<dyn Fn(&crate::message::Message) -> String + Send + Sync>;

/// Everything an [`Inbox`] service needs, shared by its calls.
pub(crate) struct Settings<St> {
    pub(crate) store: St,
    pub(crate) key: KeyFn,
    pub(crate) prefix: Arc<str>,
    pub(crate) lease: Duration,
    pub(crate) ttl: Duration,
    pub(crate) store_timeout: Duration,
    pub(crate) store_error_delay: Duration,
    pub(crate) in_flight_delay: Duration,
    pub(crate) fail_open: bool,
}

/// Applies each message's effect once, over an idempotency [`Store`]: wrap a consumer's
/// handler in it. See [the module](super) for what it does and promises.
///
/// ```
/// use tower::ServiceBuilder;
/// use tower_rampart::{
///     idempotency::MemoryStore,
///     message::{inbox::InboxLayer, Message},
/// };
///
/// let handler = ServiceBuilder::new()
///     .layer(InboxLayer::new(MemoryStore::new()))
///     .service_fn(|_: Message| async { Ok::<_, std::io::Error>(()) });
/// # let _ = handler;
/// ```
pub struct InboxLayer<St> {
    settings: Arc<Settings<St>>,
}

impl<St> Clone for InboxLayer<St> {
    fn clone(&self) -> Self {
        InboxLayer {
            settings: self.settings.clone(),
        }
    }
}

impl<St> fmt::Debug for InboxLayer<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.settings;
        f.debug_struct("InboxLayer")
            .field("prefix", &s.prefix)
            .field("lease", &s.lease)
            .field("ttl", &s.ttl)
            .field("store_timeout", &s.store_timeout)
            .field("in_flight_delay", &s.in_flight_delay)
            .field("fail_open", &s.fail_open)
            .finish_non_exhaustive()
    }
}

impl<St: Store> InboxLayer<St> {
    /// An inbox over `store` with the defaults: the message id as key, prefix `inbox:`, a
    /// 30 s lease renewed while the handler runs, completed ids remembered 7 days, store calls
    /// cut off after 2 s, "redeliver in 1 s" for a message another consumer is handling, and
    /// "redeliver in 5 s" when the store does not answer.
    pub fn new(store: St) -> Self {
        InboxLayer::builder(store)
            .build()
            .expect("the defaults are valid")
    }

    /// A builder, to change the key, lease, TTL, prefix or store error policy.
    pub fn builder(store: St) -> Builder<St> {
        Builder {
            store,
            key: Arc::new(default_key),
            prefix: "inbox:".into(),
            lease: Duration::from_secs(30),
            ttl: Duration::from_secs(7 * 24 * 3600),
            store_timeout: Duration::from_secs(2),
            store_error_delay: Duration::from_secs(5),
            in_flight_delay: Duration::from_secs(1),
            fail_open: false,
        }
    }
}

impl<S, St> Layer<S> for InboxLayer<St> {
    type Service = Inbox<S, St>;

    fn layer(&self, inner: S) -> Inbox<S, St> {
        Inbox {
            inner,
            settings: self.settings.clone(),
        }
    }
}

/// Builds an [`InboxLayer`] ([`InboxLayer::builder`]).
///
/// ```
/// use std::time::Duration;
/// use tower_rampart::{
///     idempotency::MemoryStore,
///     message::inbox::{business_key, InboxLayer},
/// };
///
/// let layer = InboxLayer::builder(MemoryStore::new())
///     .key(business_key)
///     .prefix("orders-inbox:")
///     .lease(Duration::from_secs(10))
///     .ttl(Duration::from_secs(14 * 24 * 3600))
///     .build()
///     .unwrap();
/// # let _ = layer;
/// let err = InboxLayer::builder(MemoryStore::new()).ttl(Duration::from_secs(1)).build().unwrap_err();
/// assert_eq!(err.setting(), Some("ttl"));
/// ```
#[must_use]
pub struct Builder<St> {
    store: St,
    key: KeyFn,
    prefix: String,
    lease: Duration,
    ttl: Duration,
    store_timeout: Duration,
    store_error_delay: Duration,
    in_flight_delay: Duration,
    fail_open: bool,
}

impl<St> fmt::Debug for Builder<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("prefix", &self.prefix)
            .field("lease", &self.lease)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl<St: Store> Builder<St> {
    /// The key of a message (default: its id). [`business_key`](super::business_key) is the
    /// design's `correlation_id:kind`. A key that comes out empty or longer than 512 bytes
    /// makes the message poison.
    pub fn key(
        mut self,
        key: impl Fn(&crate::message::Message) -> String + Send + Sync + 'static,
    ) -> Self {
        self.key = Arc::new(key);
        self
    }

    /// Put before every key in the store (default `inbox:`), at most 128 bytes: one inbox per
    /// consumer group, apart from the HTTP Idempotency-Key layer's keys in the same store.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The claim's lease, renewed every third of it while the handler runs (default 30 s, at
    /// least 30 ms). A handler stalled for longer than the lease (or cut from the store as
    /// long) may lose its key to a redelivery: see the module's guarantees.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How long a handled message's key is remembered (default 7 days, longer than the lease).
    /// It must exceed the broker's longest redelivery horizon (a message redelivered after its
    /// key expired runs again): queue TTLs, delayed redeliveries, replays from dead letters.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The longest wait for one store call (default 2 s, shorter than the lease).
    pub fn store_timeout(mut self, timeout: Duration) -> Self {
        self.store_timeout = timeout;
        self
    }

    /// When the store fails or does not answer, the message is redelivered after this delay
    /// (default 5 s) without running: fail closed, the safe default.
    pub fn store_error_delay(mut self, delay: Duration) -> Self {
        self.store_error_delay = delay;
        self
    }

    /// A message whose key another consumer is handling now is redelivered after this delay
    /// (default 1 s), or when that consumer's lease ends if sooner: by then it is most often
    /// done, and the redelivery is acked as a duplicate.
    pub fn in_flight_delay(mut self, delay: Duration) -> Self {
        self.in_flight_delay = delay;
        self
    }

    /// When the store fails or does not answer, run the handler anyway, unprotected: a
    /// duplicate may run twice meanwhile. Only for handlers whose effect is idempotent by
    /// itself.
    pub fn fail_open(mut self) -> Self {
        self.fail_open = true;
        self
    }

    /// The layer.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the setting: `lease` below 30 ms, `ttl` not longer than the
    /// lease, `store_timeout` zero or not shorter than the lease, any duration above a year,
    /// `prefix` longer than 128 bytes.
    pub fn build(self) -> Result<InboxLayer<St>, ConfigError> {
        let field = |f, m: &str| Err(ConfigError::field(LAYER, f, m));
        for (name, d) in [
            ("lease", self.lease),
            ("ttl", self.ttl),
            ("store_timeout", self.store_timeout),
            ("store_error_delay", self.store_error_delay),
            ("in_flight_delay", self.in_flight_delay),
        ] {
            ConfigError::check_duration(LAYER, name, d)?;
        }
        if self.lease < Duration::from_millis(30) {
            return field("lease", "must be at least 30 ms");
        }
        if self.ttl <= self.lease {
            return field("ttl", "must be longer than the lease");
        }
        if self.store_timeout.is_zero() || self.store_timeout >= self.lease {
            return field(
                "store_timeout",
                "must be above zero and shorter than the lease",
            );
        }
        if self.prefix.len() > MAX_PREFIX_LEN {
            return field("prefix", "must be at most 128 bytes");
        }
        Ok(InboxLayer {
            settings: Arc::new(Settings {
                store: self.store,
                key: self.key,
                prefix: self.prefix.into(),
                lease: self.lease,
                ttl: self.ttl,
                store_timeout: self.store_timeout,
                store_error_delay: self.store_error_delay,
                in_flight_delay: self.in_flight_delay,
                fail_open: self.fail_open,
            }),
        })
    }
}
