//! The retry layer.

use std::{fmt, sync::Arc};

use tower_layer::Layer;

use super::{Builder, CloneRequest, Retry, RetryReload, Settings, reload::Source};
use crate::{ConfigError, classify::AnyError};

/// Retries failed calls with backoff, within attempt, time and budget limits.
///
/// By default every `Err` is a failure ([`AnyError`]) and requests are copied with `Clone`
/// ([`CloneRequest`]). For HTTP use [`HttpStatus::retryable`](crate::classify::HttpStatus::retryable)
/// and [`HttpReplay`](super::HttpReplay), which only repeats methods that are safe to repeat.
///
/// Every `layer` call and clone shares one policy and budget.
///
/// ```
/// use std::{sync::{Arc, atomic::{AtomicU32, Ordering}}, time::Duration};
/// use tower::{Service, ServiceBuilder, ServiceExt};
/// use tower_rampart::{backoff::Backoff, retry::RetryLayer};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), tower_rampart::BoxError> {
/// let calls = Arc::new(AtomicU32::new(0));
/// let seen = calls.clone();
/// let mut svc = ServiceBuilder::new()
///     .layer(RetryLayer::builder().max_attempts(3).backoff(Backoff::constant(Duration::from_millis(10))).build()?)
///     .service_fn(move |_: ()| {
///         let n = seen.fetch_add(1, Ordering::SeqCst);
///         async move { if n < 2 { Err("flaky") } else { Ok(n) } }
///     });
/// assert_eq!(svc.ready().await?.call(()).await?, 2, "third attempt succeeds");
/// # Ok(())
/// # }
/// ```
pub struct RetryLayer<C = AnyError, R = CloneRequest> {
    policy: Source,
    classifier: C,
    replay: R,
}

impl RetryLayer {
    /// A builder with the defaults listed on [`Builder`].
    pub fn builder() -> Builder {
        Builder::default()
    }
}

impl Builder {
    /// Checks every value and returns the layer.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the setting when `max_attempts` is outside 1..=100,
    /// `max_elapsed` is zero, `max_elapsed`, `attempt_timeout` or the retry-after cap
    /// (`retry_after_cap`) is above [`MAX_DURATION`](crate::MAX_DURATION) (one year), or the
    /// backoff is refused by [`Backoff::validate`](crate::backoff::Backoff::validate).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_rampart::retry::RetryLayer;
    ///
    /// let err = RetryLayer::builder().max_elapsed(Duration::MAX).build().unwrap_err();
    /// assert_eq!(err.setting(), Some("max_elapsed"));
    /// ```
    pub fn build(self) -> Result<RetryLayer, ConfigError> {
        Ok(RetryLayer {
            policy: Source::Shared(Arc::new(self.build_policy()?)),
            classifier: AnyError,
            replay: CloneRequest,
        })
    }
}

impl<C, R> RetryLayer<C, R> {
    /// Classifies outcomes with `classifier`: failures are retried.
    pub fn classify<C2>(self, classifier: C2) -> RetryLayer<C2, R> {
        RetryLayer {
            policy: self.policy,
            classifier,
            replay: self.replay,
        }
    }

    /// Copies requests for later attempts with `replay`.
    pub fn replay<R2>(self, replay: R2) -> RetryLayer<C, R2> {
        RetryLayer {
            policy: self.policy,
            classifier: self.classifier,
            replay,
        }
    }

    /// The layer's name.
    pub fn name(&self) -> &str {
        self.policy.name()
    }

    /// The settings calls starting now run with: the layer's own, or for a
    /// [`reloadable`](Self::reloadable) layer the ones last applied through its handle.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_rampart::{backoff::Backoff, retry::RetryLayer};
    ///
    /// let layer = RetryLayer::builder()
    ///     .name("ledger")
    ///     .max_elapsed(Duration::from_secs(10))
    ///     .backoff(Backoff::constant(Duration::from_millis(100)))
    ///     .build()?;
    /// let settings = layer.settings();
    /// assert_eq!(&*settings.name, "ledger");
    /// assert_eq!(settings.max_elapsed, Some(Duration::from_secs(10)));
    /// assert_eq!(settings.backoff, Backoff::constant(Duration::from_millis(100)));
    ///
    /// let (layer, reload) = layer.reloadable();
    /// reload.apply(RetryLayer::builder().max_attempts(5))?;
    /// assert_eq!(layer.settings().max_elapsed, None);
    /// # Ok::<_, tower_rampart::ConfigError>(())
    /// ```
    pub fn settings(&self) -> Settings {
        Settings::of(&self.policy.snapshot())
    }

