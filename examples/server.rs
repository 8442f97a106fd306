//! The main demo: a payments API whose `POST /payments` is protected by the Idempotency-Key
//! layer, so a retried payment is never charged twice.
//!
//! ```text
//! cargo run --example server                                   # memory store, port 3000
//! PORT=8080 REDIS_URL=redis://127.0.0.1:6379 cargo run --example server   # Redis store
//! ```
//!
//! - `POST /payments` with `{"amount": <integer>, "currency": "<string>"}` and an
//!   `Idempotency-Key` header (required): about 100 ms of work, then 201 with
//!   `{"id", "amount", "currency"}`; the same key and body replay it, another body is 422, a
//!   concurrent duplicate 409.
//! - `GET /payments`: the payments this process created. `GET /healthz`: 200.
//!   `GET /readyz`: 200 when the store answers, else 503. `GET /metrics`: Prometheus text.
//!
//! One log line per request, with the idempotency outcome.

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    extract::{Request, State},
    http::StatusCode,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};
use tower_rampart::idempotency::{
    IDEMPOTENT_REPLAYED, IdempotencyLayer, MemoryStore, RedisStore, Store,
};

#[derive(Deserialize)]
struct NewPayment {
    amount: i64,
    currency: String,
}

#[derive(Serialize, Clone)]
struct Payment {
    id: String,
    amount: i64,
    currency: String,
}

#[derive(Clone)]
struct App<St> {
    payments: Arc<Mutex<Vec<Payment>>>,
    store: St,
    metrics: PrometheusHandle,
}

async fn create<St>(State(app): State<App<St>>, Json(new): Json<NewPayment>) -> Response {
    // The work a real payment does: call the bank, write the ledger.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let payment = Payment {
        id: format!("pay_{}", uuid::Uuid::new_v4().simple()),
        amount: new.amount,
        currency: new.currency,
    };
    app.payments
        .lock()
        .expect("not poisoned")
        .push(payment.clone());
    (StatusCode::CREATED, Json(payment)).into_response()
}

async fn list<St>(State(app): State<App<St>>) -> Json<Vec<Payment>> {
    Json(app.payments.lock().expect("not poisoned").clone())
}

async fn ready<St: Store>(State(app): State<App<St>>) -> StatusCode {
    match tokio::time::timeout(Duration::from_secs(1), app.store.ready()).await {
        Ok(Ok(())) => StatusCode::OK,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

async fn render_metrics<St>(State(app): State<App<St>>) -> String {
    app.metrics.render()
}

/// One line per request: method, path, status, time, idempotency outcome.
async fn log(req: Request, next: Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let keyed = req.headers().contains_key("idempotency-key");
    let start = Instant::now();
    let res = next.run(req).await;
    let outcome = if res.headers().contains_key(IDEMPOTENT_REPLAYED) {
        "replayed"
    } else if res
        .headers()
        .get("content-type")
        .is_some_and(|v| v == "application/problem+json")
    {
        match res.status() {
            StatusCode::CONFLICT => "conflict",
            StatusCode::UNPROCESSABLE_ENTITY => "mismatch",
            StatusCode::PAYLOAD_TOO_LARGE => "too_large",
            StatusCode::SERVICE_UNAVAILABLE => "store_error",
            StatusCode::BAD_REQUEST if keyed => "invalid_key",
            StatusCode::BAD_REQUEST => "missing_key",
            _ => "error",
        }
    } else if keyed && method == "POST" {
        "new"
    } else {
        "-"
    };
    println!(
        "{method} {path} -> {} in {:.1} ms, idempotency: {outcome}",
        res.status().as_u16(),
        start.elapsed().as_secs_f64() * 1000.0
    );
    res
}

fn router<St: Store + Clone>(
    store: St,
    metrics: PrometheusHandle,
) -> Result<Router, tower_rampart::ConfigError> {
    let idempotency = IdempotencyLayer::builder()
        .store(store.clone())
        // The demo has no authentication, so one key space for all; a real service scopes
        // keys by its principal: `.scope(|req| tenant_of(req))`.
        .global_keys()
        // A body the handler rejects before doing anything (bad JSON) is not kept: the client
        // may fix it and retry with the same key.
        .keep_response_if(|parts| !matches!(parts.status.as_u16(), 400 | 415 | 422))
        .build()?;
    let app = App {
        payments: Arc::default(),
        store,
        metrics,
    };
    Ok(Router::new()
        .route(
            "/payments",
            axum::routing::post(create::<St>)
                .route_layer(idempotency)
                .get(list::<St>),
        )
        .route("/healthz", get(|| async { StatusCode::OK }))
        .route("/readyz", get(ready::<St>))
        .route("/metrics", get(render_metrics::<St>))
        .with_state(app)
        .layer(middleware::from_fn(log)))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Before any layer is built: layers register their metric handles once.
    let metrics = PrometheusBuilder::new().install_recorder()?;
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000);
    let app = match std::env::var("REDIS_URL") {
        Ok(url) => {
            println!("store: Redis at {url}");
            router(RedisStore::connect(&url).await?, metrics)?
        }
        Err(_) => {
            println!("store: in memory (set REDIS_URL to use Redis)");
            router(MemoryStore::new(), metrics)?
        }
    };
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on http://{addr}");
    println!(
        "try: curl -i -X POST http://{addr}/payments -H 'Idempotency-Key: order-1' \
         -H 'Content-Type: application/json' -d '{{\"amount\":1200,\"currency\":\"EUR\"}}'"
    );
    axum::serve(listener, app).await?;
    Ok(())
}
