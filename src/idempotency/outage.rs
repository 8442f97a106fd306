//! What the layer's background store calls (renewals, completion retries, releases of lost
//! claims) share so that a struggling store is not hammered: one backoff for all of them, and a
//! bound on the releases running at once. Per layer (one layer, one store).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed},
    },
    time::Duration,
};

use tokio::time::Instant;

/// Background releases of lost claims running at once, per layer; more are shed (their lease
/// frees the key). Each retries for up to a lease, so during an outage at 500 requests per
/// second this is what stops thousands of them from piling up.
pub(crate) const MAX_BACKGROUND_RELEASES: usize = 64;

/// Background store calls that failed in a row (any kind, any key), and releases running.
#[derive(Debug, Default)]
pub(crate) struct Outage {
    failures: AtomicU32,
    releases: AtomicUsize,
}

impl Outage {
    /// A background call failed: everyone's next pause grows.
    pub(crate) fn failed(&self) {
        let n = self.failures.load(Relaxed);
        // Past 2^16 the backoff is at its cap anyway: stop counting (no overflow).
        if n < 1 << 16 {
            self.failures.store(n + 1, Relaxed);
        }
    }

    /// A background call was answered: the store is back.
    pub(crate) fn answered(&self) {
        if self.failures.load(Relaxed) != 0 {
            self.failures.store(0, Relaxed);
        }
    }

    /// The pause before a background call retries after a failure: at least `own` (the
    /// caller's own backoff), doubled for every failure of any background call since the store
    /// last answered, at most `cap`; half of it fixed and half random, so that the callers
    /// that failed together do not retry together.
    pub(crate) fn pause(&self, own: Duration, cap: Duration) -> Duration {
        let n = self.failures.load(Relaxed).min(16);
        let shared = own.saturating_mul(1 << n);
        let d = own.max(shared).min(cap.max(own));
        let half = d / 2;
        half + half.mul_f64(fastrand::f64())
    }

    /// A place for one more background release, or `None` when as many as allowed run.
    pub(crate) fn release_slot<T: AsRef<Outage>>(owner: &Arc<T>) -> Option<ReleaseSlot<T>> {
        let releases = &AsRef::<Outage>::as_ref(&**owner).releases;
        let taken = releases.fetch_add(1, Relaxed);
        if taken >= MAX_BACKGROUND_RELEASES {
            releases.fetch_sub(1, Relaxed);
            return None;
        }
        Some(ReleaseSlot(owner.clone()))
    }
}

/// One running background release; gives its place back when dropped.
pub(crate) struct ReleaseSlot<T: AsRef<Outage>>(Arc<T>);

impl<T: AsRef<Outage>> ReleaseSlot<T> {
    /// What the release runs with.
    pub(crate) fn owner(&self) -> &Arc<T> {
        &self.0
    }
}

impl<T: AsRef<Outage>> Drop for ReleaseSlot<T> {
    fn drop(&mut self) {
        AsRef::<Outage>::as_ref(&*self.0)
            .releases
            .fetch_sub(1, Relaxed);
    }
}

/// `at + d`, saturating: a deadline that cannot be written is as far as the clock goes (never
/// a panic, whatever a setting says).
pub(crate) fn later(at: Instant, d: Duration) -> Instant {
    let mut d = d;
    loop {
        if let Some(t) = at.checked_add(d) {
            return t;
        }
        d /= 2;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn pauses_grow_with_failures_up_to_the_cap_with_jitter() {
        let o = Outage::default();
        let (own, cap) = (Duration::from_millis(100), Duration::from_secs(2));
        let p = o.pause(own, cap);
        assert!(p >= own / 2 && p <= own, "{p:?}");
        for _ in 0..3 {
            o.failed();
        }
        let p = o.pause(own, cap);
        assert!(p >= own * 4 && p <= own * 8, "{p:?}");
        for _ in 0..100_000 {
            o.failed();
        }
        let p = o.pause(own, cap);
        assert!(p >= cap / 2 && p <= cap, "{p:?}");
        o.answered();
        assert!(o.pause(own, cap) <= own);
    }

    #[test]
    fn releases_are_bounded() {
        struct Owner(Outage);
        impl AsRef<Outage> for Owner {
            fn as_ref(&self) -> &Outage {
                &self.0
            }
        }
        let owner = Arc::new(Owner(Outage::default()));
        let slots: Vec<_> = (0..MAX_BACKGROUND_RELEASES)
            .map(|_| Outage::release_slot(&owner).expect("a slot"))
            .collect();
        assert!(Outage::release_slot(&owner).is_none());
        drop(slots);
        assert!(Outage::release_slot(&owner).is_some());
    }

    #[test]
    fn deadlines_saturate() {
        let now = Instant::now();
        assert!(later(now, Duration::MAX) > now);
        assert_eq!(
            later(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
    }
}
