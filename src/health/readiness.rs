//! The readiness service: breakers and stores in, a health report out.

use std::{
    convert::Infallible,
    fmt,
    future::{Future, poll_fn},
    hash::Hash,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http_body_util::Full;
use tokio::time::Instant;

use super::{Check, ObservedValue, OpenBreakers, Report, Status};
use crate::{
    circuit_breaker::{CircuitBreakerHandle, KeyedBreakers, Snapshot, State},
    idempotency::Store,
};

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where [`Readiness`] finds breakers. Asked again at every check, so a source whose breakers
/// come and go (a keyed family, a registry) is read as it is at that moment.
///
/// Implemented for one [`CircuitBreakerHandle`], a list of them, and a keyed family
/// (`Arc<KeyedBreakers<K>>`, from
/// [`KeyedCircuitBreakerLayer::breakers`](crate::circuit_breaker::KeyedCircuitBreakerLayer::breakers));
/// wrap a closure in [`from_fn`] for anything else, e.g. a registry that lists its breakers.
pub trait BreakerSource: Send + Sync + 'static {
    /// The breakers to check now.
    fn breakers(&self) -> Vec<CircuitBreakerHandle>;
}

impl BreakerSource for CircuitBreakerHandle {
    fn breakers(&self) -> Vec<CircuitBreakerHandle> {
        vec![self.clone()]
    }
}

impl BreakerSource for Vec<CircuitBreakerHandle> {
    fn breakers(&self) -> Vec<CircuitBreakerHandle> {
        self.clone()
    }
}

impl<K> BreakerSource for Arc<KeyedBreakers<K>>
where
    K: Hash + Eq + Clone + fmt::Display + Send + Sync + 'static,
{
    fn breakers(&self) -> Vec<CircuitBreakerHandle> {
        self.handles().into_iter().map(|(_, h)| h).collect()
    }
}

/// A [`BreakerSource`] made of a closure that lists breakers.
///
/// ```
/// use tower_rampart::circuit_breaker::{CircuitBreakerLayer, Config};
/// use tower_rampart::health::{self, Readiness};
///
/// let layer = CircuitBreakerLayer::new(Config::builder().name("search").build()?);
/// let handle = layer.handle();
/// let readiness = Readiness::new().breaker(health::from_fn(move || vec![handle.clone()]));
/// # let _ = readiness;
/// # Ok::<_, tower_rampart::ConfigError>(())
/// ```
pub fn from_fn<F>(f: F) -> FromFn<F>
where
    F: Fn() -> Vec<CircuitBreakerHandle> + Send + Sync + 'static,
{
    FromFn(f)
}

/// See [`from_fn`].
#[derive(Clone, Copy)]
pub struct FromFn<F>(F);

impl<F> fmt::Debug for FromFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FromFn")
    }
}

impl<F> BreakerSource for FromFn<F>
where
    F: Fn() -> Vec<CircuitBreakerHandle> + Send + Sync + 'static,
{
    fn breakers(&self) -> Vec<CircuitBreakerHandle> {
        (self.0)()
    }
}

/// A check that asks something over the network (a store's `ready`, an outbox's backlog):
/// run concurrently with the others, within the store timeout.
trait Probe: Send + Sync + 'static {
    /// Its component name, for `Debug`.
    fn name(&self) -> String;
    fn check(&self, timeout: Duration) -> BoxFuture<'_, Check>;
}

struct StoreCheck<St> {
    name: Arc<str>,
    store: St,
}

impl<St: Store> Probe for StoreCheck<St> {
    fn name(&self) -> String {
        self.name.to_string()
    }

    fn check(&self, timeout: Duration) -> BoxFuture<'_, Check> {
        Box::pin(store_check(&self.name, &self.store, timeout))
    }
}

#[cfg(feature = "postgres")]
impl Probe for crate::message::outbox::OutboxCheck {
    fn name(&self) -> String {
        self.outbox.table_name()
    }

