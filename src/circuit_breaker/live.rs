//! A single breaker that a configuration reload can retune or replace while it serves traffic.

use std::{
    fmt,
    sync::{Arc, Mutex, PoisonError},
};

use arc_swap::ArcSwap;

use tokio::time::Instant;

use super::{Breaker, CircuitBreakerHandle, Config, select::SelectBreaker};

/// One breaker, reconfigurable while it serves traffic: a configuration registry calls
/// [`reconfigure`](Self::reconfigure) on every reload. Cheap to clone; every clone (and every
/// service of a [`CircuitBreakerLayer::live`](super::CircuitBreakerLayer::live) layer made from
/// it) sees the same breaker.
///
/// A call takes the current breaker with one atomic load and a reference count, and keeps that
/// breaker until its outcome is recorded, whatever happens to the `LiveBreaker` meanwhile.
///
/// ```
/// use std::time::Duration;
/// use tower_rampart::circuit_breaker::{Config, LiveBreaker, Reconfigured};
///
/// let live = LiveBreaker::new(Config::builder().name("ledger").count_window(100).build()?);
/// let before = live.current();
///
/// // Same window: the running breaker is retuned, its state and window kept.
/// let tuned = Config::builder().name("ledger").count_window(100).failure_rate(0.2).build()?;
/// assert_eq!(live.reconfigure(tuned), Reconfigured::Retuned);
/// assert!(std::sync::Arc::ptr_eq(&before, &live.current()));
///
/// // Another window: a new breaker takes over, with an empty window.
/// let resized = Config::builder().name("ledger").count_window(500).build()?;
/// assert_eq!(live.reconfigure(resized), Reconfigured::Replaced);
/// assert!(!std::sync::Arc::ptr_eq(&before, &live.current()));
/// # Ok::<_, tower_rampart::circuit_breaker::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct LiveBreaker {
    inner: Arc<Inner>,
}

struct Inner {
    current: ArcSwap<Breaker>,
    /// One reconfiguration at a time, so that a replacement retires exactly the breaker it
    /// replaces.
    reconfiguring: Mutex<()>,
}

/// What [`LiveBreaker::reconfigure`] (or
/// [`KeyedBreakers::reconfigure`](super::KeyedBreakers::reconfigure)) did.
///
/// ```
/// use tower_rampart::circuit_breaker::{Config, LiveBreaker, Reconfigured};
///
/// let live = LiveBreaker::new(Config::builder().build()?);
/// match live.reconfigure(Config::builder().failure_rate(0.3).build()?) {
///     Reconfigured::Retuned => println!("state kept"),
///     Reconfigured::Replaced => println!("window changed: state reset"),
///     _ => {}
/// }
/// # Ok::<_, tower_rampart::circuit_breaker::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reconfigured {
    /// The window was unchanged: the running breakers took the new settings in place
    /// ([`Breaker::retune`]), keeping their state and window contents.
    Retuned,
    /// The window changed: new breakers with empty windows replaced the old ones, each in the
    /// old one's state (open stays open, an operator's forced-open, disabled or metrics-only
    /// state stays). A keyed family drops its closed breakers with no call in flight instead:
    /// their keys get new, closed ones at their next call.
    Replaced,
}

impl LiveBreaker {
    /// A live breaker, closed, built from `config`.
    ///
    /// ```
    /// use tower_rampart::circuit_breaker::{Config, LiveBreaker, State};
    ///
    /// let live = LiveBreaker::new(Config::builder().name("search").build()?);
    /// assert_eq!(live.current().name(), "search");
    /// assert_eq!(live.current().state(), State::Closed);
    /// # Ok::<_, tower_rampart::circuit_breaker::ConfigError>(())
    /// ```
    pub fn new(config: Config) -> Self {
        LiveBreaker {
            inner: Arc::new(Inner {
                current: ArcSwap::from_pointee(Breaker::new(config)),
                reconfiguring: Mutex::new(()),
            }),
        }
    }

    /// The breaker serving calls now. After a replacement it is a different one: hold the
    /// `LiveBreaker`, not this, to follow reloads.
    ///
    /// ```
    /// use tokio::time::Instant;
    /// use tower_rampart::circuit_breaker::{Config, LiveBreaker};
    /// use tower_rampart::classify::Outcome;
    ///
    /// let live = LiveBreaker::new(Config::builder().build()?);
    /// let breaker = live.current();
    /// let permit = breaker.try_acquire(Instant::now).expect("closed");
    /// breaker.record(permit, &Outcome::Success, Instant::now);
    /// assert_eq!(breaker.snapshot(Instant::now()).calls, 1);
    /// # Ok::<_, tower_rampart::circuit_breaker::ConfigError>(())
    /// ```
    pub fn current(&self) -> Arc<Breaker> {
        self.inner.current.load_full()
    }

