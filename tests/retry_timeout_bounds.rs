//! Issue 14 item 1: every duration a user gives the retry, backoff, timeout, chaos and pipeline
//! builders is bounded when it is built (at most `MAX_DURATION`, one year), with an error naming
//! the setting as configuration files name it. `Duration::MAX` meant as "forever" is refused
//! there, never met as an overflow while serving.

use std::time::Duration;

use http::StatusCode;
use tower_rampart::{
    ConfigError, MAX_DURATION,
    backoff::Backoff,
    chaos::{Config as ChaosConfig, Fault},
    pipeline::{StandardClientLayer, StandardServerLayer},
    retry::RetryLayer,
    timeout::TimeoutLayer,
};

const HUGE: [Duration; 2] = [
    Duration::MAX,
    MAX_DURATION.saturating_add(Duration::from_nanos(1)),
];

/// `result` is refused for `setting`, in words an operator reads.
#[track_caller]
fn refused<T>(result: Result<T, ConfigError>, setting: &str) {
    let Err(err) = result else {
        panic!("{setting}: accepted")
    };
    assert_eq!(err.setting(), Some(setting), "{err}");
    let text = err.to_string();
    assert!(text.contains(setting), "{text}");
    assert!(text.contains("must be at most one year"), "{text}");
}

#[test]
fn retry_builder_bounds_its_durations() {
    for d in HUGE {
        refused(RetryLayer::builder().max_elapsed(d).build(), "max_elapsed");
        refused(
            RetryLayer::builder().attempt_timeout(d).build(),
            "attempt_timeout",
        );
        refused(
            RetryLayer::builder().retry_after(Some(d)).build(),
            "retry_after_cap",
        );
        // A reload is checked the same way, and changes nothing when refused.
        let (_layer, reload) = RetryLayer::builder().build().unwrap().reloadable();
        refused(
            reload.apply(RetryLayer::builder().max_elapsed(d)),
            "max_elapsed",
        );
        assert_eq!(reload.current().max_elapsed, None);
    }
    // One year itself is a setting like any other.
    let year = RetryLayer::builder()
        .max_elapsed(MAX_DURATION)
        .attempt_timeout(MAX_DURATION)
        .retry_after(Some(MAX_DURATION))
        .build()
        .unwrap();
    assert_eq!(year.settings().max_elapsed, Some(MAX_DURATION));
}

#[test]
fn backoff_bounds_its_durations() {
    let ms = Duration::from_millis(1);
    for d in HUGE {
        refused(
            Backoff::exponential(d).max_delay(d).validate(),
            "initial_delay",
        );
        refused(Backoff::constant(d).validate(), "initial_delay");
        refused(
            Backoff::exponential(ms).max_delay(d).validate(),
            "max_delay",
        );
        refused(Backoff::linear(ms, d).validate(), "step");
        // The retry builder passes the backoff's refusal on as it is.
        refused(
            RetryLayer::builder()
                .backoff(Backoff::linear(ms, d))
                .build(),
            "step",
        );
    }
}

#[test]
fn timeout_layer_bounds_its_timeout() {
    for d in HUGE {
        refused(TimeoutLayer::new(d), "timeout");
        let (layer, reload) = TimeoutLayer::new(Duration::from_secs(1))
            .unwrap()
            .reloadable();
        refused(reload.set(d), "timeout");
        assert_eq!(layer.timeout(), Duration::from_secs(1), "unchanged");
    }
    assert!(TimeoutLayer::new(MAX_DURATION).is_ok());
}

#[test]
fn chaos_builder_bounds_its_durations() {
    for d in HUGE {
        refused(
            ChaosConfig::builder().fault(Fault::Latency(d)).build(),
            "latency",
        );
        refused(Fault::Latency(d).validate(), "latency");
        refused(
            ChaosConfig::builder()
                .fault(Fault::http(StatusCode::SERVICE_UNAVAILABLE).with_retry_after(d))
                .build(),
            "retry_after",
        );
    }
}

#[test]
fn pipeline_builders_bound_their_timeouts() {
    for d in HUGE {
        refused(
            StandardClientLayer::builder().total_timeout(d).build(),
            "total",
        );
        refused(
            StandardClientLayer::builder()
                .total_timeout(d)
                .attempt_timeout(d)
                .build(),
            "total",
        );
        refused(
            StandardClientLayer::builder().attempt_timeout(d).build(),
            "attempt",
        );
        refused(
            StandardClientLayer::builder()
                .retry(move |r| r.max_elapsed(d))
                .build(),
            "max_elapsed",
        );
        refused(StandardServerLayer::builder().timeout(d).build(), "timeout");
    }
}
