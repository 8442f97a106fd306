//! Making room: sweeping records whose time is over, and dropping completed records past the
//! retention floor, oldest first across every shard; and saying when room frees up.

use std::{
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Duration,
};

use tokio::time::Instant;

use super::{MemoryStore, Record, SHARDS, Shard, State, lock, map::Map};

/// A shard head that holds no completion.
pub(super) const EMPTY: u64 = u64::MAX;

/// How often, at most, a full store scans every shard for expired records.
const FULL_SWEEP_EVERY: Duration = Duration::from_millis(100);

/// The bounds of the `Retry-After` a full store gives: a zero would invite a retry storm, and
/// a client told to wait for hours has given up long before.
const MIN_RETRY_AFTER: Duration = Duration::from_secs(1);
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// A completed record's place in its shard's completion order.
pub(super) struct Completed {
    pub(super) at: Instant,
    /// The key's hash: finding its record hashes nothing.
    pub(super) hash: u64,
    pub(super) key: Arc<str>,
}

/// The last scan of every shard, made when the store was full.
#[derive(Default)]
pub(super) struct FullScan {
    last: Option<Instant>,
    /// The soonest end of a lease or TTL it saw.
    next_end: Option<Instant>,
}

/// The record `entry` names, if it is still there: the map holds the very same key
/// allocation (a key claimed anew after expiry has another one), completed.
fn current<'a>(map: &'a Map, entry: &Completed) -> Option<&'a Record> {
    map.get_key_value(entry.hash, &entry.key)
        .filter(|(k, r)| Arc::ptr_eq(k, &entry.key) && matches!(r.state, State::Done { .. }))
        .map(|(_, r)| r)
}

impl MemoryStore {
    fn nanos(&self, at: Instant) -> u64 {
        let d = at.saturating_duration_since(self.inner.epoch);
        u64::try_from(d.as_nanos()).map_or(EMPTY - 1, |n| n.min(EMPTY - 1))
    }

    fn set_head(&self, i: usize, shard: &Shard) {
        let head = shard.done.front().map_or(EMPTY, |c| self.nanos(c.at));
        self.inner.heads[i].store(head, Relaxed);
    }

    /// Puts a completion at the end of shard `i`'s order (its lock held).
    pub(super) fn push_done(
        &self,
        i: usize,
        shard: &mut Shard,
        hash: u64,
        key: Arc<str>,
        now: Instant,
    ) {
        // Never before the last one, whatever two threads' clock reads did.
        let at = shard.done.back().map_or(now, |last| last.at.max(now));
        let was_empty = shard.done.is_empty();
        shard.done.push_back(Completed { at, hash, key });
        if was_empty {
            self.set_head(i, shard);
        }
    }

    /// Drops the records of shard `i` whose time is over, and the completion order's entries
    /// for records that are gone; the soonest end among the records kept, but for the record of
    /// the key hashed `completing` (being completed: its lease's end frees nothing).
    pub(super) fn sweep(
        &self,
        i: usize,
        shard: &mut Shard,
        now: Instant,
        completing: Option<u64>,
    ) -> Option<Instant> {
        let (mut freed, mut next) = (0, None::<Instant>);
        shard.map.retain(|hash, r| {
            let until = r.until();
            if until > now {
                if completing != Some(hash) {
                    next = Some(next.map_or(until, |n| n.min(until)));
                }
                true
            } else {
                freed += r.size;
                false
            }
        });
        let Shard { map, done, .. } = shard;
        done.retain(|c| current(map, c).is_some());
        shard.inserts_since_sweep = 0;
        self.free(freed);
        self.set_head(i, shard);
        next
    }

    /// Sweeps every shard (one lock at a time, none held by the caller), at most once per
    /// [`FULL_SWEEP_EVERY`], so a store full of live records does not rescan itself on every
    /// refused claim.
    pub(super) fn sweep_all(&self, now: Instant, completing: Option<u64>) {
        {
            let mut scan = lock(&self.inner.full_scan);
            if scan.last.is_some_and(|t| now < t + FULL_SWEEP_EVERY) {
                return;
            }
            scan.last = Some(now);
        }
        let mut next = None::<Instant>;
        for (i, s) in self.inner.shards.iter().enumerate() {
            if let Some(end) = self.sweep(i, &mut lock(s), now, completing) {
                next = Some(next.map_or(end, |n| n.min(end)));
            }
        }
        lock(&self.inner.full_scan).next_end = next;
    }

