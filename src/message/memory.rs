//! An in-process message broker: a real queue for examples and tests, with a broker's
//! settlement rules (as [`MemoryStore`](crate::idempotency::MemoryStore) is a real store for
//! keys).
//!
//! - [`channel`] makes a queue: a [`Publisher`] and a first [`MemorySource`] (more competing
//!   consumers with [`Publisher::subscribe`]).
//! - `ack` removes a delivery; `redeliver(delay)` queues it again after `delay`, counting one
//!   more delivery; `reject` moves it to the rejected list ([`Publisher::rejected`]), the
//!   broker's own dead letters.
//! - A delivery left unsettled when its source is dropped goes back to the queue, counting one
//!   more delivery (a broker does so when a consumer's channel dies); its acker then fails.
//! - After [`Publisher::close`], a source answers `None` once nothing is queued, delayed or
//!   unsettled.
//!
//! ```
//! use std::time::Duration;
//! use tower_rampart::message::{Acker, Message, Source, memory};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let (publisher, mut source) = memory::channel(16);
//! publisher.publish(Message::new("m1", "order.placed", "{}")).await;
//! let delivery = source.next().await.unwrap().unwrap();
//! delivery.acker.redeliver(Duration::ZERO).await.unwrap();
//! let again = source.next().await.unwrap().unwrap();
//! assert_eq!(again.message.deliveries(), 2);
//! again.acker.ack().await.unwrap();
//! assert_eq!(publisher.stats().acked, 1);
//! # }
//! ```

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use tokio::{sync::Notify, time::Instant};

use super::{Acker, Delivery, Message, Source, SourceError};

/// Makes a queue holding at most `capacity` messages waiting for a consumer (0 is read as 1):
/// [`Publisher::publish`] waits for room beyond that. Redeliveries never wait.
///
/// ```
/// use tower_rampart::message::memory;
///
/// let (publisher, source) = memory::channel(100);
/// # let _ = (publisher, source);
/// ```
pub fn channel(capacity: usize) -> (Publisher, MemorySource) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        capacity: capacity.max(1),
        changed: Notify::new(),
    });
    let publisher = Publisher {
        shared: shared.clone(),
    };
    let source = publisher.subscribe();
    (publisher, source)
}

struct Shared {
    state: Mutex<State>,
    capacity: usize,
    /// Woken on every change: a message queued, settled, or the queue closed.
    changed: Notify,
}

#[derive(Default)]
struct State {
    ready: VecDeque<Message>,
    /// Redelivered messages, by when they are due (and a sequence number to keep order).
    delayed: BTreeMap<(Instant, u64), Message>,
    /// Delivered, not settled: tag -> (the source it went to, the message).
    unacked: HashMap<u64, (u64, Message)>,
    rejected: Vec<Message>,
    acked: u64,
    redelivered: u64,
    published: u64,
    next_tag: u64,
    next_source: u64,
    closed: bool,
}

impl State {
    fn promote_due(&mut self, now: Instant) {
        while let Some(entry) = self.delayed.first_entry() {
            if entry.key().0 > now {
                break;
            }
            self.ready.push_back(entry.remove());
        }
    }

    fn again(&mut self, message: Message, at: Instant) {
        let n = message.deliveries().saturating_add(1);
        let seq = self.next_tag;
        self.next_tag = self.next_tag.wrapping_add(1);
        self.redelivered += 1;
        self.delayed.insert((at, seq), message.with_deliveries(n));
    }

    fn settled(&self) -> bool {
        self.ready.is_empty() && self.delayed.is_empty() && self.unacked.is_empty()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere cannot leave the queue half-changed: every change is one statement.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Publishes to an in-process queue and reads what happened to its messages. Cheap to clone.
///
/// ```
/// use tower_rampart::message::{memory, Message};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let (publisher, _source) = memory::channel(8);
/// publisher.publish(Message::new("m1", "k", "")).await;
/// publisher.close();
/// assert!(publisher.rejected().is_empty());
/// # }
/// ```
#[derive(Clone)]
pub struct Publisher {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("stats", &self.stats())
            .finish()
    }
}

/// Counts of an in-process queue (see [`Publisher::stats`]).
///
/// ```
/// use tower_rampart::message::memory;
///
/// let (publisher, _source) = memory::channel(8);
/// let stats = publisher.stats();
/// assert_eq!((stats.published, stats.queued, stats.unacked), (0, 0, 0));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct QueueStats {
    /// Messages published.
    pub published: u64,
    /// Deliveries acked.
    pub acked: u64,
    /// Deliveries queued again (redeliver, or left unsettled by a dropped source).
    pub redelivered: u64,
    /// Deliveries rejected (in [`Publisher::rejected`]).
    pub rejected: usize,
    /// Messages waiting for a consumer now, delayed ones included.
    pub queued: usize,
    /// Deliveries handed out and not settled yet.
    pub unacked: usize,
}

