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
