//! Layers built before the global recorder is installed still report (issue #15, item 6).
//!
//! The global recorder can be set once per process, and each test binary is one process: the
//! whole scenario is one `#[test]`.
#![cfg(feature = "metrics")]

use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_rampart::{
    backoff::Backoff,
    circuit_breaker::{CircuitBreakerLayer, Config},
    retry::RetryLayer,
};

/// The value of the sample `name{labels}` in a Prometheus text render.
fn sample(render: &str, name: &str, labels: &[&str]) -> Option<f64> {
    render.lines().find_map(|line| {
        let (key, value) = line.rsplit_once(' ')?;
        let ok = key.starts_with(name)
            && key[name.len()..].starts_with('{')
            && labels.iter().all(|l| key.contains(l));
        ok.then(|| value.parse().ok()).flatten()
    })
}

#[tokio::test(start_paused = true)]
async fn layers_built_before_the_recorder_report_to_it_with_help_text() {
    // Built first, as a service assembled at start-up before main installs the exporter.
    let breaker = CircuitBreakerLayer::new(
        Config::builder()
            .name("late")
            .consecutive_failures(2)
            .open_duration(Duration::from_secs(60))
            .build()
            .unwrap(),
    );
    let retry = RetryLayer::builder()
        .name("late")
        .max_attempts(2)
        .backoff(Backoff::constant(Duration::from_millis(10)))
        .build()
        .unwrap();
    let mut svc = retry.layer(breaker.layer(service_fn(|fail: bool| async move {
        if fail { Err("down") } else { Ok(()) }
    })));

    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).unwrap();

    svc.ready().await.unwrap().call(false).await.unwrap();
    // Two failed attempts open the breaker; the third call is refused.
    svc.ready().await.unwrap().call(true).await.unwrap_err();
    svc.ready().await.unwrap().call(true).await.unwrap_err();

    let render = handle.render();
    let b = r#"breaker="late""#;
    let calls = "rampart_circuit_breaker_calls_total";
    assert_eq!(
        sample(&render, calls, &[b, r#"outcome="success""#]),
        Some(1.0),
        "{render}"
    );
    assert_eq!(
        sample(&render, calls, &[b, r#"outcome="failure""#]),
        Some(2.0),
        "{render}"
    );
    let refused = "rampart_circuit_breaker_not_permitted_calls_total";
    assert_eq!(sample(&render, refused, &[b]), Some(1.0), "{render}");
    let state = "rampart_circuit_breaker_state";
    assert_eq!(
        sample(&render, state, &[b, r#"state="open""#]),
        Some(1.0),
        "{render}"
    );
    assert_eq!(
        sample(&render, state, &[b, r#"state="closed""#]),
        Some(0.0),
        "{render}"
    );
    let r = r#"retry="late""#;
    assert_eq!(
        sample(&render, "rampart_retry_attempts_total", &[r]),
        Some(4.0),
        "{render}"
    );
    assert_eq!(
        // Both reasons are rendered, in no fixed order: name the one retried.
        sample(
            &render,
            "rampart_retry_retries_total",
            &[r, r#"reason="error""#]
        ),
        Some(1.0),
        "{render}"
    );
    assert!(
        render.contains("rampart_retry_call_duration_seconds_count"),
        "{render}"
    );
    assert!(
        render.contains("rampart_retry_attempt_duration_seconds_count"),
        "{render}"
    );
    for name in [
        calls,
        refused,
        state,
        "rampart_circuit_breaker_transitions_total",
        "rampart_retry_attempts_total",
        "rampart_retry_retries_total",
        "rampart_retry_gave_up_total",
        "rampart_retry_delay_seconds",
        "rampart_retry_call_duration_seconds",
        "rampart_retry_attempt_duration_seconds",
    ] {
        assert!(
            render.contains(&format!("# HELP {name} ")),
            "no help text for {name}:\n{render}"
        );
    }
}
