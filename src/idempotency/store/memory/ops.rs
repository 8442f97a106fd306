//! Claim and complete: each tries under its key's shard lock, and when the store is full
//! makes room with no lock held, then tries once more.

use std::{
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Duration,
};

use tokio::time::Instant;

use super::{
    BODY_BYTES, Claim, HEADER_BYTES, MemoryStore, OwnerToken, RECORD_OVERHEAD, Record, Shard,
    State, StoreError, StoreErrorKind, lock,
};
use crate::idempotency::{Completion, Fingerprint};

pub(super) fn completion_size(c: &Completion) -> usize {
    match c {
        Completion::NotReplayable { .. } | Completion::OutcomeUnknown { .. } => 0,
        Completion::Response(r) => {
            let headers = |h: &http::HeaderMap| {
                h.iter()
                    .map(|(n, v)| n.as_str().len() + v.len() + HEADER_BYTES)
                    .sum::<usize>()
            };
            let body = if r.body.is_empty() {
                0
            } else {
                r.body.len() + BODY_BYTES
            };
            body + headers(&r.headers) + r.trailers.as_ref().map_or(0, headers)
        }
    }
}

/// `now + d`, or a year from now for a duration too long to add (a store called directly,
/// bypassing the layer's bounds, must not panic).
pub(super) fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .unwrap_or_else(|| now + crate::MAX_DURATION)
}

/// What `complete` did with the shard's lock held.
enum Completing {
    Done(bool),
    /// Stored as "ran, not replayable": no room for the response (logged once the lock is
    /// released).
    Degraded(bool),
    /// The response needs `n` more bytes than the room left.
    NeedsRoom(usize),
}

impl MemoryStore {
    /// With the key's shard locked: the answer for a taken key, or the key claimed if there is
    /// room, or `None` when there is none.
    #[allow(clippy::too_many_arguments)]
    fn try_claim(
        &self,
        (hash, i): (u64, usize),
        shard: &mut Shard,
        key: &str,
        fingerprint: &Fingerprint,
        token: OwnerToken,
        lease: Duration,
        now: Instant,
    ) -> Option<Claim> {
        if let Some(record) = shard.map.get(hash, key) {
            if let Some(answer) = record.answer(fingerprint, now) {
                return Some(answer);
            }
            // The key is free; a record whose time is over gives its room back.
            if let Some(old) = shard.map.remove(hash, key) {
                self.free(old.size);
            }
        }
        // Amortised sweeping: a shard is scanned once per as many inserts as it holds.
        shard.inserts_since_sweep += 1;
        if shard.inserts_since_sweep > shard.map.len().max(64) {
            self.sweep(i, shard, now, None);
        }
        let until = after(now, lease);
        let size = RECORD_OVERHEAD + key.len();
        if !self.reserve(size) {
            return None;
        }
        let record = Record {
            fingerprint: *fingerprint,
            state: State::InFlight { token, until },
            size,
        };
        shard.map.insert(hash, key.into(), record);
        Some(Claim::New)
    }

    pub(super) fn claim_now(
        &self,
        key: &str,
        fingerprint: &Fingerprint,
        token: OwnerToken,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let now = Instant::now();
        let (hash, i) = self.locate(key);
        {
            let mut shard = lock(&self.inner.shards[i]);
            if let Some(answer) =
                self.try_claim((hash, i), &mut shard, key, fingerprint, token, lease, now)
            {
                return Ok(answer);
            }
        }
        // Full. With no shard locked (eviction takes each shard's lock in turn): drop completed
        // records past the floor, or failing that sweep the records whose time is over
        // everywhere, and try again (the key may have been claimed meanwhile: the second try
        // answers that too).
        if !self.make_room(RECORD_OVERHEAD + key.len(), now) {
            self.sweep_all(now, None);
        }
        let mut shard = lock(&self.inner.shards[i]);
        if let Some(answer) =
            self.try_claim((hash, i), &mut shard, key, fingerprint, token, lease, now)
        {
            return Ok(answer);
        }
        drop(shard);
        Err(self.full(now))
    }

