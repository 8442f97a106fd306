//! Shared metrics machinery for every layer: knowing whether a recorder listens, metric handles
//! bound at first use once one does, and help text sent with them.
//!
//! Handles made with `metrics::counter!` bind to the recorder in scope when they are made, for
//! ever: a layer built before the application installs its exporter would count into the no-op
//! recorder, silently. A [`Lazy`] group of handles binds at construction when a recorder exists,
//! or later at a use that finds one, and describes its metrics ([`Help`]) to that recorder at
//! the same moment, so that a scrape carries `# HELP` lines.
//!
//! Cost once bound: one atomic load per use. While no recorder is installed, asking `metrics`
//! for one on every use would cost about as much as a layer's whole call, so a group asks on
//! one unbound use in [`POLL_EVERY`] (a countdown: a relaxed load and store next to the
//! binding). The usual order (install the exporter, then serve) loses nothing: handles bind
//! when the layer is built; a layer used before the exporter is installed binds within
//! [`POLL_EVERY`] uses after it is (the updates of those uses are lost).

#[cfg(feature = "metrics")]
pub(crate) use imp::*;

#[cfg(feature = "metrics")]
mod imp {
    use std::sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering::Relaxed},
    };

    /// Unbound uses per thread between two looks for a recorder while none is installed.
    pub(crate) const POLL_EVERY: u32 = 64;

    /// The kind of a described metric.
    #[derive(Clone, Copy, Debug)]
    pub(crate) enum Kind {
        Counter,
        Gauge,
        Histogram,
    }

    /// A metric's help text, sent to the recorder when the handles of its family bind.
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Help {
        pub(crate) name: &'static str,
        pub(crate) kind: Kind,
        pub(crate) unit: metrics::Unit,
        pub(crate) text: &'static str,
    }

    impl Help {
        /// A counter (unit: count).
        pub(crate) const fn counter(name: &'static str, text: &'static str) -> Self {
            Help {
                name,
                kind: Kind::Counter,
                unit: metrics::Unit::Count,
                text,
            }
        }

        /// A gauge (unit: count).
        pub(crate) const fn gauge(name: &'static str, text: &'static str) -> Self {
            Help {
                name,
                kind: Kind::Gauge,
                unit: metrics::Unit::Count,
                text,
            }
        }

        /// A histogram of durations in seconds.
        pub(crate) const fn seconds(name: &'static str, text: &'static str) -> Self {
            Help {
                name,
                kind: Kind::Histogram,
                unit: metrics::Unit::Seconds,
                text,
            }
        }
    }

    /// True when metrics would reach a recorder now: a local one in scope on this thread
    /// (`metrics::with_local_recorder`) or the global one. `metrics` 0.24 offers no direct
    /// question; the recorder it falls back to, `NoopRecorder`, is the only zero-sized one in
    /// practice (a recorder keeps its metrics somewhere), so a zero-sized recorder counts as
    /// none.
    #[inline(never)]
    pub(crate) fn recorder_installed() -> bool {
        metrics::with_recorder(|r| std::mem::size_of_val(r) != 0)
    }

    /// Sends `family`'s help text to the recorder in scope. Describing twice is harmless (the
    /// recorder keeps one text per name), so every binding describes its family.
    pub(crate) fn describe(family: &[Help]) {
        metrics::with_recorder(|r| {
            for h in family {
                let (name, unit, text) = (h.name.into(), Some(h.unit), h.text.into());
                match h.kind {
                    Kind::Counter => r.describe_counter(name, unit, text),
                    Kind::Gauge => r.describe_gauge(name, unit, text),
                    Kind::Histogram => r.describe_histogram(name, unit, text),
                }
            }
        });
    }

    /// A group of metric handles (`H`, a struct of `metrics::Counter`s...) bound at once when a
    /// recorder exists ([`bind_now`](Self::bind_now), in the constructor) or at a later use that
    /// finds one ([`get_or_bind`](Self::get_or_bind)).
    ///
    /// ```ignore
    /// const HELP: &[Help] = &[Help::counter("rampart_x_total", "Things counted.")];
    /// let lazy = Lazy::new();
    /// lazy.bind_now(HELP, make_handles); // in the constructor
    /// // On every use: `None` while no recorder exists (nothing to count into).
    /// if let Some(h) = lazy.get_or_bind(HELP, make_handles) {
    ///     h.calls.increment(1);
    /// }
    /// ```
    pub(crate) struct Lazy<H> {
        cell: OnceLock<H>,
        /// Unbound uses left before the next look for a recorder (see [`Lazy::poll_due`]).
        until_poll: AtomicU32,
    }

    impl<H> Default for Lazy<H> {
        fn default() -> Self {
            Self::new()
        }
    }

    impl<H> Lazy<H> {
        pub(crate) const fn new() -> Self {
            Lazy {
                cell: OnceLock::new(),
                until_poll: AtomicU32::new(0),
            }
        }

        /// Whether an unbound use should look for a recorder now; counts down otherwise. A
        /// relaxed load and store (not a read-modify-write: a lost count only moves the next
        /// look by one use).
        #[inline(always)]
        pub(crate) fn poll_due(&self) -> bool {
            let left = self.until_poll.load(Relaxed);
            self.until_poll.store(left.wrapping_sub(1), Relaxed);
            left == 0
        }

        /// Looks for a recorder after [`poll_due`](Self::poll_due) said so; when there is none,
        /// the next look is [`POLL_EVERY`] uses away.
        #[cold]
        pub(crate) fn look(&self) -> bool {
            let found = recorder_installed();
            self.until_poll
                .store(if found { 0 } else { POLL_EVERY - 1 }, Relaxed);
            found
        }

        /// The handles if bound, without trying to bind them.
        #[inline]
        pub(crate) fn get(&self) -> Option<&H> {
            self.cell.get()
        }

        /// The handles, bound now by `make` (after describing `family`) if they are not bound
        /// yet and a look for a recorder is due ([`poll_due`](Self::poll_due)) and finds one;
        /// `None` otherwise.
        #[inline]
        pub(crate) fn get_or_bind(&self, family: &[Help], make: impl FnOnce() -> H) -> Option<&H> {
            match self.cell.get() {
                Some(h) => Some(h),
                None if self.poll_due() && self.look() => self.bind_now(family, make),
                None => None,
            }
        }

        /// Binds with `make` when a recorder exists and nobody has yet, looking for one now
        /// whatever the countdown: for constructors, and for callers that serialise binding
        /// themselves (to set gauges from a state that must not change meanwhile).
        #[cold]
        #[inline(never)]
        pub(crate) fn bind_now(&self, family: &[Help], make: impl FnOnce() -> H) -> Option<&H> {
            if let Some(h) = self.cell.get() {
                return Some(h);
            }
            if !recorder_installed() {
                return None;
            }
            Some(self.cell.get_or_init(|| {
                describe(family);
                make()
            }))
        }
    }
}