impl Publisher {
    /// Queues `message`, waiting while `capacity` messages are already waiting.
    ///
    /// ```
    /// use tower_rampart::message::{Message, memory};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let (publisher, _source) = memory::channel(1);
    /// publisher.publish(Message::new("m1", "k", "")).await;
    /// assert_eq!(publisher.stats().queued, 1);
    /// # }
    /// ```
    pub async fn publish(&self, message: Message) {
        loop {
            let changed = self.shared.changed.notified();
            {
                let mut st = self.shared.lock();
                if st.ready.len() < self.shared.capacity {
                    st.ready.push_back(message);
                    st.published += 1;
                    drop(st);
                    self.shared.changed.notify_waiters();
                    return;
                }
            }
            changed.await;
        }
    }

    /// Another consumer of the same queue: messages go to one consumer or the other.
    pub fn subscribe(&self) -> MemorySource {
        let id = {
            let mut st = self.shared.lock();
            st.next_source += 1;
            st.next_source
        };
        MemorySource {
            shared: self.shared.clone(),
            id,
        }
    }

    /// No more messages will be published: sources answer `None` once everything is settled.
    pub fn close(&self) {
        self.shared.lock().closed = true;
        self.shared.changed.notify_waiters();
    }

    /// The messages rejected so far, as last delivered.
    pub fn rejected(&self) -> Vec<Message> {
        self.shared.lock().rejected.clone()
    }

    /// Counts, now.
    pub fn stats(&self) -> QueueStats {
        let st = self.shared.lock();
        QueueStats {
            published: st.published,
            acked: st.acked,
            redelivered: st.redelivered,
            rejected: st.rejected.len(),
            queued: st.ready.len() + st.delayed.len(),
            unacked: st.unacked.len(),
        }
    }

    /// Resolves once nothing is queued, delayed or unsettled.
    pub async fn settled(&self) {
        loop {
            let changed = self.shared.changed.notified();
            if self.shared.lock().settled() {
                return;
            }
            changed.await;
        }
    }
}

/// A consumer of an in-process queue ([`channel`]). Dropping it queues its unsettled
/// deliveries again.
///
/// ```
/// use tower_rampart::message::{memory, Acker, Message, Source};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let (publisher, mut source) = memory::channel(8);
/// publisher.publish(Message::new("m1", "k", "")).await;
/// let unsettled = source.next().await.unwrap().unwrap();
/// drop(source); // the consumer dies before settling
/// let mut other = publisher.subscribe();
/// let again = other.next().await.unwrap().unwrap();
/// assert_eq!(again.message.deliveries(), 2);
/// assert!(unsettled.acker.ack().await.is_err());
/// # }
/// ```
pub struct MemorySource {
    shared: Arc<Shared>,
    id: u64,
}

impl std::fmt::Debug for MemorySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemorySource")
            .field("id", &self.id)
            .finish()
    }
}