    /// Drops completed records older than the floor, oldest first across the shards, until
    /// `need` bytes fit (and a little more, so a store at its bound does not come here for
    /// every new key). Never drops an in-flight record or one younger than the floor. Takes
    /// each shard's lock in turn: the caller must hold none. Whether `need` fits now.
    pub(super) fn make_room(&self, need: usize, now: Instant) -> bool {
        let max = self.inner.max_bytes;
        if need > max {
            // Never fits: dropping records for it would only lose them.
            return false;
        }
        let fits = |extra: usize| {
            self.bytes()
                .checked_add(need.saturating_add(extra))
                .is_some_and(|t| t <= max)
        };
        let slack = (max / 1024).min(64 << 10);
        // Completions at or before `cutoff` are past the floor.
        let cutoff = now
            .checked_sub(self.inner.floor)
            .filter(|c| *c >= self.inner.epoch)
            .map(|c| self.nanos(c));
        let (mut evicted, mut idle) = (0u64, 0);
        while !fits(slack) && idle <= SHARDS {
            // The shard holding the oldest completion, and the oldest of the others.
            let (mut best, mut oldest, mut second) = (0, EMPTY, EMPTY);
            for (i, head) in self.inner.heads.iter().enumerate() {
                let t = head.load(Relaxed);
                if t < oldest {
                    (best, oldest, second) = (i, t, oldest);
                } else if t < second {
                    second = t;
                }
            }
            if oldest == EMPTY {
                break;
            }
            let mut guard = lock(&self.inner.shards[best]);
            let shard = &mut *guard;
            let mut popped = 0;
            let mut too_young = false;
            while !fits(slack) {
                let Some(front) = shard.done.front() else {
                    break;
                };
                let at = self.nanos(front.at);
                let remove = match current(&shard.map, front).map(Record::until) {
                    // Gone already (expired and swept, or its key claimed anew): only its
                    // place goes, never a newer record under the same key.
                    None => false,
                    // Over: its room was free anyway.
                    Some(until) if until <= now => true,
                    Some(_) if at > second => break,
                    Some(_) if cutoff.is_none_or(|c| at > c) => {
                        // The oldest completion of the store is younger than the floor.
                        too_young = true;
                        break;
                    }
                    Some(_) => {
                        evicted += 1;
                        true
                    }
                };
                let popped_entry = shard.done.pop_front();
                if let Some(c) = popped_entry.filter(|_| remove)
                    && let Some(r) = shard.map.remove(c.hash, &c.key)
                {
                    self.free(r.size);
                }
                popped += 1;
            }
            self.set_head(best, shard);
            drop(guard);
            if too_young {
                break;
            }
            idle = if popped == 0 { idle + 1 } else { 0 };
        }
        if evicted > 0 {
            self.inner.evicted.fetch_add(evicted, Relaxed);
            #[cfg(feature = "metrics")]
            {
                crate::idempotency::instrument::describe();
                metrics::counter!(crate::idempotency::metric_names::STORE_EVICTED)
                    .increment(evicted);
            }
        }
        fits(0)
    }

    /// When room frees up, as far as the store knows: the oldest completion passes the floor,
    /// or the soonest lease or TTL seen by the last full scan ends; within 1 s and 1 h.
    pub(super) fn room_frees_in(&self, now: Instant) -> Duration {
        let oldest = self.inner.heads.iter().map(|h| h.load(Relaxed)).min();
        let past_floor = oldest
            .filter(|t| *t != EMPTY)
            .and_then(|t| self.inner.epoch.checked_add(Duration::from_nanos(t)))
            .and_then(|at| at.checked_add(self.inner.floor));
        let next_end = lock(&self.inner.full_scan).next_end.filter(|t| *t > now);
        let soonest = match (past_floor, next_end) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        soonest
            .map_or(MIN_RETRY_AFTER, |t| t.saturating_duration_since(now))
            .clamp(MIN_RETRY_AFTER, MAX_RETRY_AFTER)
    }
}