    fn check(&self, timeout: Duration) -> BoxFuture<'_, Check> {
        Box::pin(self.run(timeout))
    }
}

#[derive(Clone)]
struct Breakers {
    source: Arc<dyn BreakerSource>,
    /// How many open breakers fail the probe; `None`: open breakers only warn.
    critical: Option<Critical>,
}

#[derive(Clone, Copy)]
struct Critical {
    threshold: OpenBreakers,
    /// Added with `critical_when`: the output counts the source's open breakers.
    counted: bool,
}

#[derive(Clone)]
struct Inner {
    breakers: Vec<Breakers>,
    /// Stores and outboxes, in the order they were added.
    probes: Vec<Arc<dyn Probe>>,
    store_timeout: Duration,
}

/// A readiness probe ("send me traffic?") over circuit breakers and stores: an
/// `application/health+json` report, 503 when it fails. Use it as a tower `Service` (for axum,
/// `Router::route_service("/readyz", readiness)`) or call [`response`](Self::response) /
/// [`report`](Self::report) from a handler of your own.
///
/// - A breaker added with [`critical`](Self::critical) fails the probe while it is open (or
///   forced open): without that downstream this instance cannot serve. A source of many
///   breakers added so (a keyed family, one breaker per host) fails it when **any one** of
///   them is open, on every instance at once, since they all call that host: for a family,
///   prefer [`critical_when`](Self::critical_when), which fails only when enough of them are
///   open (see [`OpenBreakers`]).
/// - One added with [`breaker`](Self::breaker) only warns while open (the response stays 200):
///   the layers around it degrade, a fallback answers.
/// - A half-open breaker warns. A breaker's state is read on the clock
///   ([`Snapshot`]): once its open duration is over it reads half-open, although no call has
///   been made since.
/// - A [`store`](Self::store) fails the probe when [`Store::ready`] errs or does not answer
///   within the [store timeout](Self::store_timeout) (1 second by default). Stores are asked
///   concurrently.
///
/// Breakers and stores are given explicitly, so anything that holds them (a keyed layer, a
/// registry of named policies) feeds the probe through [`BreakerSource`]. Cheap to clone.
///
/// Liveness is another question ("is the process alive?", answered by [`Liveness`](super::Liveness)):
/// it must not depend on breakers or stores, or an outage downstream makes the orchestrator
/// restart every healthy instance.
#[derive(Clone)]
pub struct Readiness {
    inner: Arc<Inner>,
}

impl fmt::Debug for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Readiness")
            .field("breaker_sources", &self.inner.breakers.len())
            .field(
                "probes",
                &self
                    .inner
                    .probes
                    .iter()
                    .map(|p| p.name())
                    .collect::<Vec<_>>(),
            )
            .field("store_timeout", &self.inner.store_timeout)
            .finish()
    }
}

impl Default for Readiness {
    fn default() -> Self {
        Self::new()
    }
}

/// The component name of a store added with [`Readiness::store`].
pub const DEFAULT_STORE_NAME: &str = "idempotency_store";

impl Readiness {
    /// Nothing checked yet: always passes.
    pub fn new() -> Self {
        Readiness {
            inner: Arc::new(Inner {
                breakers: Vec::new(),
                probes: Vec::new(),
                store_timeout: Duration::from_secs(1),
            }),
        }
    }

    fn edit(mut self, f: impl FnOnce(&mut Inner)) -> Self {
        f(Arc::make_mut(&mut self.inner));
        self
    }

    /// Checks these breakers: open warns, the probe still passes (200).
    pub fn breaker(self, source: impl BreakerSource) -> Self {
        self.add(source, None)
    }

    /// Checks these breakers: any one open (or forced open) fails the probe (503). Right for
    /// one breaker guarding a downstream this instance cannot serve without; for a keyed
    /// family, one open host fails every instance at once: see
    /// [`critical_when`](Self::critical_when).
    pub fn critical(self, source: impl BreakerSource) -> Self {
        self.add(
            source,
            Some(Critical {
                threshold: OpenBreakers::ANY,
                counted: false,
            }),
        )
    }

