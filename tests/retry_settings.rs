//! Issue 14 item 17: retry and timeout layers say what settings they run with, in their static,
//! leaked and reloadable forms; after a reload, the layer reports the settings new calls get.

use std::time::Duration;

use tower_rampart::{backoff::Backoff, retry::RetryLayer, timeout::TimeoutLayer};

fn builder() -> tower_rampart::retry::Builder {
    RetryLayer::builder()
        .name("ledger")
        .max_attempts(4)
        .max_elapsed(Duration::from_secs(9))
        .attempt_timeout(Duration::from_secs(2))
        .backoff(Backoff::constant(Duration::from_millis(250)))
}

#[test]
fn a_retry_layer_reports_its_settings() {
    for layer in [
        builder().build().unwrap(),
        builder().build().unwrap().leak(),
    ] {
        assert_eq!(layer.max_attempts(), 4);
        let s = layer.settings();
        assert_eq!(&*s.name, "ledger");
        assert_eq!(s.max_attempts, 4);
        assert_eq!(s.max_elapsed, Some(Duration::from_secs(9)));
        assert_eq!(s.attempt_timeout, Some(Duration::from_secs(2)));
        assert_eq!(s.backoff, Backoff::constant(Duration::from_millis(250)));
        assert_eq!(s.retry_after_cap, Some(Duration::from_secs(30)));
        assert!(s.budget.is_none());
        assert!(!s.retry_circuit_open);

        // Reloadable: the layer follows its handle.
        let (layer, reload) = layer.reloadable();
        reload
            .apply(RetryLayer::builder().max_attempts(2).retry_after(None))
            .unwrap();
        assert_eq!(layer.max_attempts(), 2);
        let s = layer.settings();
        assert_eq!(
            (&*s.name, s.max_attempts, s.max_elapsed),
            ("ledger", 2, None)
        );
        assert_eq!(s.retry_after_cap, None);
        // A clone of the layer (as a registry hands out) reads the same.
        assert_eq!(layer.clone().max_attempts(), 2);
    }
}

#[test]
fn a_timeout_layer_reports_its_timeout() {
    let layer = TimeoutLayer::new(Duration::from_secs(3)).unwrap();
    assert_eq!(layer.timeout(), Duration::from_secs(3));
    let (layer, reload) = layer.respond_http().reloadable();
    reload.set(Duration::from_millis(1500)).unwrap();
    assert_eq!(layer.timeout(), Duration::from_millis(1500));
    assert_eq!(layer.clone().timeout(), Duration::from_millis(1500));
}