    /// The refusal of a new key, saying when room frees up.
    fn full(&self, now: Instant) -> StoreError {
        #[cfg(feature = "metrics")]
        {
            crate::idempotency::instrument::describe();
            metrics::counter!(crate::idempotency::metric_names::STORE_FULL).increment(1);
        }
        let wait = self.room_frees_in(now);
        #[cfg(feature = "tracing")]
        tracing::warn!(
            max_bytes = self.inner.max_bytes,
            retention_floor = ?self.inner.floor,
            retry_after = ?wait,
            "idempotency memory store full of in-flight records and records younger than the retention floor: new key refused"
        );
        StoreError::with_kind(
            StoreErrorKind::Full,
            format!(
                "the memory store is full ({} bytes of in-flight records and records younger than the {} s retention floor): no room for a new key",
                self.inner.max_bytes,
                self.inner.floor.as_secs()
            ),
        )
        .with_retry_after(wait)
    }

    pub(super) fn complete_now(
        &self,
        key: &str,
        fingerprint: &Fingerprint,
        token: OwnerToken,
        completion: &Arc<Completion>,
        ttl: Duration,
    ) -> bool {
        let (hash, i) = self.locate(key);
        let needs = {
            let mut shard = lock(&self.inner.shards[i]);
            match self.try_complete(
                (hash, i),
                &mut shard,
                key,
                fingerprint,
                token,
                completion,
                ttl,
                false,
            ) {
                Completing::Done(stored) | Completing::Degraded(stored) => return stored,
                Completing::NeedsRoom(n) => n,
            }
        };
        // Room for the response is worth dropping records past the floor; failing that, the
        // key is kept as "ran, not replayable".
        let now = Instant::now();
        if !self.make_room(needs, now) {
            self.sweep_all(now, Some(hash));
        }
        let mut shard = lock(&self.inner.shards[i]);
        match self.try_complete(
            (hash, i),
            &mut shard,
            key,
            fingerprint,
            token,
            completion,
            ttl,
            true,
        ) {
            Completing::Done(stored) => stored,
            Completing::Degraded(stored) => {
                drop(shard);
                #[cfg(feature = "tracing")]
                tracing::warn!(
                    key = %crate::idempotency::redact::ShownKey::redacted(key),
                    "idempotency memory store full: response kept as not replayable"
                );
                stored
            }
            Completing::NeedsRoom(_) => unreachable!("a completion that may degrade always fits"),
        }
    }

    /// `complete` with the key's shard locked. Unless `degrade`, a response that does not fit
    /// is left to the caller to make room for.
    #[allow(clippy::too_many_arguments)]
    fn try_complete(
        &self,
        (hash, i): (u64, usize),
        shard: &mut Shard,
        key: &str,
        fingerprint: &Fingerprint,
        token: OwnerToken,
        completion: &Arc<Completion>,
        ttl: Duration,
        degrade: bool,
    ) -> Completing {
        let claimed = match shard.map.get_mut(hash, key) {
            // The claim's own record becomes the completion, under the same key allocation.
            Some((key, r)) => match &r.state {
                State::InFlight { token: t, .. } if *t == token => Some((r, key.clone())),
                State::Done { token: t, .. } => return Completing::Done(*t == token),
                State::InFlight { .. } => return Completing::Done(false),
            },
            // The lease lapsed and was swept, and nobody claimed the key since.
            None => None,
        };
        let held = claimed.as_ref().map_or(0, |(r, _)| r.size);
        let base = RECORD_OVERHEAD + key.len();
        let full = base + completion_size(completion);
        let mut degraded = false;
        let (completion, size) = if full <= held || self.reserve(full - held) {
            (Arc::clone(completion), full.max(held))
        } else if !degrade {
            return Completing::NeedsRoom(full - held);
        } else {
            // No room for the body: keep the fact that it ran, which always fits the
            // claim's reservation (or a record's worth over the bound, once).
            degraded = true;
            let kept = match &**completion {
                Completion::Response(r) => Arc::new(Completion::NotReplayable { status: r.status }),
                // Bodiless already: kept as they are.
                _ => Arc::clone(completion),
            };
            if held < base {
                self.inner.bytes.fetch_add(base - held, Relaxed);
            }
            (kept, base.max(held))
        };
        // The clock is read under the lock, so completion times never go back in a shard.
        let now = Instant::now();
        let state = State::Done {
            completion,
            token,
            until: after(now, ttl),
        };
        let record = Record {
            fingerprint: *fingerprint,
            state,
            size,
        };
        let key = match claimed {
            Some((r, k)) => {
                *r = record;
                k
            }
            None => {
                let k: Arc<str> = Arc::from(key);
                shard.map.insert(hash, k.clone(), record);
                k
            }
        };
        self.push_done(i, shard, hash, key, now);
        if degraded {
            Completing::Degraded(true)
        } else {
            Completing::Done(true)
        }
    }
}