    /// Checks these breakers: the probe fails (503) when `threshold` of them are open (or
    /// forced open), counted over the breakers the source lists at that check; fewer open
    /// breakers warn (200). For a keyed family of per-host breakers, so that one host down
    /// does not take every instance out of rotation. Each open breaker's `output` says how
    /// many of the source's breakers are open.
    ///
    /// ```
    /// use tower_rampart::circuit_breaker::{CircuitBreakerLayer, Config};
    /// use tower_rampart::health::{OpenBreakers, Readiness};
    ///
    /// let hosts = CircuitBreakerLayer::keyed_by_authority(Config::builder().name("api").build()?);
    /// // Not ready once half of the hosts (rounded up) have an open breaker.
    /// let readiness =
    ///     Readiness::new().critical_when(hosts.breakers(), OpenBreakers::fraction(0.5)?);
    /// # let _ = readiness;
    /// # Ok::<_, tower_rampart::ConfigError>(())
    /// ```
    pub fn critical_when(self, source: impl BreakerSource, threshold: OpenBreakers) -> Self {
        self.add(
            source,
            Some(Critical {
                threshold,
                counted: true,
            }),
        )
    }

    fn add(self, source: impl BreakerSource, critical: Option<Critical>) -> Self {
        self.edit(|i| {
            i.breakers.push(Breakers {
                source: Arc::new(source),
                critical,
            })
        })
    }

    /// Checks a store (its component name is `idempotency_store`): the probe fails when
    /// [`Store::ready`] errs or takes longer than the store timeout. A store is usually cheap to
    /// clone (it shares its state); pass a clone of the one the layer uses.
    pub fn store<St: Store>(self, store: St) -> Self {
        self.store_named(DEFAULT_STORE_NAME, store)
    }

    /// Like [`store`](Self::store), under another component name.
    pub fn store_named<St: Store>(self, name: impl Into<Arc<str>>, store: St) -> Self {
        let name = name.into();
        self.edit(|i| {
            i.probes
                .push(Arc::new(StoreCheck { name, store }) as Arc<dyn Probe>)
        })
    }

    /// Checks an outbox's backlog (component `<table>`, key `<table>:backlogAge`, observed in
    /// seconds): the probe fails when the oldest unpublished event is older than the check's
    /// `max_age`, or PostgreSQL does not answer within the store timeout.
    ///
    /// It warns above half of `max_age`. It runs with the stores, concurrently, under the same
    /// timeout; the observed value is the oldest unpublished event's age (0 when none waits).
    #[cfg(feature = "postgres")]
    pub fn outbox(self, check: crate::message::outbox::OutboxCheck) -> Self {
        self.edit(|i| i.probes.push(Arc::new(check)))
    }

    /// How long a store may take to answer (1 second by default). Keep it below the
    /// orchestrator's probe timeout.
    pub fn store_timeout(self, timeout: Duration) -> Self {
        self.edit(|i| i.store_timeout = timeout)
    }