/// The `breaker` label of a keyed breaker, carrying its key label's name and value for the
/// breaker's metrics to split out ([`split_keyed_label`]): `base␟label␟key`.
pub(crate) fn keyed_label(base: &str, label: &str, key: &str) -> std::sync::Arc<str> {
    std::sync::Arc::from(format!("{base}{SEP}{label}{SEP}{key}"))
}

/// ASCII unit separator: never in a breaker name written by hand.
const SEP: char = '\u{1f}';

/// `(breaker, Some((label name, key)))` for a label made by [`keyed_label`], `(label, None)`
/// for any other.
#[cfg(feature = "metrics")]
pub(crate) fn split_keyed_label(label: &str) -> (&str, Option<(&str, &str)>) {
    let mut parts = label.splitn(3, SEP);
    match (parts.next(), parts.next(), parts.next()) {
        (Some(base), Some(name), Some(key)) => (base, Some((name, key))),
        _ => (label, None),
    }
}

#[cfg(all(test, feature = "metrics"))]
mod tests {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    use super::*;

    #[test]
    fn binds_once_a_recorder_exists_and_describes_the_family() {
        const FAMILY: &[Help] = &[Help::counter("t_total", "Things counted.")];
        let lazy: Lazy<metrics::Counter> = Lazy::new();
        let make = || metrics::counter!("t_total");
        assert!(!recorder_installed(), "no recorder in unit tests");
        // A look finds none: the next is `POLL_EVERY` uses away.
        assert!(lazy.get_or_bind(FAMILY, make).is_none());
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            // Not looked for again before the countdown ends...
            for _ in 1..POLL_EVERY {
                assert!(lazy.get_or_bind(FAMILY, make).is_none());
            }
            // ...then found, and bound.
            lazy.get_or_bind(FAMILY, make).unwrap().increment(2);
        });
        // Bound for good: counts outside the scope too.
        lazy.get_or_bind(FAMILY, make).unwrap().increment(1);
        let snap = snapshotter.snapshot().into_vec();
        let (_, unit, help, value) = snap
            .iter()
            .find(|(k, ..)| k.key().name() == "t_total")
            .unwrap();
        assert_eq!(*unit, Some(metrics::Unit::Count));
        assert_eq!(help.as_deref(), Some("Things counted."));
        assert!(matches!(value, DebugValue::Counter(3)));
    }

    #[test]
    fn keyed_labels_split_back() {
        let l = keyed_label("api/v1", "authority", "a.example:443");
        assert_eq!(
            split_keyed_label(&l),
            ("api/v1", Some(("authority", "a.example:443")))
        );
        assert_eq!(split_keyed_label("plain/x"), ("plain/x", None));
    }
}
