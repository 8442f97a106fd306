//! The readiness service over real HTTP: pass, warn and fail as breakers open and reset, stores
//! that fail or hang, and the response's shape.

mod common;

use std::time::{Duration, Instant as StdInstant};

use common::{http::serve, outage::Outage};
use serde_json::Value;
use tower_rampart::{
    circuit_breaker::{CircuitBreakerHandle, CircuitBreakerLayer, Config, State},
    health::{Liveness, Readiness},
    idempotency::{MemoryStore, testing::FaultyStore},
};

/// A store that never answers its readiness check (a network partition).
const HANGING: Outage = Outage { hang: true };

/// A store whose readiness check fails at once.
const DOWN: Outage = Outage { hang: false };

struct Answer {
    status: u16,
    content_type: String,
    body: Value,
}

impl Answer {
    fn overall(&self) -> &str {
        self.body["status"].as_str().unwrap()
    }

    fn check(&self, key: &str) -> &Value {
        let entries = self.body["checks"][key].as_array().unwrap_or_else(|| {
            panic!("no check {key} in {}", self.body);
        });
        assert_eq!(entries.len(), 1, "{key}: one entry");
        &entries[0]
    }
}

async fn get(client: &reqwest::Client, url: &str) -> Answer {
    let res = client.get(url).send().await.unwrap();
    let status = res.status().as_u16();
    let content_type = res
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let body = serde_json::from_str(&res.text().await.unwrap()).expect("JSON");
    Answer {
        status,
        content_type,
        body,
    }
}

fn breaker(name: &str, open: Duration) -> CircuitBreakerHandle {
    CircuitBreakerLayer::new(
        Config::builder()
            .name(name)
            .consecutive_failures(1)
            .open_duration(open)
            .build()
            .unwrap(),
    )
    .handle()
}

#[tokio::test]
async fn pass_warn_fail_as_breakers_open_and_reset() {
    let payments = breaker("payments", Duration::from_secs(60));
    let search = breaker("search", Duration::from_secs(60));
    let readiness = Readiness::new()
        .critical(payments.clone())
        .breaker(search.clone())
        .store(MemoryStore::new());
    let base = serve(
        axum::Router::new()
            .route_service("/readyz", readiness)
            .route_service("/livez", Liveness),
    )
    .await;
    let client = reqwest::Client::new();
    let url = format!("{base}/readyz");

    let a = get(&client, &url).await;
    assert_eq!((a.status, a.overall()), (200, "pass"));
    assert_eq!(a.content_type, "application/health+json");
    let p = a.check("payments:state");
    assert_eq!(p["status"], "pass");
    assert_eq!(p["observedValue"], "closed");
    assert_eq!(p["componentId"], "payments");
    assert_eq!(p["componentType"], "circuit_breaker");
    assert!(p["time"].as_str().unwrap().ends_with('Z'));
    let s = a.check("idempotency_store:responseTime");
    assert_eq!(s["status"], "pass");
    assert!(s["observedValue"].as_f64().unwrap() >= 0.0);
    assert_eq!(s["observedUnit"], "ms");
    assert_eq!(a.body["checks"].as_object().unwrap().len(), 3);

    // A non-critical breaker open: still ready, with a warning.
    search.force_open();
    let a = get(&client, &url).await;
    assert_eq!((a.status, a.overall()), (200, "warn"));
    assert_eq!(a.check("search:state")["status"], "warn");
    assert_eq!(a.check("search:state")["observedValue"], "forced_open");
    assert_eq!(a.check("payments:state")["status"], "pass");

    // A critical one open: not ready.
    payments.force_open();
    let a = get(&client, &url).await;
    assert_eq!((a.status, a.overall()), (503, "fail"));
    assert_eq!(a.content_type, "application/health+json");
    assert_eq!(a.check("payments:state")["status"], "fail");
    assert!(
        a.check("payments:state")["output"]
            .as_str()
            .unwrap()
            .contains("critical")
    );

    payments.reset();
    let a = get(&client, &url).await;
    assert_eq!((a.status, a.overall()), (200, "warn"));
    search.reset();
    let a = get(&client, &url).await;
    assert_eq!((a.status, a.overall()), (200, "pass"));

    // Liveness ignores all of it.
    payments.force_open();
    let a = get(&client, &format!("{base}/livez")).await;
    assert_eq!((a.status, a.overall()), (200, "pass"));
    assert_eq!(a.content_type, "application/health+json");
}

