//! Metrics through the `metrics` facade, read back with a debugging recorder.
#![cfg(feature = "metrics")]

use std::time::Duration;

use metrics_util::{
    CompositeKey, MetricKind,
    debugging::{DebugValue, DebuggingRecorder},
};
use tokio::time::Instant;
use tower_rampart::{
    circuit_breaker::{Breaker, Config, State, metric_names},
    classify::Outcome,
};

fn value(
    snapshot: &[(CompositeKey, DebugValue)],
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    snapshot.iter().find_map(|(key, v)| {
        let k = key.key();
        let matches = k.name() == name
            && labels
                .iter()
                .all(|(l, want)| k.labels().any(|x| x.key() == *l && x.value() == *want));
        matches.then(|| match v {
            DebugValue::Counter(c) => *c as f64,
            DebugValue::Gauge(g) => g.into_inner(),
            DebugValue::Histogram(h) => h.len() as f64,
        })
    })
}

#[test]
fn calls_rejections_transitions_and_state_gauge() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let b = Breaker::new(
            Config::builder()
                .name("m")
                .consecutive_failures(2)
                .open_duration(Duration::from_secs(1))
                .build()
                .unwrap(),
        );
        let t = Instant::now();
        for o in [
            Outcome::Success,
            Outcome::Ignore,
            Outcome::FAILURE,
            Outcome::FAILURE,
        ] {
            let p = b.try_acquire(|| t).unwrap();
            b.record(p, &o, || t);
        }
        assert_eq!(b.state(), State::Open);
        for _ in 0..3 {
            b.try_acquire(|| t).unwrap_err();
        }
    });
    let snap: Vec<(CompositeKey, DebugValue)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(k, _, _, v)| (k, v))
        .collect();
    let b = ("breaker", "m");
    let calls = |o| value(&snap, metric_names::CALLS, &[b, ("outcome", o)]);
    assert_eq!(calls("success"), Some(1.0));
    assert_eq!(calls("failure"), Some(2.0));
    assert_eq!(calls("ignored"), Some(1.0));
    assert_eq!(value(&snap, metric_names::NOT_PERMITTED, &[b]), Some(3.0));
    assert_eq!(
        value(
            &snap,
            metric_names::TRANSITIONS,
            &[b, ("from", "closed"), ("to", "open")]
        ),
        Some(1.0)
    );
    let gauge = |s| value(&snap, metric_names::STATE, &[b, ("state", s)]);
    assert_eq!(gauge("open"), Some(1.0));
    assert_eq!(
        gauge("closed"),
        Some(0.0),
        "the state left is set back to 0"
    );
    assert_eq!(gauge("half_open"), Some(0.0));
    assert!(snap.iter().all(|(k, _)| k.kind() != MetricKind::Histogram));
}

/// Keyed breakers label with their base name and the key apart (`authority` for
/// `keyed_by_authority`, `key` for a key function), not `breaker="<name>/<key>"`.
#[test]
fn keyed_breakers_carry_the_key_in_a_label_of_its_own() {
    use http::uri::Authority;
    use tower_rampart::circuit_breaker::CircuitBreakerLayer;

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // Kept alive to the snapshot: a dropped keyed breaker leaves the state gauges.
    let _alive = metrics::with_local_recorder(&recorder, || {
        let config = || {
            Config::builder()
                .name("api")
                .consecutive_failures(1)
                .build()
                .unwrap()
        };
        let t = Instant::now();
        let hosts = CircuitBreakerLayer::keyed_by_authority(config()).breakers();
        let b = hosts.get_or_insert(Authority::from_static("a.example:443"), t);
        let p = b.try_acquire(|| t).unwrap();
        b.record(p, &Outcome::FAILURE, || t);
        let tenants = CircuitBreakerLayer::keyed(config(), |k: &String| k.clone())
            .max_keys(1)
            .breakers();
        for tenant in ["t1", "t2"] {
            let b = tenants.get_or_insert(tenant.to_owned(), t);
            let p = b.try_acquire(|| t).unwrap();
            b.record(p, &Outcome::Success, || t);
        }
        (hosts, tenants)
    });
    let snap: Vec<(CompositeKey, DebugValue)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(k, _, _, v)| (k, v))
        .collect();
    let calls = |labels: &[(&str, &str)]| value(&snap, metric_names::CALLS, labels);
    let host = [("breaker", "api"), ("authority", "a.example:443")];
    assert_eq!(
        calls(&[host[0], host[1], ("outcome", "failure")]),
        Some(1.0)
    );
    assert_eq!(
        value(
            &snap,
            metric_names::TRANSITIONS,
            &[host[0], host[1], ("from", "closed"), ("to", "open")]
        ),
        Some(1.0)
    );
    let open = value(
        &snap,
        metric_names::STATE,
        &[host[0], host[1], ("state", "open")],
    );
    assert_eq!(open, Some(1.0));
    // Past `max_keys`, keys share the `(other)` label: cardinality stays bounded.
    let tenant = |key| calls(&[("breaker", "api"), ("key", key), ("outcome", "success")]);
    assert_eq!(tenant("t1"), Some(1.0));
    assert_eq!(tenant("(other)"), Some(1.0));
    assert_eq!(tenant("t2"), None);
    assert!(
        snap.iter()
            .all(|(k, _)| k.key().labels().all(|l| !l.value().contains('/'))),
        "no label folds the key into the name"
    );
}
