//! The design-document snippet of issue #10, loaded verbatim, driving real layers against a real
//! axum server through a real reqwest client (paused time: the retry waits and the slow calls
//! take no wall-clock time).

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

use axum::{Router, http::StatusCode, routing::get};
use common::http::serve;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_rampart::{
    BoxError,
    circuit_breaker::{CircuitBreakerLayer, CircuitOpen, State, WindowKind},
    classify::{ErrorNames, HttpStatus},
    config::{PolicySettings, RegistrySettings},
    replay::HttpReplay,
};

/// Verbatim from the issue, comments included.
const SEED: &str = r#"
circuit_breaker:
  service: payment-gateway
  failure_threshold: 5             # consecutive failures to open
  recovery_timeout: 30s            # wait before half-open
  permitted_calls_in_half_open: 3
  sliding_window_size: 10          # requests to evaluate
  minimum_calls: 5
  slow_call_duration_threshold: 2s
  slow_call_rate_threshold: 0.8
retry_policy:
  max_attempts: 3
  initial_interval: 1s
  max_interval: 30s
  multiplier: 2.0
  jitter: true
  retryable_exceptions: ["NetworkTimeout", "ServiceUnavailable"]
  non_retryable_exceptions: ["ValidationError", "AuthenticationFailed"]
"#;

/// The same policy in TOML.
const SEED_TOML: &str = r#"
[circuit_breaker]
service = "payment-gateway"
failure_threshold = 5
recovery_timeout = "30s"
permitted_calls_in_half_open = 3
sliding_window_size = 10
minimum_calls = 5
slow_call_duration_threshold = "2s"
slow_call_rate_threshold = 0.8

[retry_policy]
max_attempts = 3
initial_interval = "1s"
max_interval = "30s"
multiplier = 2.0
jitter = true
retryable_exceptions = ["NetworkTimeout", "ServiceUnavailable"]
non_retryable_exceptions = ["ValidationError", "AuthenticationFailed"]
"#;

/// Hits per route.
#[derive(Clone, Default)]
struct Hits(Arc<[AtomicUsize; 6]>);

impl Hits {
    fn hit(&self, route: usize) -> usize {
        self.0[route].fetch_add(1, SeqCst) + 1
    }
    fn get(&self, route: usize) -> usize {
        self.0[route].load(SeqCst)
    }
}

const FLAKY: usize = 0;
const INVALID: usize = 1;
const DOWN: usize = 2;
const SLOW: usize = 3;
const HANG: usize = 4;
const UNAUTHORIZED: usize = 5;

async fn server(hits: Hits) -> String {
    let h = hits.clone();
    let app = Router::new()
        .route(
            "/flaky",
            get({
                let h = h.clone();
                move || async move {
                    if h.hit(FLAKY) == 1 {
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        StatusCode::OK
                    }
                }
            }),
        )
        .route(
            "/invalid",
            get({
                let h = h.clone();
                move || async move {
                    h.hit(INVALID);
                    StatusCode::UNPROCESSABLE_ENTITY
                }
            }),
        )
        .route(
            "/unauthorized",
            get({
                let h = h.clone();
                move || async move {
                    h.hit(UNAUTHORIZED);
                    StatusCode::UNAUTHORIZED
                }
            }),
        )
        .route(
            "/down",
            get({
                let h = h.clone();
                move || async move {
                    h.hit(DOWN);
                    StatusCode::INTERNAL_SERVER_ERROR
                }
            }),
        )
        .route(
            "/slow",
            get({
                let h = h.clone();
                move || async move {
                    h.hit(SLOW);
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    StatusCode::OK
                }
            }),
        )
        .route(
            "/hang",
            get({
                let h = h.clone();
                move || async move {
                    h.hit(HANG);
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    StatusCode::OK
                }
            }),
        );
    serve(app).await
}

type Client = tower::util::BoxService<reqwest::Request, reqwest::Response, BoxError>;

/// The seed policy's retry (outside) and breaker (inside) around a reqwest client.
fn stack(policy: &PolicySettings, client: reqwest::Client) -> Client {
    let names = ErrorNames::default();
    let retry = policy
        .retry_layer("payment-gateway")
        .unwrap()
        .classify(
            policy
                .retry_classifier(HttpStatus::retryable(), &names)
                .unwrap(),
        )
        .replay(HttpReplay::default());
    let breaker = CircuitBreakerLayer::new(policy.circuit_breaker_config().unwrap())
        .classify(HttpStatus::default());
    tower::util::BoxService::new(
        ServiceBuilder::new()
            .layer(retry)
            .layer(breaker)
            .service(client),
    )
}

async fn send(svc: &mut Client, base: &str, path: &str) -> Result<reqwest::Response, BoxError> {
    let req = reqwest::Request::new(
        reqwest::Method::GET,
        format!("{base}{path}").parse().unwrap(),
    );
    svc.ready().await?.call(req).await
}

