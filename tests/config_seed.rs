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
    let zero = err("circuit_breaker:\n  sliding_window_size: 0\n");
    assert!(
        zero.starts_with("circuit_breaker.sliding_window_size: must be at least 1"),
        "{zero}"
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

/// Every section, with every kind of value, serializes and reads back the same.
const EVERYTHING: &str = r#"
defaults:
  timeout: { total: 10s, attempt: 1500ms }
  circuit_breaker:
    time_window: 30s
    time_window_buckets: 10
    failure_rate: 0.25
    minimum_calls: 50
    slow_call_duration: 2s
    slow_call_rate: 0.5
    open_duration: 5s
    open_duration_multiplier: 2.0
    max_open_duration: 1m
    half_open_permits: 2
    half_open_max_wait: off
    respect_retry_after: false
  retry:
    max_attempts: 4
    max_elapsed: 20s
    backoff: linear
    initial_delay: 100ms
    step: 50ms
    max_delay: 1s
    jitter: 0.2
    retry_after_cap: off
    retry_circuit_open: false
    attempt_timeout: 1500ms
    budget: { percent: 0.2, min_per_second: 5, window: 10s }
    retry_on: ["5xx", "NetworkTimeout", "UNAVAILABLE", "CircuitOpen"]
    never_retry: ["501"]
policies:
  payments:
    critical: true
    retry:
      backoff: exponential
      initial_delay: 200ms
      multiplier: 3.0
      step: null
      jitter: equal
      budget: { max_tokens: 10, token_ratio: 0.1 }
    fallback:
      on: [circuit_open, timeout, error, failure]
      status: 503
      body: '{"degraded": true}'
      content_type: application/json
    idempotency:
      methods: [POST, PATCH]
      required: true
      fingerprint_headers: [content-type]
      max_request_body: 65536
      max_response_body: 1048576
      response_body_timeout: 30s
      ttl: 24h
      lease: 30s
      store_timeout: 2s
      wait_for_in_flight: 5s
      in_flight_retry_after: 1s
      on_store_error: fail_closed
    chaos:
      enabled: true
      injection_rate: 0.1
      seed: 42
      fault: grpc
      grpc_code: UNAVAILABLE
      message: injected outage
  search:
    circuit_breaker: { consecutive_failures: 3 }
    chaos: { enabled: false, fault: latency, latency: 200ms }
"#;

#[test]
fn every_section_round_trips() {
    let settings = RegistrySettings::from_yaml(EVERYTHING).unwrap();
    let json = serde_json::to_value(&settings).unwrap();
    let again = RegistrySettings::from_value(json.clone()).unwrap();
    assert_eq!(again, settings);
    // Durations are written back as human strings, `off` as `off`.
    assert_eq!(json["defaults"]["timeout"]["attempt"], "1s 500ms");
    assert_eq!(json["defaults"]["retry"]["retry_after_cap"], "off");
    assert_eq!(json["defaults"]["retry"]["jitter"], 0.2);
    // And the TOML of it loads to the same settings.
    let toml = toml::to_string(&settings).unwrap();
    assert_eq!(RegistrySettings::from_toml(&toml).unwrap(), settings);
    // The policy over the defaults: the time window and its rate inherited, the backoff
    // replaced field by field, the budget block whole.
    let payments = settings.resolved("payments").unwrap();
    let config = payments.circuit_breaker_config().unwrap();
    assert_eq!(
        config.window(),
        WindowKind::Time {
            duration: Duration::from_secs(30),
            buckets: 10
        }
    );
    assert_eq!(config.half_open_max_wait(), None);
    let retry = payments.retry_settings().unwrap();
    assert_eq!(retry.max_attempts, Some(4));
    assert_eq!(retry.multiplier, Some(3.0));
    assert_eq!(retry.budget.as_ref().unwrap().max_tokens, Some(10));
    assert_eq!(retry.budget.as_ref().unwrap().percent, None);
}
