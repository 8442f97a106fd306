//! One retried call as a trace: the standard client pipeline over `reqwest`, against a local
//! axum server whose first answer is a 503, printed by `tracing-subscriber`'s fmt layer and,
//! with `otel`, also exported as an OpenTelemetry trace by the OpenTelemetry stdout exporter.
//!
//! ```text
//! cargo run --example tracing
//! cargo run --example tracing -- otel
//! ```
//!
//! The retry layer opens a `rampart.call` span per logical call (fields `rampart.retry`,
//! `rampart.attempts`, `error.type` when it fails) and a `rampart.attempt` child span per
//! attempt (`http.request.resend_count` on resends, `error.type` on failed attempts). The
//! `retrying` event (`delay_ms`, `cause`) is in the failed attempt's span; a breaker's refusal
//! is an event in the attempt it refused. `tracing-opentelemetry` turns the same spans into an
//! OpenTelemetry trace: one trace id, the `rampart.call` span as the root and each
//! `rampart.attempt` span its child, with the span fields as attributes.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

use axum::{Router, http::StatusCode, routing::get};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_rampart::{backoff::Backoff, pipeline::StandardClientLayer};
use tracing::Level;
use tracing_subscriber::{filter::Targets, fmt::format::FmtSpan, prelude::*};

#[tokio::main]
async fn main() -> Result<(), tower_rampart::BoxError> {
    // The simple processor exports each span as it closes; a service would use the batch one
    // and an OTLP exporter instead of stdout.
    let provider = std::env::args().any(|arg| arg == "otel").then(|| {
        SdkTracerProvider::builder()
            .with_resource(
                Resource::builder()
                    .with_service_name("rampart-example")
                    .build(),
            )
            .with_simple_exporter(opentelemetry_stdout::SpanExporter::default())
            .build()
    });
    let otel = provider.as_ref().map(|provider| {
        // Only the span fields as attributes: no code location, thread or busy/idle times.
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("tower-rampart-example"))
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_tracked_inactivity(false)
    });
    tracing_subscriber::registry()
        .with(otel)
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
    if let Some(provider) = provider {
        // Flushes and stops the exporter: spans still buffered would otherwise be lost.
        provider.shutdown()?;
    }
    Ok(())
}
