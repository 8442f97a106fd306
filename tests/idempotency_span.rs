//! The keyed handler runs detached from its caller's task, yet in its caller's span: a
//! `TraceLayer`-style request span around the Idempotency-Key layer is the handler's
//! `Span::current()`. Real axum server, real reqwest client, a `tracing-subscriber` registry.

mod common;

use std::sync::{Arc, Mutex};

use axum::{Router, extract::Request, middleware::Next, response::Response, routing::post};
use common::http::{client, serve};
use tower_rampart::idempotency::IdempotencyLayer;
use tracing::Instrument;

/// What `TraceLayer` does: the rest of the request runs in a `request` span.
async fn request_span(req: Request, next: Next) -> Response {
    let span = tracing::info_span!("request", uri = %req.uri());
    next.run(req).instrument(span).await
}

#[tokio::test]
async fn the_keyed_handler_runs_in_the_request_span() {
    // Registry tracks the current span per thread; global, since the handler's task may run on
    // any worker thread.
    tracing::subscriber::set_global_default(tracing_subscriber::registry()).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let layer = IdempotencyLayer::builder().global_keys().build().unwrap();
    let app = Router::new()
        .route(
            "/pay",
            post(move || {
                let s = s.clone();
                async move {
                    let span = tracing::Span::current();
                    let name = span.metadata().map(|m| m.name().to_owned());
                    s.lock().unwrap().push(name);
                    "paid"
                }
            }),
        )
        .layer(layer)
        .layer(axum::middleware::from_fn(request_span));
    let url = format!("{}/pay", serve(app).await);
    let client = client();
    for key in ["k1", "k2"] {
        let res = client
            .post(&url)
            .header("idempotency-key", key)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [Some("request".to_owned()), Some("request".to_owned())]
    );
}
