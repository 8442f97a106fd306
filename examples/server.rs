//! The main demo: a payments API whose `POST /payments` is protected by the Idempotency-Key
//! layer, so a retried payment is never charged twice.
//!
//! ```text
//! cargo run --example server                                   # memory store, port 3000
//! PORT=8080 REDIS_URL=redis://127.0.0.1:6379 cargo run --example server   # Redis store
//! ```
//!
//! `PORT` (default 3000) is the port on 127.0.0.1; `REDIS_URL` (unset: an in-memory store)
//! a Redis or Redis Cluster node.
//!
//! - `POST /payments` with `{"amount": <integer>, "currency": "<string>"}` and an
//!   `Idempotency-Key` header (required): about 100 ms of work, then 201 with
//!   `{"id", "amount", "currency"}`; the same key and body replay it, another body is 422, a
//!   concurrent duplicate 409.
//! - Every error is `application/problem+json`. The layer's carry its own `type` URIs; a body
//!   the handler cannot read (not JSON 400, wrong `Content-Type` 415, missing or mistyped
//!   fields 422) has `"type": "about:blank"` and says why in `detail`, and its key is released
//!   so a corrected retry may reuse it.
//! - `GET /payments`: the payments this process created. `GET /healthz`: 200.
//!   `GET /readyz`: `application/health+json` from `tower_rampart::health::Readiness`, 200
//!   when the store answers within a second, else 503. `GET /metrics`: Prometheus text.
//!
//! One log line per request, with the idempotency outcome.

use std::{
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddr},
    process::ExitCode,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    extract::{Request, State, rejection::JsonRejection},
    http::{StatusCode, header::CONTENT_TYPE},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};
use tower_rampart::{
    health::Readiness,
    idempotency::{IDEMPOTENT_REPLAYED, IdempotencyLayer, MemoryStore, RedisStore, Store},
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

/// Marks the handler's own refusals for the log line.
#[derive(Clone, Copy)]
struct InvalidBody;

/// A body the handler cannot read, as RFC 9457 problem+json with `type: about:blank` (so
/// `title` is the status's phrase), apart from the layer's own problem types.
fn invalid_body(rejection: JsonRejection) -> Response {
    #[derive(Serialize)]
    struct Problem {
        r#type: &'static str,
        title: &'static str,
        status: u16,
        detail: String,
    }
    let status = rejection.status();
    let problem = Problem {
        r#type: "about:blank",
        title: status.canonical_reason().unwrap_or_default(),
        status: status.as_u16(),
        detail: rejection.body_text(),
    };
    let body = serde_json::to_string(&problem).expect("serializable");
    let content_type = [(CONTENT_TYPE, "application/problem+json")];
    let mut res = (status, content_type, body).into_response();
    res.extensions_mut().insert(InvalidBody);
    res
}

async fn create<St>(
    State(app): State<App<St>>,
    body: Result<Json<NewPayment>, JsonRejection>,
) -> Response {
    let new = match body {
        Ok(Json(new)) => new,
        Err(rejection) => return invalid_body(rejection),
    };
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
    } else if res.extensions().get::<InvalidBody>().is_some() {
        "released (invalid body)"
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
    // Ready when the idempotency store answers within a second (503 otherwise). A server that
    // calls downstreams through breakers adds them here: `.critical(handle)` for those it
    // cannot serve without, `.breaker(handle)` for those a fallback covers. Liveness
    // (`/healthz`) deliberately checks nothing.
    let readiness = Readiness::new()
        .store(app.store.clone())
        .store_timeout(Duration::from_secs(1));
    Ok(Router::new()
        .route(
            "/payments",
            axum::routing::post(create::<St>)
                .route_layer(idempotency)
                .get(list::<St>),
        )
        .route("/healthz", get(|| async { StatusCode::OK }))
        .route_service("/readyz", readiness)
        .route("/metrics", get(render_metrics::<St>))
        .with_state(app)
        .layer(middleware::from_fn(log)))
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    // Before any layer is built: layers register their metric handles once.
    let metrics = PrometheusBuilder::new().install_recorder()?;
    let port: u16 = match std::env::var("PORT") {
        Ok(p) => p
            .parse()
            .map_err(|_| format!("PORT={p:?} is not a port number (1-65535)"))?,
        Err(_) => 3000,
    };
    let app = match std::env::var("REDIS_URL") {
        Ok(url) => {
            println!("store: Redis at {url}");
            let store = RedisStore::connect(&url).await.map_err(|e| {
                format!("cannot reach Redis at {url} ({e}); is redis-server running there?")
            })?;
            router(store, metrics)?
        }
        Err(_) => {
            println!("store: in memory (set REDIS_URL to use Redis)");
            router(MemoryStore::new(), metrics)?
        }
    };
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(e) if e.kind() == ErrorKind::AddrInUse => {
            let next = port.wrapping_add(1).max(1);
            return Err(format!(
                "port {port} is already in use on 127.0.0.1; pick another with PORT, \
                 e.g. `PORT={next} cargo run --example server`"
            )
            .into());
        }
        Err(e) => return Err(format!("cannot listen on {addr}: {e}").into()),
    };
    println!("listening on http://{addr}");
    println!(
        "try: curl -i -X POST http://{addr}/payments -H 'Idempotency-Key: order-1' \
         -H 'Content-Type: application/json' -d '{{\"amount\":1200,\"currency\":\"EUR\"}}'"
    );
    axum::serve(listener, app).await?;
    Ok(())
}
