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
    collections::VecDeque,
    future::poll_fn,
    pin::pin,
    sync::{Arc, Mutex, MutexGuard, Weak},
    task::{Poll, Waker},
    time::Duration,
};

use tokio::{task::JoinHandle, time::Instant};

use super::{
    EventKind, OwnerToken, Store,
    instrument::{Op, outcome, within},
    layer::Settings,
    lease::LeaseSender,
    outage::later,
};

/// One layer's keys waiting for their first renewal, and the task that watches them.
#[derive(Default)]
pub(crate) struct Queue(Mutex<Waiting>);

/// Keys by the tick their first renewal falls in: a new key is one push at the back (keys come
/// in the order of their claims), and the watcher takes a whole tick at once when it is due. A
/// sorted heap would cost each key two walks of log(n) entries, at 40,000 new keys per second
/// 130,000 of them, cold in the cache.
#[derive(Default)]
struct Waiting {
    /// In the order of their ticks, one per tick that has keys.
    ticks: VecDeque<Tick>,
    /// Tick 0 ends here (the first key's due time).
    origin: Option<Instant>,
    /// The ticks' length, set with `origin` (the layer's lease does not change).
    width: Duration,
    /// Emptied lists, kept for their capacity: a busy layer fills one per tick.
    spare: Vec<Vec<Weak<Entry>>>,
    /// The watching task, to wake when a key is due sooner than it sleeps.
    waker: Option<Waker>,
    /// Whether the watching task is alive (it ends with its runtime, or with the layer).
    running: bool,
}

/// Lists kept for reuse, at most: enough for the ticks a burst leaves behind; and the longest
/// kept (a tick's keys at 1.3 million new keys per second), so that a burst holds no memory.
const SPARE: usize = 8;
const SPARE_KEYS: usize = 1 << 16;

struct Tick {
    number: u64,
    /// When its keys are due: the end of the tick, so none is renewed early.
    at: Instant,
    /// Weak: a key that ended frees what it holds at once; only this slot waits for its tick.
    keys: Vec<Weak<Entry>>,
}

/// The ticks' length: a first renewal is late by one at most, a thirty-second of its
/// interval, or 50 ms.
fn tick_of(lease: Duration) -> Duration {
    (lease / 96).min(Duration::from_millis(50))
}

impl Waiting {
    /// Adds `key`, due at `at` (`lease` is the layer's); says whether it is now the soonest due.
    fn push(&mut self, at: Instant, lease: Duration, key: Weak<Entry>) -> bool {
        // Almost always the last tick: `at` falls in its width before it.
        if let Some(last) = self.ticks.back_mut()
            && at <= last.at
            && last.at.saturating_duration_since(at) < self.width
        {
            last.keys.push(key);
            return false;
        }
        let origin = *self.origin.get_or_insert_with(|| {
            self.width = tick_of(lease);
            at
        });
        // Bounded: the lease is at most a year, a tick at least 312 µs.
        let since = u64::try_from(at.saturating_duration_since(origin).as_nanos());
        let width = u64::try_from(self.width.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        let number = since.unwrap_or(u64::MAX).div_ceil(width);
        // Claims on other workers may come a few µs out of order.
        let i = self
            .ticks
            .iter()
            .rposition(|t| t.number <= number)
            .map_or(0, |i| i + 1);
        if i > 0 && self.ticks[i - 1].number == number {
            self.ticks[i - 1].keys.push(key);
            return false;
        }
        let mut keys = self.spare.pop().unwrap_or_default();
        keys.push(key);
        let at = later(origin, Duration::from_nanos(number.saturating_mul(width)));
        self.ticks.insert(i, Tick { number, at, keys });
        i == 0
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
        span: super::detach::current_span(),
    });
    let at = later(claimed_at, settings.lease / 3);
    let (wake, spawn) = {
        let mut q = lock(&settings.renewals.0);
        let sooner = q.push(at, settings.lease, Arc::downgrade(&entry));
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

/// The layer's watching task: sleeps until the soonest tick is due, and gives each key of it
/// still held then a renewal task of its own. Holds no strong reference to the layer between
/// wakes, and ends when the layer is dropped.
async fn watch<St: Store>(settings: Weak<Settings<St>>) {
    let _alive = Alive(settings.clone());
    let mut sleep = pin!(tokio::time::sleep(Duration::ZERO));
    let mut until: Option<Instant> = None;
    poll_fn(|cx| {
        loop {
            let Some(st) = settings.upgrade() else {
                return Poll::Ready(());
            };
            let now = Instant::now();
            let due = {
                let mut q = lock(&st.renewals.0);
                match q.ticks.front() {
                    Some(t) if t.at <= now => q.ticks.pop_front(),
                    next => {
                        let next = next.map(|t| t.at);
                        if !q.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                            q.waker = Some(cx.waker().clone());
                        }
                        drop(q);
                        let Some(next) = next else {
                            until = None;
                            return Poll::Pending;
                        };
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
            };
            // Outside the lock the workers share: most keys ended long ago, and dropping
            // their slots frees memory that is cold by now.
            let Some(mut due) = due else { continue };
            for key in due.keys.drain(..) {
                if let Some(entry) = key.upgrade() {
                    start(&st, entry);
                }
            }
            let mut q = lock(&st.renewals.0);
            if q.spare.len() < SPARE && due.keys.capacity() <= SPARE_KEYS {
                q.spare.push(due.keys);
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
            &st.meters,
            Op::Renew,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys go to the tick their first renewal falls in, in order, even out of order or before
    /// the first key: never due early, late by less than a tick.
    #[test]
    fn keys_wait_in_the_tick_of_their_first_renewal() {
        let base = Instant::now();
        let ms = |n: u64| later(base, Duration::from_millis(n));
        let lease = Duration::from_secs(10); // ticks of 50 ms
        let mut q = Waiting::default();
        let mut soonest = Vec::new();
        for at in [ms(0), ms(10), ms(49), ms(50), ms(120), ms(30)] {
            soonest.push(q.push(at, lease, Weak::new()));
        }
        let early = base.checked_sub(Duration::from_millis(5)).unwrap_or(base);
        soonest.push(q.push(early, lease, Weak::new()));
        soonest.push(q.push(ms(60), lease, Weak::new()));
        // Exactly a tick before the last one: in the tick before it, not late by a whole tick.
        soonest.push(q.push(ms(100), lease, Weak::new()));
        assert_eq!(
            soonest,
            [true, false, false, false, false, false, false, false, false]
        );
        let ticks: Vec<_> = q
            .ticks
            .iter()
            .map(|t| (t.number, t.at, t.keys.len()))
            .collect();
        assert_eq!(
            ticks,
            [
                (0, ms(0), 2),
                (1, ms(50), 4),
                (2, ms(100), 2),
                (3, ms(150), 1)
            ]
        );
        // Once the first tick is taken, a key due in it again is the soonest.
        q.ticks.pop_front();
        assert!(q.push(ms(0), lease, Weak::new()));
        assert_eq!(q.ticks.front().map(|t| (t.number, t.at)), Some((0, ms(0))));
    }
}