#[test]
fn the_seed_loads_verbatim_from_yaml_and_toml_and_maps_onto_the_model() {
    let yaml = PolicySettings::from_yaml(SEED).unwrap();
    let toml = PolicySettings::from_toml(SEED_TOML).unwrap();
    assert_eq!(yaml, toml);
    let config = yaml.circuit_breaker_config().unwrap();
    assert_eq!(config.name(), "payment-gateway");
    assert_eq!(config.window(), WindowKind::Count { size: 10 });
    assert_eq!(config.open_duration_after(1), Duration::from_secs(30));
    let debug = format!("{config:?}");
    assert!(debug.contains("failure_rate: 0.5"), "{debug}");
    assert!(debug.contains("minimum_calls: 5"), "{debug}");
    assert!(debug.contains("half_open_permits: 3"), "{debug}");
    assert!(debug.contains("slow: Some((2s, 800000))"), "{debug}");
    // Serialized and read back, the settings are the same.
    let round = PolicySettings::from_value(serde_json::to_value(&yaml).unwrap()).unwrap();
    assert_eq!(round, yaml);
}

#[tokio::test(start_paused = true)]
async fn the_seed_retries_what_it_names_and_nothing_else() {
    let hits = Hits::default();
    let base = server(hits.clone()).await;
    let policy = PolicySettings::from_yaml(SEED).unwrap();
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut svc = stack(&policy, client);

    // NetworkTimeout is retryable: the client's timeout fires three times (max_attempts: 3).
    let err = send(&mut svc, &base, "/hang").await.unwrap_err();
    let timeout = err
        .downcast_ref::<reqwest::Error>()
        .is_some_and(reqwest::Error::is_timeout);
    assert!(timeout, "{err:?}");
    assert_eq!(hits.get(HANG), 3);

    // Three failures of three calls: a fresh stack, so that the breaker stays out of the way.
    let mut svc = stack(&policy, common::http::client());

    // ServiceUnavailable is retryable: the 503 is retried and the second attempt succeeds.
    let res = send(&mut svc, &base, "/flaky").await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(hits.get(FLAKY), 2);

    // ValidationError and AuthenticationFailed are never retried.
    let res = send(&mut svc, &base, "/invalid").await.unwrap();
    assert_eq!(res.status(), 422);
    assert_eq!(hits.get(INVALID), 1);
    let res = send(&mut svc, &base, "/unauthorized").await.unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(hits.get(UNAUTHORIZED), 1);

    // A 500 is a failure, but not one the list names: answered as it is, not retried.
    let res = send(&mut svc, &base, "/down").await.unwrap();
    assert_eq!(res.status(), 500);
    assert_eq!(hits.get(DOWN), 1);
}

