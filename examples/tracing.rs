//! One retried call as a trace: the standard client pipeline over `reqwest`, against a local
//! axum server whose first answer is a 503, printed by `tracing-subscriber`'s fmt layer.
//!
//! ```text
//! cargo run --example tracing
//! ```
//!
//! The retry layer opens a `rampart.call` span per logical call (fields `rampart.retry`,
//! `rampart.attempts`, `error.type` when it fails) and a `rampart.attempt` child span per
//! attempt (`http.request.resend_count` on resends, `error.type` on failed attempts). The
//! `retrying` event (`delay_ms`, `cause`) is in the failed attempt's span; a breaker's refusal
//! is an event in the attempt it refused. `tracing-opentelemetry` turns the same spans into an
//! OpenTelemetry trace.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

use axum::{Router, http::StatusCode, routing::get};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_rampart::{backoff::Backoff, pipeline::StandardClientLayer};
use tracing::Level;
use tracing_subscriber::{filter::Targets, fmt::format::FmtSpan, prelude::*};

#[tokio::main]
async fn main() -> Result<(), tower_rampart::BoxError> {
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_span_events(FmtSpan::CLOSE)
                .with_target(false),
        )
        .with(
            Targets::new()
                .with_target("tower_rampart", Level::DEBUG)
                .with_target("tracing", Level::INFO),
        )
        .init();

    // 503 once, then 200.
    let hits = Arc::new(AtomicUsize::new(0));
    let app = Router::new().route(
        "/flaky",
        get(move || {
            let hit = hits.fetch_add(1, SeqCst);
            async move {
                if hit == 0 {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/flaky", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let layer = StandardClientLayer::builder()
        .name("example")
        .retry(|r| r.backoff(Backoff::constant(Duration::from_millis(20))))
        .build()?;
    let mut client = ServiceBuilder::new()
        .layer(layer)
        .service(reqwest::Client::new());
    let request = reqwest::Request::new(reqwest::Method::GET, url.parse()?);
    let response = client.ready().await?.call(request).await?;
    tracing::info!(status = response.status().as_u16(), "call done");
    Ok(())
}