    /// Attempts in all, the first included, of calls starting now (see
    /// [`settings`](Self::settings)).
    ///
    /// ```
    /// use tower_rampart::retry::RetryLayer;
    ///
    /// let (layer, reload) = RetryLayer::builder().max_attempts(4).build()?.reloadable();
    /// assert_eq!(layer.max_attempts(), 4);
    /// reload.apply(RetryLayer::builder().max_attempts(2))?;
    /// assert_eq!(layer.max_attempts(), 2);
    /// # Ok::<_, tower_rampart::ConfigError>(())
    /// ```
    pub fn max_attempts(&self) -> u32 {
        self.policy.snapshot().max_attempts
    }

    /// Moves the layer's shared state (here the policy, with its budget and listeners) to
    /// static memory, never freed, so that calls hold it without reference counting: two
    /// atomic read-modify-writes fewer per call, and no cache line that every core writes.
    /// Nothing else changes: the services behave the same, and clones of the budget keep
    /// sharing it. For layers built once for the life of the process (the usual case): each
    /// call leaks one small allocation, so a program that builds layers again and again should
    /// not leak them. Leaking a leaked layer leaks nothing more.
    ///
    /// With [`reloadable`](Self::reloadable), leak first: `layer.leak().reloadable()` gives a
    /// reloadable layer whose calls still take no reference count (each
    /// [`apply`](RetryReload::apply) then leaks the new policy). A layer already reloadable is
    /// left as it is by `leak` (its handles keep controlling it, and calls keep counting
    /// references to the policy version they use).
    ///
    /// ```
    /// use tower_rampart::retry::RetryLayer;
    ///
    /// let layer = RetryLayer::builder().name("static").build()?.leak();
    /// assert_eq!(layer.name(), "static");
    /// # Ok::<_, tower_rampart::ConfigError>(())
    /// ```
    pub fn leak(self) -> Self {
        RetryLayer {
            policy: self.policy.leak(),
            classifier: self.classifier,
            replay: self.replay,
        }
    }

    /// Makes the policy replaceable while the layer serves traffic: returns the layer, whose
    /// services (made before or after a reload) and their clones follow the policy set through
    /// the [`RetryReload`] handle, and the handle. Each call uses the policy current when it
    /// starts until it ends. Calls read it without a lock nor an allocation; they count a
    /// reference to it, as a layer that is not leaked does (see [`leak`](Self::leak) for a
    /// reloadable layer without one). Called on a layer already reloadable, returns another
    /// handle to the same policy.
    ///
    /// ```
    /// use tower_rampart::retry::RetryLayer;
    ///
    /// let (layer, reload) = RetryLayer::builder().name("ledger").build()?.reloadable();
    /// reload.apply(RetryLayer::builder().max_attempts(5))?;
    /// assert_eq!(reload.current().max_attempts, 5);
    /// assert_eq!(layer.name(), "ledger", "the name is kept");
    /// # Ok::<_, tower_rampart::ConfigError>(())
    /// ```
    pub fn reloadable(self) -> (Self, RetryReload) {
        let (policy, reload) = self.policy.reloadable();
        let layer = RetryLayer {
            policy,
            classifier: self.classifier,
            replay: self.replay,
        };
        (layer, reload)
    }
}

impl<C: Clone, R: Clone> Clone for RetryLayer<C, R> {
    fn clone(&self) -> Self {
        RetryLayer {
            policy: self.policy.clone(),
            classifier: self.classifier.clone(),
            replay: self.replay.clone(),
        }
    }
}

impl<C, R> fmt::Debug for RetryLayer<C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer")
            .field("name", &self.policy.name())
            .field("max_attempts", &self.policy.snapshot().max_attempts)
            .finish_non_exhaustive()
    }
}

impl<S, C: Clone, R: Clone> Layer<S> for RetryLayer<C, R> {
    type Service = Retry<S, C, R>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry {
            inner,
            policy: self.policy.clone(),
            classifier: self.classifier.clone(),
            replay: self.replay.clone(),
        }
    }
}
