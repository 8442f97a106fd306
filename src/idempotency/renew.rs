//! The lease's renewals, in tasks of their own: they must not depend on the handler's task
//! being polled. A handler that blocks its worker thread (a synchronous database driver, a
//! CPU-heavy step) would otherwise stop its own renewals and lose its key to a duplicate.
//!
//! Most handlers end long before their first renewal (a third of the lease), so a new key
//! costs no task: it joins the layer's queue of in-flight keys, which one task per layer
//! watches. A key still held at its first renewal gets a task of its own then, which renews
//! it until it is completed or released.
//!
//! What remains: on a current-thread runtime, or a multi-thread one whose every worker is
//! blocked, nothing else runs while the handler blocks, renewals included. Blocking work
//! belongs in `spawn_blocking` (or `block_in_place`).

use std::{
    cmp::Ordering,
    collections::BinaryHeap,
    future::poll_fn,
    pin::pin,
    sync::{Arc, Mutex, MutexGuard, Weak},
    task::{Poll, Waker},
    time::Duration,
};

use tokio::{task::JoinHandle, time::Instant};

use super::{
    EventKind, OwnerToken, Store,
    instrument::{outcome, within},
    layer::Settings,
    lease::LeaseSender,
    outage::later,
};

/// One layer's keys waiting for their first renewal, and the task that watches them.
#[derive(Default)]
pub(crate) struct Queue(Mutex<Waiting>);

#[derive(Default)]
struct Waiting {
    due: BinaryHeap<Due>,
    /// Breaks ties between equal instants (the heap needs a total order).
    seq: u64,
    /// The watching task, to wake when a key is due sooner than it sleeps.
    waker: Option<Waker>,
    /// Whether the watching task is alive (it ends with its runtime, or with the layer).
    running: bool,
}

