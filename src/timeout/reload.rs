//! Changing a timeout while its layer serves traffic.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use crate::ConfigError;

/// A layer's and its services' timeout: fixed, or read at every call from a [`TimeoutReload`].
#[derive(Clone)]
pub(crate) enum Limit {
    /// The timeout and the same in nanoseconds, worked out once rather than at every call.
    Fixed(Duration, u64),
    /// Nanoseconds: one word, so a call reads it with one relaxed load (no lock, no torn value).
    Live(Arc<AtomicU64>),
}

impl Limit {
    /// A fixed timeout.
    pub(crate) fn fixed(timeout: Duration) -> Limit {
        Limit::Fixed(timeout, nanos(timeout))
    }

    /// The timeout a call starting now gets.
    #[inline]
    pub(crate) fn get(&self) -> Duration {
        self.get_with_nanos().0
    }

    /// The timeout a call starting now gets, and the same in nanoseconds.
    #[inline]
    pub(crate) fn get_with_nanos(&self) -> (Duration, u64) {
        match self {
            Limit::Fixed(d, n) => (*d, *n),
            Limit::Live(nanos) => {
                let n = nanos.load(Relaxed);
                (Duration::from_nanos(n), n)
            }
        }
    }

    pub(crate) fn reloadable(self) -> (Limit, TimeoutReload) {
        let cell = match self {
            Limit::Fixed(_, n) => Arc::new(AtomicU64::new(n)),
            Limit::Live(cell) => cell,
        };
        (Limit::Live(cell.clone()), TimeoutReload(cell))
    }
}

impl fmt::Debug for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::Fixed(d, _) => d.fmt(f),
            Limit::Live(_) => write!(f, "{:?} (reloadable)", self.get()),
        }
    }
}

/// `d` in nanoseconds, saturated at `u64::MAX` (about 584 years: no timeout in practice).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Checks a timeout as [`TimeoutLayer::new`](super::TimeoutLayer::new) does.
pub(crate) fn check(timeout: Duration) -> Result<(), ConfigError> {
    if timeout.is_zero() {
        // Every call would time out.
        return Err(ConfigError::field(
            "timeout",
            "timeout",
            "must be above zero",
        ));
    }
    ConfigError::check_duration("timeout", "timeout", timeout)?;
    Ok(())
}

/// Changes the timeout of a reloadable [`TimeoutLayer`](super::TimeoutLayer) (made by
/// [`TimeoutLayer::reloadable`](super::TimeoutLayer::reloadable)), of every service it made or
/// will make, and of their clones, while they serve traffic. Clones of the handle control the
/// same timeout.
///
/// Each call reads the timeout once, when it starts (one relaxed atomic load: no lock, no
/// allocation), and keeps it: a change applies to calls that start after it. Timeouts are kept
/// to the nanosecond, up to [`MAX_DURATION`](crate::MAX_DURATION) (one year; longer ones are
/// refused).
///
/// ```
/// use std::time::Duration;
/// use tower::{Service, ServiceBuilder, ServiceExt};
/// use tower_rampart::timeout::{Elapsed, TimeoutLayer};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), tower_rampart::BoxError> {
/// let (layer, reload) = TimeoutLayer::new(Duration::from_secs(10))?.reloadable();
/// let mut svc = ServiceBuilder::new().layer(layer).service_fn(|_: ()| async {
///     tokio::time::sleep(Duration::from_secs(5)).await;
///     Ok::<_, std::convert::Infallible>("late")
/// });
/// // Later, on a configuration reload: the service made above follows.
/// reload.set(Duration::from_secs(2))?;
/// let err = svc.ready().await?.call(()).await.unwrap_err();
/// assert_eq!(err.downcast_ref::<Elapsed>().unwrap().after(), Duration::from_secs(2));
/// assert_eq!(reload.get(), Duration::from_secs(2));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct TimeoutReload(Arc<AtomicU64>);

impl TimeoutReload {
    /// Makes `timeout` the timeout of every call that starts from now on; calls already started
    /// keep theirs.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_rampart::timeout::TimeoutLayer;
    ///
    /// let (_layer, reload) = TimeoutLayer::new(Duration::from_secs(1))?.reloadable();
    /// let err = reload.set(Duration::ZERO).unwrap_err();
    /// assert_eq!(err.setting(), Some("timeout"));
    /// assert_eq!(reload.get(), Duration::from_secs(1), "unchanged");
    /// # Ok::<_, tower_rampart::ConfigError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when `timeout` is zero or above [`MAX_DURATION`](crate::MAX_DURATION),
    /// as [`TimeoutLayer::new`](super::TimeoutLayer::new) returns; the timeout is then left as
    /// it was.
    pub fn set(&self, timeout: Duration) -> Result<(), ConfigError> {
        check(timeout)?;
        self.0.store(nanos(timeout), Relaxed);
        Ok(())
    }

    /// The timeout calls starting now get.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_rampart::timeout::TimeoutLayer;
    ///
    /// let (layer, reload) = TimeoutLayer::new(Duration::from_secs(1))?.reloadable();
    /// reload.set(Duration::from_millis(1500))?;
    /// assert_eq!(reload.get(), Duration::from_millis(1500));
    /// assert_eq!(layer.timeout(), Duration::from_millis(1500));
    /// # Ok::<_, tower_rampart::ConfigError>(())
    /// ```
    pub fn get(&self) -> Duration {
        Duration::from_nanos(self.0.load(Relaxed))
    }
}

impl fmt::Debug for TimeoutReload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TimeoutReload").field(&self.get()).finish()
    }
}