#[tokio::test]
async fn a_critical_breaker_opened_by_failures_reads_half_open_when_its_wait_is_over() {
    let layer = CircuitBreakerLayer::new(
        Config::builder()
            .name("ledger")
            .consecutive_failures(1)
            .open_duration(Duration::from_millis(300))
            .build()
            .unwrap(),
    );
    let handle = layer.handle();
    let base = serve(
        axum::Router::new().route_service("/readyz", Readiness::new().critical(handle.clone())),
    )
    .await;
    let client = reqwest::Client::new();
    let url = format!("{base}/readyz");

    let mut ledger = tower::ServiceBuilder::new()
        .layer(layer)
        .service_fn(|()| async { Err::<(), _>("down") });
    use tower::{Service, ServiceExt};
    ledger.ready().await.unwrap().call(()).await.unwrap_err();
    assert_eq!(handle.state(), State::Open);
    let a = get(&client, &url).await;
    assert_eq!((a.status, a.overall()), (503, "fail"));
    assert_eq!(a.check("ledger:state")["observedValue"], "open");

    // No call is made; the clock alone lets the next call probe.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let a = get(&client, &url).await;
    assert_eq!((a.status, a.overall()), (200, "warn"));
    assert_eq!(a.check("ledger:state")["observedValue"], "half_open");
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test]
async fn keyed_families_are_checked_whole() {
    let layer = CircuitBreakerLayer::keyed(
        Config::builder().name("api").build().unwrap(),
        |host: &&'static str| *host,
    );
    let breakers = layer.breakers();
    let readiness = Readiness::new().critical(breakers.clone());
    let base = serve(axum::Router::new().route_service("/readyz", readiness)).await;
    let client = reqwest::Client::new();
    let url = format!("{base}/readyz");
    let a = get(&client, &url).await;
    assert_eq!((a.status, a.overall()), (200, "pass"));
    assert!(a.body["checks"].as_object().unwrap().is_empty());

    let now = tokio::time::Instant::now();
    breakers.get_or_insert("a.example", now);
    breakers.get_or_insert("b.example", now);
    let a = get(&client, &url).await;
    assert_eq!(a.check("api/a.example:state")["status"], "pass");
    breakers.get("b.example").unwrap().force_open();
    let a = get(&client, &url).await;
    assert_eq!((a.status, a.overall()), (503, "fail"));
    assert_eq!(a.check("api/b.example:state")["status"], "fail");
    assert_eq!(a.check("api/a.example:state")["status"], "pass");
}

#[tokio::test]
async fn a_store_that_hangs_fails_readiness_within_its_timeout() {
    let readiness = Readiness::new()
        .store(FaultyStore::new(MemoryStore::new()))
        .store_named("sessions", HANGING)
        .store_named("cache", HANGING)
        .store_named("queue", HANGING)
        .store_timeout(Duration::from_millis(200));
    let base = serve(axum::Router::new().route_service("/readyz", readiness)).await;
    let client = reqwest::Client::new();

    let start = StdInstant::now();
    let a = get(&client, &format!("{base}/readyz")).await;
    let took = start.elapsed();
    assert_eq!((a.status, a.overall()), (503, "fail"));
    assert_eq!(a.content_type, "application/health+json");
    assert!(took >= Duration::from_millis(200), "{took:?}");
    assert!(
        took < Duration::from_millis(550),
        "stores are asked concurrently, each within the timeout: {took:?}"
    );
    assert_eq!(a.check("idempotency_store:responseTime")["status"], "pass");
    for name in ["sessions", "cache", "queue"] {
        let c = a.check(&format!("{name}:responseTime"));
        assert_eq!(c["status"], "fail");
        assert_eq!(c["componentType"], "datastore");
        assert_eq!(c["output"], "no answer within 200 ms");
        assert!(c["observedValue"].as_f64().unwrap() >= 200.0);
    }
}

#[tokio::test]
async fn a_store_that_errs_fails_readiness() {
    let readiness = Readiness::new().store(DOWN);
    let base = serve(axum::Router::new().route_service("/readyz", readiness)).await;
    let a = get(&reqwest::Client::new(), &format!("{base}/readyz")).await;
    assert_eq!((a.status, a.overall()), (503, "fail"));
    let c = a.check("idempotency_store:responseTime");
    assert_eq!(c["status"], "fail");
    assert!(
        c["output"].as_str().unwrap().contains("connection refused"),
        "{c}"
    );
}

#[tokio::test]
async fn usable_from_an_axum_handler() {
    let readiness = Readiness::new().critical(breaker("payments", Duration::from_secs(1)));
    let handler_readiness = readiness.clone();
    let app = axum::Router::new().route(
        "/ready",
        axum::routing::get(move || {
            let r = handler_readiness.clone();
            async move { r.response().await }
        }),
    );
    let base = serve(app).await;
    let a = get(&reqwest::Client::new(), &format!("{base}/ready")).await;
    assert_eq!((a.status, a.overall()), (200, "pass"));
    let report = readiness.report().await;
    assert_eq!(report.checks.len(), 1);
    assert_eq!(report.get("payments:state").count(), 1);
}