    /// Applies `config`: with the same window as the running breaker's, retunes it in place
    /// ([`Breaker::retune`]: state, window contents, open-until time, name and listeners kept;
    /// `config`'s name and listeners are **ignored**). With another window, replaces it with a
    /// new breaker built from `config` (name and listeners included), with an empty window, in
    /// the old breaker's state: an open or half-open breaker's replacement opens (for the new
    /// open duration), and an operator's forced-open, disabled or metrics-only state carries
    /// over, so that a reload never lets traffic through to a downstream known to be failing.
    /// Calls already admitted record into the old breaker, which is dropped after the last of
    /// them; if their outcomes open it, the new breaker opens too (unless it is open, half-open
    /// or held by an operator already). The old breaker's state is read under its transition
    /// lock, so an opening racing the reload is never lost.
    ///
    /// Listeners may call `reconfigure` (the new breaker's first events are reported once the
    /// reconfiguration is done and no lock is held).
    ///
    /// Metrics on replacement: the old breaker leaves the state gauges at once (a state change
    /// that a call in flight causes in it moves no gauge), and the new one sets its own, so with
    /// an unchanged name the gauges read the new breaker's state. Counters keep counting under
    /// the name.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tokio::time::Instant;
    /// use tower_rampart::circuit_breaker::{Config, LiveBreaker, Reconfigured, State};
    /// use tower_rampart::classify::Outcome;
    ///
    /// let live = LiveBreaker::new(Config::builder().consecutive_failures(1).build()?);
    /// let permit = live.current().try_acquire(Instant::now).unwrap();
    /// live.current().record(permit, &Outcome::FAILURE, Instant::now);
    /// assert_eq!(live.current().state(), State::Open);
    ///
    /// // A longer open duration: retuned, still open.
    /// let longer = Config::builder().consecutive_failures(1).open_duration(Duration::from_secs(60));
    /// assert_eq!(live.reconfigure(longer.build()?), Reconfigured::Retuned);
    /// assert_eq!(live.current().state(), State::Open);
    ///
    /// // Another kind of window: replaced, with an empty window, and still open (a reload never
    /// // lets traffic through to a downstream known to be failing).
    /// let counted = Config::builder().count_window(10).minimum_calls(5).build()?;
    /// assert_eq!(live.reconfigure(counted), Reconfigured::Replaced);
    /// assert_eq!(live.current().state(), State::Open);
    /// assert_eq!(live.current().snapshot(Instant::now()).calls, 0);
    /// # Ok::<_, tower_rampart::circuit_breaker::ConfigError>(())
    /// ```
    pub fn reconfigure(&self, config: Config) -> Reconfigured {
        let new = {
            let _one = self
                .inner
                .reconfiguring
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let old = self.inner.current.load_full();
            // `retune` refuses a window change only: `config` was validated when built.
            if old.retune(&config).is_ok() {
                return Reconfigured::Retuned;
            }
            // Retire first, build second: from here on a transition of the old breaker cannot
            // overwrite the gauges that the new one (same name, same labels) sets when built.
            old.retire_metrics();
            let new = Arc::new(Breaker::new(config));
            // Under the old breaker's transition lock: an opening of the old breaker is either
            // seen here or, after the hand-over, passed on to the new one. Never lost.
            old.hand_over(&new, Instant::now());
            self.inner.current.store(new.clone());
            new
        };
        // The new breaker's first events, with no lock held: its listeners may reconfigure
        // this live breaker again.
        new.deliver_events();
        Reconfigured::Replaced
    }

    /// A handle to read and steer the breaker serving calls now, which follows replacements:
    /// after a window change it steers the new breaker.
    ///
    /// ```
    /// use tower_rampart::circuit_breaker::{Config, LiveBreaker, State};
    ///
    /// let live = LiveBreaker::new(Config::builder().name("ledger").build()?);
    /// let handle = live.handle();
    /// live.reconfigure(Config::builder().name("ledger").count_window(10).minimum_calls(5).build()?);
    /// handle.force_open();
    /// assert_eq!(live.current().state(), State::ForcedOpen);
    /// # Ok::<_, tower_rampart::circuit_breaker::ConfigError>(())
    /// ```
    pub fn handle(&self) -> CircuitBreakerHandle {
        CircuitBreakerHandle::live(self.clone())
    }
}

impl fmt::Debug for LiveBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("LiveBreaker")
            .field(&self.inner.current.load())
            .finish()
    }
}

impl<Req> SelectBreaker<Req> for LiveBreaker {
    type Breaker = Arc<Breaker>;

    #[inline]
    fn select(&self, _: &Req) -> Arc<Breaker> {
        self.inner.current.load_full()
    }
}