impl MemorySource {
    /// The next delivery, or `None` when the queue is closed and settled.
    async fn pull(&mut self) -> Option<Delivery<MemoryAcker>> {
        loop {
            let changed = self.shared.changed.notified();
            let due = {
                let mut st = self.shared.lock();
                st.promote_due(Instant::now());
                if let Some(message) = st.ready.pop_front() {
                    let tag = st.next_tag;
                    st.next_tag = st.next_tag.wrapping_add(1);
                    st.unacked.insert(tag, (self.id, message.clone()));
                    drop(st);
                    // Room for a waiting publisher.
                    self.shared.changed.notify_waiters();
                    let acker = MemoryAcker {
                        shared: self.shared.clone(),
                        tag,
                    };
                    return Some(Delivery::new(message, acker));
                }
                if st.closed && st.settled() {
                    return None;
                }
                st.delayed.first_key_value().map(|((at, _), _)| *at)
            };
            match due {
                Some(at) => {
                    tokio::select! {
                        _ = changed => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => changed.await,
            }
        }
    }
}

impl Source for MemorySource {
    type Acker = MemoryAcker;

    async fn next(&mut self) -> Option<Result<Delivery<MemoryAcker>, SourceError>> {
        self.pull().await.map(Ok)
    }
}

impl Drop for MemorySource {
    fn drop(&mut self) {
        let now = Instant::now();
        let mut st = self.shared.lock();
        let mine: Vec<u64> = st
            .unacked
            .iter()
            .filter(|(_, (source, _))| *source == self.id)
            .map(|(tag, _)| *tag)
            .collect();
        for tag in mine {
            if let Some((_, message)) = st.unacked.remove(&tag) {
                st.again(message, now);
            }
        }
        drop(st);
        self.shared.changed.notify_waiters();
    }
}

/// Settles one delivery of a [`MemorySource`]. Fails once its source was dropped (the
/// delivery went back to the queue).
///
/// ```
/// use tower_rampart::message::{memory, Acker, Message, Source};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let (publisher, mut source) = memory::channel(8);
/// publisher.publish(Message::new("m1", "k", "")).await;
/// let delivery = source.next().await.unwrap().unwrap();
/// delivery.acker.reject().await.unwrap();
/// assert_eq!(publisher.rejected()[0].id(), "m1");
/// # }
/// ```
pub struct MemoryAcker {
    shared: Arc<Shared>,
    tag: u64,
}

impl std::fmt::Debug for MemoryAcker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryAcker")
            .field("tag", &self.tag)
            .finish()
    }
}

impl MemoryAcker {
    fn settle(self, how: impl FnOnce(&mut State, Message)) -> Result<(), SourceError> {
        let mut st = self.shared.lock();
        let Some((_, message)) = st.unacked.remove(&self.tag) else {
            return Err(SourceError::new(
                "delivery no longer held: its source was dropped",
            ));
        };
        how(&mut st, message);
        drop(st);
        self.shared.changed.notify_waiters();
        Ok(())
    }
}

impl Acker for MemoryAcker {
    fn ack(self) -> impl Future<Output = Result<(), SourceError>> + Send {
        std::future::ready(self.settle(|st, _| st.acked += 1))
    }

    fn redeliver(self, delay: Duration) -> impl Future<Output = Result<(), SourceError>> + Send {
        let now = Instant::now();
        // A delay too long for the clock is as good as a year.
        let at = now
            .checked_add(delay)
            .unwrap_or_else(|| now + crate::MAX_DURATION);
        std::future::ready(self.settle(|st, m| st.again(m, at)))
    }

    fn reject(self) -> impl Future<Output = Result<(), SourceError>> + Send {
        std::future::ready(self.settle(|st, m| st.rejected.push(m)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn settles_like_a_broker() {
        let (p, mut s) = channel(4);
        p.publish(Message::new("a", "k", "")).await;
        p.publish(Message::new("b", "k", "")).await;
        let a = s.next().await.unwrap().unwrap();
        let b = s.next().await.unwrap().unwrap();
        a.acker.redeliver(Duration::from_secs(3)).await.unwrap();
        b.acker.reject().await.unwrap();
        let start = Instant::now();
        let a2 = s.next().await.unwrap().unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        assert_eq!((a2.message.id(), a2.message.deliveries()), ("a", 2));
        assert_eq!(p.rejected()[0].id(), "b");
        // The source dies: its delivery goes back, and its acker fails.
        drop(s);
        assert!(a2.acker.ack().await.is_err());
        let mut s2 = p.subscribe();
        let a3 = s2.next().await.unwrap().unwrap();
        assert_eq!(a3.message.deliveries(), 3);
        a3.acker.ack().await.unwrap();
        p.close();
        assert!(s2.next().await.is_none());
        let st = p.stats();
        assert_eq!((st.published, st.acked, st.rejected), (2, 1, 1));
    }
}
