//! The Idempotency-Key layer's metrics have `# HELP` text in a Prometheus scrape, even when the
//! layer was built before the recorder was installed (issue #15, item 6).
//!
//! The global recorder can be set once per process: the whole scenario is one test.
#![cfg(feature = "metrics")]

use axum::{Router, body::Body, http::Request, routing::post};
use metrics_exporter_prometheus::PrometheusBuilder;
use tower::ServiceExt;
use tower_rampart::idempotency::{IdempotencyLayer, metric_names};

#[tokio::test]
async fn idempotency_metrics_are_described() {
    let layer = IdempotencyLayer::builder().global_keys().build().unwrap();
    let app = Router::new()
        .route("/pay", post(|| async { "paid" }))
        .layer(layer);

    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).unwrap();

    for _ in 0..2 {
        let req = Request::post("/pay")
            .header("idempotency-key", "k1")
            .body(Body::empty())
            .unwrap();
        assert_eq!(app.clone().oneshot(req).await.unwrap().status(), 200);
    }
    let render = handle.render();
    for name in [metric_names::REQUESTS, metric_names::STORE_SECONDS] {
        assert!(
            render.contains(&format!("# HELP {name} ")),
            "{name} has no help text:\n{render}"
        );
    }
    assert!(
        render.contains(&format!(
            "{}{{outcome=\"replayed\"}} 1",
            metric_names::REQUESTS
        )),
        "{render}"
    );
}