#[tokio::test(start_paused = true)]
async fn five_failures_in_a_row_open_the_seed_breaker_and_it_probes_after_30s() {
    let hits = Hits::default();
    let base = server(hits.clone()).await;
    let policy = PolicySettings::from_yaml(SEED).unwrap();
    let mut svc = stack(&policy, common::http::client());

    for i in 1..=4 {
        let res = send(&mut svc, &base, "/down").await.unwrap();
        assert_eq!(res.status(), 500, "call {i} reaches the server");
    }
    // Four calls are below minimum_calls (5): still closed. The fifth failure opens it.
    send(&mut svc, &base, "/down").await.unwrap();
    assert_eq!(hits.get(DOWN), 5);
    let err = send(&mut svc, &base, "/down").await.unwrap_err();
    assert!(err.downcast_ref::<CircuitOpen>().is_some(), "{err:?}");
    assert_eq!(hits.get(DOWN), 5, "refused without reaching the server");

    // recovery_timeout: 30s, then up to 3 probes (permitted_calls_in_half_open).
    tokio::time::sleep(Duration::from_secs(29)).await;
    assert!(
        send(&mut svc, &base, "/flaky").await.is_err(),
        "still open at 29 s"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    for _ in 0..3 {
        let res = send(&mut svc, &base, "/flaky").await.unwrap();
        assert_eq!(res.status(), 200);
    }
    // Three good probes close it.
    let res = send(&mut svc, &base, "/down").await.unwrap();
    assert_eq!(res.status(), 500);
}

#[tokio::test(start_paused = true)]
async fn slow_calls_open_the_seed_breaker() {
    let hits = Hits::default();
    let base = server(hits.clone()).await;
    let policy = PolicySettings::from_yaml(SEED).unwrap();
    let config = policy.circuit_breaker_config().unwrap();
    let layer = CircuitBreakerLayer::new(config).classify(HttpStatus::default());
    let handle = layer.handle();
    let mut svc = ServiceBuilder::new()
        .layer(layer)
        .service(common::http::client());
    // Five successful calls of 3 s (slow_call_duration_threshold: 2s): 100 % slow, above 80 %.
    for _ in 0..5 {
        let req = reqwest::Request::new(
            reqwest::Method::GET,
            format!("{base}/slow").parse().unwrap(),
        );
        let res = svc.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(res.status(), 200);
    }
    assert_eq!(handle.state(), State::Open);
    assert_eq!(hits.get(SLOW), 5);
}

#[test]
fn errors_name_the_path_to_the_field() {
    let err = |yaml: &str| PolicySettings::from_yaml(yaml).unwrap_err().to_string();
    assert_eq!(
        err("circuit_breaker:\n  minimum_calls: 0\n"),
        "circuit_breaker.minimum_calls: must be at least 1"
    );
    // A typo is an error, not a silently ignored key.
    let typo = err("circuit_breaker:\n  minimum_call: 5\n");
    assert!(
        typo.starts_with("circuit_breaker.minimum_call: unknown field `minimum_call`"),
        "{typo}"
    );
    let top = err("retry_polcy:\n  max_attempts: 2\n");
    assert!(top.contains("unknown field `retry_polcy`"), "{top}");
    // Durations are human strings.
    let number = err("circuit_breaker:\n  recovery_timeout: 30\n");
    assert!(
        number.starts_with("circuit_breaker.recovery_timeout: "),
        "{number}"
    );
    let unit = err("circuit_breaker:\n  recovery_timeout: 30 parsecs\n");
    assert!(
        unit.starts_with("circuit_breaker.recovery_timeout: invalid duration \"30 parsecs\": unknown time unit \"parsecs\""),
        "{unit}"
    );
    // Two spellings of one setting.
    assert_eq!(
        err("circuit_breaker:\n  sliding_window_size: 10\n  count_window: 20\n"),
        "circuit_breaker.sliding_window_size: `count_window` and `sliding_window_size` are the same setting: give one"
    );
    // The key the user wrote is the one named, whichever spelling.
    assert_eq!(
        err("circuit_breaker:\n  sliding_window_size: 0\n"),
        "circuit_breaker.sliding_window_size: must be in 1..=1000000, got 0"
    );
    assert_eq!(
        err("circuit_breaker:\n  failure_threshold: 11\n  sliding_window_size: 10\n"),
        "circuit_breaker.failure_threshold: must be in 1..=10 (the count window), got 11"
    );
    assert_eq!(
        err(
            "circuit_breaker:\n  slow_call_rate_threshold: 80\n  slow_call_duration_threshold: 2s\n"
        ),
        "circuit_breaker.slow_call_rate_threshold: must be in (0, 1], got 80"
    );
    assert_eq!(
        err("retry_policy:\n  initial_interval: 2s\n  max_interval: 1s\n"),
        "retry_policy.max_interval: must not be below initial_interval (2s), got 1s"
    );
    assert_eq!(
        err("retry_policy:\n  max_attempts: 0\n"),
        "retry_policy.max_attempts: must be in 1..=100, got 0"
    );
    // Unknown error names fail at load time, with a suggestion.
    let name = err(
        "retry_policy:\n  retryable_exceptions: [\"NetworkTimeout\", \"ServiceUnavialable\"]\n",
    );
    assert!(
        name.starts_with("retry_policy.retryable_exceptions[1]: "),
        "{name}"
    );
    assert!(name.contains("ServiceUnavailable"), "{name}");
    // YAML syntax errors say where.
    let syntax = err("circuit_breaker: [\n");
    assert!(syntax.starts_with("invalid YAML: "), "{syntax}");
}

#[test]
fn registry_errors_carry_the_policy_path() {
    let err = RegistrySettings::from_yaml(
        "policies:\n  payment-gateway:\n    circuit_breaker:\n      minimum_calls: 0\n",
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "policies.payment-gateway.circuit_breaker.minimum_calls: must be at least 1"
    );
    assert_eq!(
        err.path(),
        "policies.payment-gateway.circuit_breaker.minimum_calls"
    );
    // A bad default is reported where it is written.
    let err = RegistrySettings::from_yaml(
        "defaults:\n  retry:\n    max_attempts: 500\npolicies:\n  a: {}\n",
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "defaults.retry.max_attempts: must be in 1..=100, got 500"
    );
    // A policy's own value combined with a default: the policy's path.
    let err = RegistrySettings::from_yaml(
        "defaults:\n  circuit_breaker:\n    sliding_window_size: 10\npolicies:\n  a:\n    circuit_breaker:\n      minimum_calls: 20\n",
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "policies.a.circuit_breaker.minimum_calls: (20) exceeds the count window (10): the breaker could never open"
    );
}
