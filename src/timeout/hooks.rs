//! What a timeout reports when it runs out: its listeners, the `rampart_timeouts_total` counter
//! and a `tracing` event. Only on that path: a call that finishes in time touches none of it.

use std::{sync::Arc, time::Duration};

use super::{Event, EventKind};
use crate::call::CallId;

/// Metric names of the timeout layer.
pub mod metric_names {
    /// Counter of calls a timeout cut off, labelled `timeout` (the layer's
    /// [`name`](crate::timeout::TimeoutLayer::name), empty when it has none) and `scope`:
    /// `head` (the response had not arrived) or `body` (a
    /// [body-inclusive](crate::timeout::TimeoutLayer::including_body) timeout ran out while the
    /// body was read).
    pub const TIMEOUTS: &str = "rampart_timeouts_total";
}

#[cfg(feature = "metrics")]
const HELP: &[crate::telemetry::Help] = &[crate::telemetry::Help::counter(
    metric_names::TIMEOUTS,
    "Calls a timeout cut off, by timeout name and scope (head: before the response; body: while reading it).",
)];

/// Where a call was when its timeout ran out: the `scope` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    Head,
    Body,
}

impl Scope {
    #[cfg_attr(not(any(feature = "metrics", feature = "tracing")), allow(dead_code))]
    fn as_str(self) -> &'static str {
        match self {
            Scope::Head => "head",
            Scope::Body => "body",
        }
    }
}

type ListenerFn = Arc<dyn Fn(&Event) + Send + Sync>;

/// A layer's name and listeners: one pointer, copied by a call only when either is set (a layer
/// with neither copies a null word).
#[derive(Clone, Default)]
pub(crate) struct Hooks(Option<Arc<Named>>);

#[derive(Default)]
struct Named {
    name: Option<Arc<str>>,
    listener: Option<ListenerFn>,
}

impl Hooks {
    fn parts(&self) -> Named {
        match &self.0 {
            Some(n) => Named {
                name: n.name.clone(),
                listener: n.listener.clone(),
            },
            None => Named::default(),
        }
    }

    /// The same hooks named `name`.
    pub(crate) fn named(self, name: Arc<str>) -> Hooks {
        let mut parts = self.parts();
        parts.name = Some(name);
        Hooks(Some(Arc::new(parts)))
    }

    /// The same hooks, with `g` called after the listeners so far.
    pub(crate) fn and(self, g: impl Fn(&Event) + Send + Sync + 'static) -> Hooks {
        let mut parts = self.parts();
        parts.listener = Some(match parts.listener {
            None => Arc::new(g),
            Some(f) => Arc::new(move |e: &Event| {
                f(e);
                g(e);
            }),
        });
        Hooks(Some(Arc::new(parts)))
    }

    /// The layer's name, if it has one.
    pub(crate) fn name(&self) -> Option<&str> {
        self.0.as_ref().and_then(|n| n.name.as_deref())
    }

    /// Reports a call cut off after `after` (inside the logical call's scope, for its id).
    #[cold]
    #[inline(never)]
    pub(crate) fn elapsed(&self, after: Duration, scope: Scope) {
        #[cfg(any(feature = "metrics", feature = "tracing"))]
        let name = self.name().unwrap_or("");
        #[cfg(feature = "metrics")]
        {
            // Described once, to the first recorder found (looked for at every timeout until
            // then: this is the cold path); the counter is made now, so it goes to the recorder
            // installed now, whenever the layer was built.
            static DESCRIBED: crate::telemetry::Lazy<()> = crate::telemetry::Lazy::new();
            let _ = DESCRIBED.bind_now(HELP, || ());
            metrics::counter!(metric_names::TIMEOUTS, "timeout" => name.to_owned(), "scope" => scope.as_str())
                .increment(1);
        }
        #[cfg(feature = "tracing")]
        tracing::info!(
            timeout = name,
            scope = scope.as_str(),
            timeout_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX),
            call_id = CallId::current().map(CallId::get),
            "call timed out"
        );
        if let Some(f) = self.0.as_ref().and_then(|n| n.listener.as_ref())
            && let Some(call) = CallId::current()
        {
            let kind = match scope {
                Scope::Head => EventKind::Elapsed { after },
                Scope::Body => EventKind::BodyElapsed { after },
            };
            f(&Event { call, kind });
        }
    }
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let listeners = self.0.as_ref().is_some_and(|n| n.listener.is_some());
        f.debug_struct("Hooks")
            .field("name", &self.name())
            .field("listeners", &listeners)
            .finish()
    }
}