    /// Runs every check now.
    pub async fn report(&self) -> Report {
        let inner = &self.inner;
        let wall = SystemTime::now();
        let mut checks = Vec::new();
        for b in &inner.breakers {
            let snapshots: Vec<Snapshot> =
                b.source.breakers().iter().map(|h| h.snapshot()).collect();
            let open = snapshots.iter().filter(|s| is_open(s.state)).count();
            let total = snapshots.len();
            let critical = b.critical.map(|c| Verdict {
                fails: c.threshold.fails(open, total),
                counted: c.counted.then(|| {
                    format!(
                        "{open} of {total} breakers of this source open, {}",
                        c.threshold
                    )
                }),
            });
            for s in &snapshots {
                checks.push(breaker_check(s, critical.as_ref(), wall));
            }
        }
        let timeout = inner.store_timeout;
        let mut pending: Vec<Option<BoxFuture<'_, Check>>> = inner
            .probes
            .iter()
            .map(|p| Some(p.check(timeout)))
            .collect();
        let mut done: Vec<Option<Check>> = vec![None; pending.len()];
        poll_fn(|cx| {
            let mut waiting = false;
            for (slot, out) in pending.iter_mut().zip(done.iter_mut()) {
                if let Some(f) = slot {
                    match f.as_mut().poll(cx) {
                        Poll::Ready(c) => {
                            *out = Some(c);
                            *slot = None;
                        }
                        Poll::Pending => waiting = true,
                    }
                }
            }
            if waiting {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        checks.extend(done.into_iter().flatten());
        Report::new(checks)
    }

    /// Runs every check and answers: 200 (pass, warn) or 503 (fail), `application/health+json`.
    /// Returns an `http::Response`, which axum handlers may return as it is.
    pub async fn response(&self) -> http::Response<Full<Bytes>> {
        self.report().await.into_response()
    }
}

fn is_open(state: State) -> bool {
    matches!(state, State::Open | State::ForcedOpen)
}

/// What a critical source's open breakers come to at one check.
struct Verdict {
    fails: bool,
    /// For `critical_when`: how many of the source's breakers are open, and the threshold.
    counted: Option<String>,
}

fn breaker_check(s: &Snapshot, critical: Option<&Verdict>, wall: SystemTime) -> Check {
    let (status, output) = match s.state {
        State::Open | State::ForcedOpen => {
            let what = if s.state == State::Open {
                match s.retry_after {
                    Some(d) => format!("open, next probe in {:.1} s", d.as_secs_f64()),
                    None => "open".to_owned(),
                }
            } else {
                "forced open by an operator".to_owned()
            };
            match critical {
                Some(Verdict {
                    fails,
                    counted: Some(count),
                }) => (
                    if *fails { Status::Fail } else { Status::Warn },
                    Some(format!("{what}; {count}")),
                ),
                Some(Verdict {
                    fails: true,
                    counted: None,
                }) => (
                    Status::Fail,
                    Some(format!("{what}; the breaker is critical")),
                ),
                _ => (Status::Warn, Some(what)),
            }
        }
        State::HalfOpen => (
            Status::Warn,
            Some(format!(
                "half-open, probing ({} probe permits free)",
                s.half_open_permits_free.unwrap_or(0)
            )),
        ),
        State::Closed | State::Disabled | State::MetricsOnly => (Status::Pass, None),
    };
    Check {
        key: format!("{}:state", s.name),
        component_id: s.name.to_string(),
        component_type: "circuit_breaker",
        status,
        observed_value: ObservedValue::Text(s.state.as_str().to_owned()),
        observed_unit: None,
        output,
        time: wall.checked_sub(s.time_in_state).unwrap_or(wall),
    }
}

async fn store_check<St: Store>(name: &str, store: &St, timeout: Duration) -> Check {
    let wall = SystemTime::now();
    let start = Instant::now();
    let answer = tokio::time::timeout(timeout, store.ready()).await;
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    let (status, output) = match answer {
        Ok(Ok(())) => (Status::Pass, None),
        Ok(Err(e)) => (Status::Fail, Some(format!("the store failed: {e}"))),
        Err(_) => (
            Status::Fail,
            Some(format!("no answer within {} ms", timeout.as_millis())),
        ),
    };
    Check {
        key: format!("{name}:responseTime"),
        component_id: name.to_owned(),
        component_type: "datastore",
        status,
        observed_value: ObservedValue::Number(ms),
        observed_unit: Some("ms"),
        output,
        time: wall,
    }
}

impl<B> tower_service::Service<http::Request<B>> for Readiness {
    type Response = http::Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.response().await) })
    }
}