struct Due {
    at: Instant,
    seq: u64,
    /// Weak: a key that ended frees what it holds at once; only this slot waits for its time.
    key: Weak<Entry>,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Due {}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Due {
    // Reversed: the heap's top is the soonest.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        // The layer is gone: the watching task, if it waits, ends.
        let waker = lock(&self.0).waker.take();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // No statement under these locks leaves them inconsistent if it panics.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One claimed key and its renewals.
struct Entry {
    key: Arc<str>,
    token: OwnerToken,
    lease: LeaseSender,
    claimed_at: Instant,
    beat: Mutex<Beat>,
    /// The request's span, for the events of its renewals.
    #[cfg(feature = "tracing")]
    span: tracing::Span,
}

enum Beat {
    /// In the queue, not renewed yet.
    Waiting,
    /// Its task is being spawned.
    Starting,
    Running(JoinHandle<()>),
    /// Completed or released (or its owner ended): never renewed again.
    Stopped,
}

/// The running renewals of one claimed key; dropping this stops them (the key was completed
/// or released, or its owner ended in any way), so none outlives its key.
pub(crate) struct Renewals(Arc<Entry>);

impl Renewals {
    /// Stops them now (the completion is stored).
    pub(crate) fn stop(&self) {
        let beat = std::mem::replace(&mut *lock(&self.0.beat), Beat::Stopped);
        if let Beat::Running(task) = beat {
            task.abort();
        }
    }
}

impl Drop for Renewals {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts renewing the lease of `key`, claimed with `token` at `claimed_at`. The second value
/// says whether this woke or spawned the layer's watching task from this thread: it then sits
/// in this worker's slot that other workers cannot take from, so the owner must not block
/// this worker before something else is scheduled here (the caller spawns the owner).
pub(crate) fn renew<St: Store>(
    settings: &Arc<Settings<St>>,
    key: Arc<str>,
    token: OwnerToken,
    lease: LeaseSender,
    claimed_at: Instant,
) -> (Renewals, bool) {
    let entry = Arc::new(Entry {
        key,
        token,
        lease,
        claimed_at,
        beat: Mutex::new(Beat::Waiting),
        #[cfg(feature = "tracing")]
        span: tracing::Span::current(),
    });
    let at = later(claimed_at, settings.lease / 3);
    let (wake, spawn) = {
        let mut q = lock(&settings.renewals.0);
        let sooner = q.due.peek().is_none_or(|top| at < top.at);
        q.seq = q.seq.wrapping_add(1);
        let seq = q.seq;
        q.due.push(Due {
            at,
            seq,
            key: Arc::downgrade(&entry),
        });
        let spawn = !q.running;
        q.running = true;
        (if sooner { q.waker.take() } else { None }, spawn)
    };
    if spawn {
        tokio::spawn(watch(Arc::downgrade(settings)));
    }
    let woke = wake.is_some();
    if let Some(w) = wake {
        w.wake();
    }
    (Renewals(entry), spawn || woke)
}

/// Marks the watching task dead when it ends (its runtime shut down): the next key spawns
/// another.
struct Alive<St: Store>(Weak<Settings<St>>);

impl<St: Store> Drop for Alive<St> {
    fn drop(&mut self) {
        if let Some(st) = self.0.upgrade() {
            let mut q = lock(&st.renewals.0);
            q.running = false;
            q.waker = None;
        }
    }
}

/// The layer's watching task: sleeps until the soonest first renewal, and gives each key still
/// held then a renewal task of its own. Holds no strong reference to the layer between wakes,
/// and ends when the layer is dropped.
async fn watch<St: Store>(settings: Weak<Settings<St>>) {
    let _alive = Alive(settings.clone());
    let mut sleep = pin!(tokio::time::sleep(Duration::ZERO));
    let mut until: Option<Instant> = None;
    let mut due = Vec::new();
    poll_fn(|cx| {
        loop {
            let Some(st) = settings.upgrade() else {
                return Poll::Ready(());
            };
            let now = Instant::now();
            {
                let mut q = lock(&st.renewals.0);
                while q.due.peek().is_some_and(|d| d.at <= now) {
                    due.extend(q.due.pop().and_then(|d| d.key.upgrade()));
                }
                if due.is_empty() {
                    if !q.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        q.waker = Some(cx.waker().clone());
                    }
                    let Some(next) = q.due.peek().map(|d| d.at) else {
                        until = None;
                        return Poll::Pending;
                    };
                    drop(q);
                    // Keys due within a tick of each other wake this task once, not once each
                    // (at a high rate of new keys, one is due every few microseconds): a first
                    // renewal is late by a tick at most, a thirty-second of its interval.
                    let tick = (st.lease / 96).min(Duration::from_millis(50));
                    let next = next.max(later(now, tick));
                    if until != Some(next) {
                        sleep.as_mut().reset(next);
                        until = Some(next);
                    }
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    until = None;
                    continue;
                }
            }
            for entry in due.drain(..) {
                start(&st, entry);
            }
        }
    })
    .await;
}

/// A key still held at its first renewal: its own renewal task from now on.
fn start<St: Store>(settings: &Arc<Settings<St>>, entry: Arc<Entry>) {
    {
        let mut beat = lock(&entry.beat);
        if !matches!(*beat, Beat::Waiting) {
            return;
        }
        *beat = Beat::Starting;
    }
    let task = heartbeat(
        settings.clone(),
        entry.key.clone(),
        entry.token,
        entry.lease.clone(),
        entry.claimed_at,
    );
    // Its events (a lost lease) belong to the request's span.
    #[cfg(feature = "tracing")]
    let task = tracing::Instrument::instrument(task, entry.span.clone());
    let task = tokio::spawn(task);
    let mut beat = lock(&entry.beat);
    if matches!(*beat, Beat::Stopped) {
        drop(beat);
        task.abort();
    } else {
        *beat = Beat::Running(task);
    }
}

/// Renews the lease every third of it; after a failure sooner (a tenth of it, at most 250 ms),
/// backing off with every background call that failed meanwhile, up to half the time left on
/// the lease (a whole lease once it is lost); says when the lease is lost. Runs until the lease
/// is provably lost, or until stopped.
async fn heartbeat<St: Store>(
    settings: Arc<Settings<St>>,
    key: Arc<str>,
    token: OwnerToken,
    lease: LeaseSender,
    claimed_at: Instant,
) {
    let st = &*settings;
    let every = st.lease / 3;
    let again = (st.lease / 10).min(Duration::from_millis(250));
    let mut held_since = claimed_at;
    let mut next = later(held_since, every);
    loop {
        tokio::time::sleep_until(next).await;
        let sent = Instant::now();
        let renewed = within(
            "renew",
            st.store_timeout,
            st.store.renew(&key, token, st.lease),
        );
        match renewed.await {
            Ok(true) => {
                st.outage.answered();
                held_since = sent;
                next = later(sent, every);
            }
            Ok(false) => {
                st.outage.answered();
                if lease.is_held() {
                    outcome(st, Some(&key), EventKind::LeaseLost);
                    #[cfg(feature = "tracing")]
                    tracing::warn!(
                        key = %super::redact::ShownKey::new(st, &key),
                        "idempotency lease lost: another owner may run"
                    );
                }
                lease.lose();
                return;
            }
            Err(_) => {
                st.outage.failed();
                let now = Instant::now();
                let ends = later(held_since, st.lease);
                if now >= ends && lease.is_held() {
                    // The store may have let the key go: the handler must not count on it.
                    outcome(st, Some(&key), EventKind::LeaseLost);
                    lease.lose();
                }
                next = if lease.is_held() {
                    // Back off, yet keep trying while the lease lasts: at the latest halfway
                    // to its end (a few tries, not one every `again`), and as it ends.
                    let left = ends.saturating_duration_since(now);
                    let pause = st.outage.pause(again, every).min((left / 2).max(again));
                    later(now, pause).min(ends)
                } else {
                    // Lost: renewing only keeps the key from a duplicate if the store comes
                    // back; no hurry.
                    later(now, st.outage.pause(again, st.lease))
                };
            }
        }
    }
}
