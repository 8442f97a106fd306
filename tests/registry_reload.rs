//! The registry over real HTTP: layers built by name, live reload under traffic, readiness from
//! the registry's breakers, and fault injection switched by the registry file.

mod common;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

use axum::{
    Router,
    http::{HeaderMap, StatusCode},
    routing::get,
};
use common::http::{client, serve};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_rampart::{
    BoxError,
    circuit_breaker::{CircuitOpen, State},
    classify::HttpStatus,
    health::BreakerSource,
    registry::{Registry, ReloadOutcome},
};

/// Answers every request with `status`, counting hits per `x-call` header.
#[derive(Clone, Default)]
struct Counter(Arc<Mutex<HashMap<String, usize>>>, Arc<AtomicUsize>);

impl Counter {
    fn hit(&self, headers: &HeaderMap) {
        self.1.fetch_add(1, SeqCst);
        if let Some(id) = headers.get("x-call") {
            let id = id.to_str().unwrap().to_owned();
            *self.0.lock().unwrap().entry(id).or_default() += 1;
        }
    }
    fn total(&self) -> usize {
        self.1.load(SeqCst)
    }
    fn per_call(&self) -> HashMap<String, usize> {
        self.0.lock().unwrap().clone()
    }
}

async fn server(counter: Counter) -> String {
    let (c1, c2) = (counter.clone(), counter);
    let app = Router::new()
        .route(
            "/down",
            get(move |h: HeaderMap| async move {
                c1.hit(&h);
                StatusCode::SERVICE_UNAVAILABLE
            }),
        )
        .route(
            "/ok",
            get(move |h: HeaderMap| async move {
                c2.hit(&h);
                StatusCode::OK
            }),
        );
    serve(app).await
}

fn request(base: &str, path: &str, call: Option<usize>) -> reqwest::Request {
    let mut req = reqwest::Request::new(
        reqwest::Method::GET,
        format!("{base}{path}").parse().unwrap(),
    );
    if let Some(id) = call {
        req.headers_mut()
            .insert("x-call", id.to_string().parse().unwrap());
    }
    req
}

async fn call<S>(svc: &mut S, req: reqwest::Request) -> Result<reqwest::Response, BoxError>
where
    S: Service<reqwest::Request, Response = reqwest::Response, Error = BoxError>,
{
    svc.ready().await?.call(req).await
}

const FILE: &str = r#"
defaults:
  timeout: { total: 10s, attempt: 2s }
  retry:
    max_attempts: 2
    backoff: constant
    initial_delay: 1ms
    budget: { enabled: false }
policies:
  payment-gateway:
    critical: true
    circuit_breaker:
      sliding_window_size: 10
      failure_rate: 0.6
      minimum_calls: 4
  search:
    retry: { max_attempts: 3 }
"#;

#[test]
fn layers_are_built_by_name_and_unknown_names_fail_at_start_up() {
    let registry = Registry::from_yaml(FILE).unwrap();
    assert_eq!(registry.policy_names(), ["payment-gateway", "search"]);
    registry.client("payment-gateway").unwrap();
    registry.circuit_breaker("payment-gateway").unwrap();
    registry.http_retry("search").unwrap();
    assert_eq!(
        registry.timeout("search").unwrap().timeout(),
        Duration::from_secs(10)
    );
    let err = registry.client("paymentgateway").unwrap_err();
    assert_eq!(
        err.to_string(),
        "policies.paymentgateway: no such policy (known: payment-gateway, search)"
    );
    // Inheritance: `search` overrides max_attempts and keeps the defaults' backoff and budget.
    let search = registry.policy("search").unwrap();
    let retry = search.retry_settings().unwrap();
    assert_eq!(retry.max_attempts, Some(3));
    assert_eq!(retry.initial_delay, Some(Duration::from_millis(1)));
    // The same file in TOML.
    let toml = Registry::from_toml(
        r#"
[defaults.timeout]
total = "10s"
attempt = "2s"
[defaults.retry]
max_attempts = 2
backoff = "constant"
initial_delay = "1ms"
budget = { enabled = false }
[policies.payment-gateway]
critical = true
circuit_breaker = { sliding_window_size = 10, failure_rate = 0.6, minimum_calls = 4 }
[policies.search]
retry = { max_attempts = 3 }
"#,
    )
    .unwrap();
    assert_eq!(toml.settings(), registry.settings());
}

#[tokio::test]
async fn a_reload_retunes_a_running_breaker_without_resetting_it() {
    let counter = Counter::default();
    let base = server(counter.clone()).await;
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let registry = Registry::builder()
        .on_reload(move |e| {
            let line = match e.outcome {
                ReloadOutcome::Applied { changed } => {
                    format!("{} applied {changed:?}", e.generation)
                }
                ReloadOutcome::Rejected { error } => format!("{} rejected {error}", e.generation),
                _ => unreachable!(),
            };
            seen.lock().unwrap().push(line);
        })
        .from_yaml(FILE)
        .unwrap();
    let layer = registry
        .circuit_breaker("payment-gateway")
        .unwrap()
        .classify(HttpStatus::default());
    let mut svc = ServiceBuilder::new().layer(layer).service(client());

    // Two failures in four calls: 50 %, below the 60 % threshold.
    for path in ["/down", "/ok", "/down", "/ok"] {
        call(&mut svc, request(&base, path, None)).await.unwrap();
    }
    let handle = registry.breakers().pop().unwrap();
    assert_eq!(handle.state(), State::Closed);

    // A bad file changes nothing and says why.
    let bad = FILE.replace("failure_rate: 0.6", "failure_rate: 1.6");
    let err = registry.reload_yaml(&bad).unwrap_err();
    assert_eq!(
        err.to_string(),
        "policies.payment-gateway.circuit_breaker.failure_rate: must be in (0, 1], got 1.6"
    );
    assert_eq!(registry.generation(), 1);

    // Lower the threshold to 50 %: the window keeps its four calls, so one more failure
    // (3 of 5) opens the breaker. A reset window would hold one call, below minimum_calls.
    registry
        .reload_yaml(&FILE.replace("failure_rate: 0.6", "failure_rate: 0.5"))
        .unwrap();
    assert_eq!(registry.generation(), 2);
    assert_eq!(handle.snapshot().calls, 4, "the window was kept");
    call(&mut svc, request(&base, "/down", None)).await.unwrap();
    assert_eq!(handle.state(), State::Open);
    let err = call(&mut svc, request(&base, "/ok", None))
        .await
        .unwrap_err();
    assert!(err.downcast_ref::<CircuitOpen>().is_some());
    assert_eq!(counter.total(), 5);

    assert_eq!(
        *events.lock().unwrap(),
        [
            "1 rejected policies.payment-gateway.circuit_breaker.failure_rate: must be in (0, 1], got 1.6",
            "2 applied [\"payment-gateway\"]",
        ]
    );
}

#[tokio::test]
async fn a_window_change_replaces_the_breaker_in_its_state_and_readiness_follows_it() {
    let counter = Counter::default();
    let base = server(counter.clone()).await;
    let registry = Registry::from_yaml(FILE).unwrap();
    let app = Router::new().route_service("/readyz", registry.readiness());
    let ready = serve(app).await;
    let probe = |url: String| async move {
        let res = client().get(url).send().await.unwrap();
        let status = res.status().as_u16();
        let body: serde_json::Value = serde_json::from_str(&res.text().await.unwrap()).unwrap();
        (status, body["status"].as_str().unwrap().to_owned())
    };
    let payments = registry
        .circuit_breaker("payment-gateway")
        .unwrap()
        .classify(HttpStatus::default());
    let search = registry.circuit_breaker("search").unwrap();
    let mut svc = ServiceBuilder::new().layer(payments).service(client());
    let _search = ServiceBuilder::new().layer(search).service(client());
    assert_eq!(probe(format!("{ready}/readyz")).await, (200, "pass".into()));

    for _ in 0..4 {
        call(&mut svc, request(&base, "/down", None)).await.unwrap();
    }
    // payment-gateway is critical: open fails readiness.
    assert_eq!(probe(format!("{ready}/readyz")).await, (503, "fail".into()));
    let search_handle = registry
        .breakers()
        .into_iter()
        .find(|h| h.name() == "search")
        .unwrap();
    search_handle.force_open();
    assert_eq!(registry.critical_breakers().breakers().len(), 1);
    assert_eq!(registry.other_breakers().breakers().len(), 1);

    // A new window kind: a new breaker with an empty window replaces the open one, for running
    // services and for readiness alike, and stays open (a reload never lets traffic through to
    // a downstream known to be failing).
    registry
        .reload_yaml(&FILE.replace("sliding_window_size: 10", "time_window: 30s"))
        .unwrap();
    let payments_handle = registry
        .breakers()
        .into_iter()
        .find(|h| h.name() == "payment-gateway")
        .unwrap();
    assert_eq!(payments_handle.snapshot().calls, 0, "a new window");
    assert_eq!(payments_handle.state(), State::Open);
    assert_eq!(probe(format!("{ready}/readyz")).await, (503, "fail".into()));
    let err = call(&mut svc, request(&base, "/ok", None))
        .await
        .unwrap_err();
    assert!(err.downcast_ref::<CircuitOpen>().is_some());
    // Reset by an operator: `search` (forced open, not critical) only warns.
    payments_handle.reset();
    assert_eq!(probe(format!("{ready}/readyz")).await, (200, "warn".into()));
    let res = call(&mut svc, request(&base, "/ok", None)).await.unwrap();
    assert_eq!(res.status(), 200);
}

/// Two policies a reload alternates between: a call makes 2 attempts under one, 4 under the
/// other, never anything else.
fn attempts_file(attempts: u32, total: &str) -> String {
    format!(
        r#"
policies:
  search:
    timeout: {{ total: {total} }}
    retry:
      max_attempts: {attempts}
      backoff: constant
      initial_delay: 1ms
      budget: {{ enabled: false }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_traffic_lose_no_call_and_mix_no_policy() {
    let counter = Counter::default();
    let base = server(counter.clone()).await;
    let registry = Registry::from_yaml(&attempts_file(2, "10s")).unwrap();
    let svc = ServiceBuilder::new()
        .layer(registry.timeout("search").unwrap())
        .layer(registry.http_retry("search").unwrap())
        .service(client());

    let stop = Arc::new(AtomicBool::new(false));
    let reloader = {
        let (registry, stop) = (registry.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(SeqCst) {
                n += 1;
                let file = if n.is_multiple_of(2) {
                    attempts_file(2, "10s")
                } else {
                    attempts_file(4, "9s")
                };
                registry.reload_yaml(&file).unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            n
        })
    };
    let issued = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for t in 0..8 {
        let (mut svc, base, issued) = (svc.clone(), base.clone(), issued.clone());
        tasks.push(tokio::spawn(async move {
            let mut answered = 0;
            for i in 0..50 {
                issued.fetch_add(1, SeqCst);
                let res = call(&mut svc, request(&base, "/down", Some(t * 1000 + i)))
                    .await
                    .unwrap();
                assert_eq!(res.status(), 503);
                answered += 1;
            }
            answered
        }));
    }
    let mut answered = 0;
    for t in tasks {
        answered += t.await.unwrap();
    }
    stop.store(true, SeqCst);
    let reloads = reloader.await.unwrap();
    assert!(reloads > 10, "only {reloads} reloads during the run");
    assert_eq!(answered, 400);
    assert_eq!(issued.load(SeqCst), 400, "no call lost");

    let per_call = counter.per_call();
    assert_eq!(per_call.len(), 400, "every call reached the server");
    let mut seen = HashMap::<usize, usize>::new();
    for (id, attempts) in per_call {
        assert!(
            attempts == 2 || attempts == 4,
            "call {id} made {attempts} attempts"
        );
        *seen.entry(attempts).or_default() += 1;
    }
    assert!(seen.len() == 2, "both policies served calls: {seen:?}");
}

#[tokio::test]
async fn a_reload_changes_the_client_stack_and_refuses_to_remove_a_running_policy() {
    let counter = Counter::default();
    let base = server(counter.clone()).await;
    let registry = Registry::from_yaml(FILE).unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(registry.client("search").unwrap())
        .service(client());
    call(&mut svc, request(&base, "/down", Some(1)))
        .await
        .unwrap();
    assert_eq!(counter.per_call()["1"], 3);

    registry
        .reload_yaml(&FILE.replace("retry: { max_attempts: 3 }", "retry: { max_attempts: 5 }"))
        .unwrap();
    call(&mut svc, request(&base, "/down", Some(2)))
        .await
        .unwrap();
    assert_eq!(counter.per_call()["2"], 5);

    // Removing a policy that layers run on is refused, and changes nothing.
    let removed = FILE.replace("  search:\n    retry: { max_attempts: 3 }\n", "");
    let err = registry.reload_yaml(&removed).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("policies.search: layers built from this policy are running"),
        "{err}"
    );
    assert_eq!(registry.generation(), 2);
    call(&mut svc, request(&base, "/down", Some(3)))
        .await
        .unwrap();
    assert_eq!(
        counter.per_call()["3"],
        5,
        "the refused file changed nothing"
    );

    // New error names reach the running classifier: a 503 is no longer retried.
    let renamed = FILE.replace(
        "retry: { max_attempts: 3 }",
        "retry: { max_attempts: 5, retry_on: [\"429\"] }",
    );
    registry.reload_yaml(&renamed).unwrap();
    call(&mut svc, request(&base, "/down", Some(4)))
        .await
        .unwrap();
    assert_eq!(counter.per_call()["4"], 1);
    let renamed = FILE.replace(
        "retry: { max_attempts: 3 }",
        "retry: { max_attempts: 5, retry_on: [\"5xx\"] }",
    );
    registry.reload_yaml(&renamed).unwrap();
    call(&mut svc, request(&base, "/down", Some(5)))
        .await
        .unwrap();
    assert_eq!(counter.per_call()["5"], 5);
}

#[tokio::test]
async fn the_registry_file_switches_fault_injection() {
    let file = |chaos: &str| format!("policies:\n  inventory:\n{chaos}");
    let registry = Registry::from_yaml(&file("    critical: false\n")).unwrap();
    let app = Router::new()
        .route("/", get(|| async { "stock" }))
        .layer(registry.chaos("inventory").unwrap().respond_http());
    let base = serve(app).await;
    let http = client();
    let statuses = |n: usize| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let mut out = Vec::new();
            for _ in 0..n {
                out.push(http.get(&base).send().await.unwrap().status().as_u16());
            }
            out
        }
    };
    // No chaos section: never injects.
    assert!(statuses(20).await.iter().all(|s| *s == 200));
    registry
        .reload_yaml(&file(
            "    chaos:\n      enabled: true\n      injection_rate: 1.0\n      fault: http\n      status: 503\n      retry_after: 2s\n",
        ))
        .unwrap();
    let res = http.get(&base).send().await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "2");
    assert!(statuses(20).await.iter().all(|s| *s == 503));
    // Half the calls, seeded: the same count every run.
    registry
        .reload_yaml(&file(
            "    chaos:\n      enabled: true\n      injection_rate: 0.5\n      seed: 7\n      fault: http\n      status: 500\n",
        ))
        .unwrap();
    let mixed = statuses(200).await;
    let injected = mixed.iter().filter(|s| **s == 500).count();
    assert!((60..=140).contains(&injected), "{injected} of 200");
    // Switched off by the file.
    registry
        .reload_yaml(&file("    chaos:\n      enabled: false\n"))
        .unwrap();
    assert!(statuses(20).await.iter().all(|s| *s == 200));
}

/// An application's own error, known to configuration files by its variants' names.
#[derive(Debug)]
enum PaymentError {
    CardDeclined,
    GatewayBusy,
}

impl std::fmt::Display for PaymentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

impl std::error::Error for PaymentError {}

impl tower_rampart::classify::NamedError for PaymentError {
    const NAMES: &'static [&'static str] = &["CardDeclined", "GatewayBusy"];

    fn error_name(&self) -> &str {
        match self {
            PaymentError::CardDeclined => "CardDeclined",
            PaymentError::GatewayBusy => "GatewayBusy",
        }
    }
}

#[tokio::test(start_paused = true)]
async fn the_registry_retries_the_applications_own_errors_by_name() {
    let file = "policies:\n  payments:\n    retry:\n      max_attempts: 3\n      retry_on: [GatewayBusy]\n";
    // Unregistered names are typos until proven otherwise.
    let err = Registry::from_yaml(file).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("policies.payments.retry.retry_on[0]: "),
        "{err}"
    );
    let names = tower_rampart::classify::ErrorNames::default().register::<PaymentError>();
    let registry = Registry::builder()
        .error_names(names)
        .from_yaml(file)
        .unwrap();
    let layer = registry
        .retry("payments", tower_rampart::classify::AnyError)
        .unwrap();
    let attempts = Arc::new(AtomicUsize::new(0));
    let svc = |fail: fn() -> PaymentError| {
        let attempts = attempts.clone();
        ServiceBuilder::new()
            .layer(layer.clone())
            .service_fn(move |_: ()| {
                attempts.fetch_add(1, SeqCst);
                async move { Err::<(), BoxError>(Box::new(fail())) }
            })
    };
    svc(|| PaymentError::GatewayBusy)
        .oneshot(())
        .await
        .unwrap_err();
    assert_eq!(attempts.swap(0, SeqCst), 3, "retried: named in retry_on");
    svc(|| PaymentError::CardDeclined)
        .oneshot(())
        .await
        .unwrap_err();
    assert_eq!(attempts.swap(0, SeqCst), 1, "not named: not retried");
}

/// Runs `f` on its own thread and waits for it at most 10 s: a deadlock fails the test instead
/// of hanging it (the stuck thread is left behind).
fn within_10s<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("{what} did not return within 10 s: deadlocked"))
}

#[test]
fn every_reload_listener_may_read_the_registry() {
    let cell = Arc::new(std::sync::OnceLock::<Registry>::new());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (reader, log) = (cell.clone(), seen.clone());
    let registry = Registry::builder()
        .on_reload(move |e| {
            // Reads the registry it listens to: takes its lock.
            let now = reader.get().unwrap().generation();
            let kind = match e.outcome {
                ReloadOutcome::Applied { .. } => "applied",
                ReloadOutcome::Rejected { .. } => "rejected",
                _ => "unchanged",
            };
            log.lock()
                .unwrap()
                .push(format!("{kind} {} {now}", e.generation));
        })
        .from_yaml(FILE)
        .unwrap();
    cell.set(registry.clone()).ok().unwrap();

    // Refused while checking the file against the layers built (under the lock).
    let r = registry.clone();
    registry.timeout("search").unwrap();
    let removed = FILE.replace("  search:\n    retry: { max_attempts: 3 }\n", "");
    let err = within_10s("a rejected reload", move || r.reload_yaml(&removed));
    assert!(err.is_err());
    // Refused by the checks of the file.
    let r = registry.clone();
    let bad = FILE.replace("failure_rate: 0.6", "failure_rate: 1.6");
    assert!(within_10s("a rejected reload", move || r.reload_yaml(&bad)).is_err());
    // Refused before reaching the registry (syntax), applied, unchanged.
    let r = registry.clone();
    assert!(within_10s("a rejected reload", move || r.reload_yaml("policies: [")).is_err());
    let r = registry.clone();
    let changed = FILE.replace("failure_rate: 0.6", "failure_rate: 0.5");
    assert_eq!(
        within_10s("an applied reload", move || r.reload_yaml(&changed)),
        Ok(2)
    );
    let r = registry.clone();
    let same = FILE.replace("failure_rate: 0.6", "failure_rate: 0.5");
    assert_eq!(
        within_10s("an unchanged reload", move || r.reload_yaml(&same)),
        Ok(2)
    );
    assert_eq!(
        *seen.lock().unwrap(),
        [
            "rejected 1 1",
            "rejected 1 1",
            "rejected 1 1",
            "applied 2 2",
            "unchanged 2 2"
        ]
    );
}

#[test]
fn a_reload_that_changes_nothing_keeps_the_generation_and_says_so() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let registry = Registry::builder()
        .on_reload(move |e| {
            let line = match e.outcome {
                ReloadOutcome::Applied { changed } => {
                    format!("{} applied {changed:?}", e.generation)
                }
                ReloadOutcome::Rejected { error } => format!("{} rejected {error}", e.generation),
                ReloadOutcome::Unchanged => format!("{} unchanged", e.generation),
                _ => unreachable!(),
            };
            seen.lock().unwrap().push(line);
        })
        .from_yaml(FILE)
        .unwrap();
    let timeout = registry.timeout("search").unwrap();
    // The same file, and the same settings written differently (a comment, flow style, keys
    // in another order): nothing changes.
    assert_eq!(registry.reload_yaml(FILE), Ok(1));
    let restyled = format!(
        "# reformatted\n{}",
        FILE.replace(
            "retry: { max_attempts: 3 }",
            "retry:\n      max_attempts: 3"
        )
    );
    assert_eq!(registry.reload_yaml(&restyled), Ok(1));
    assert_eq!(registry.generation(), 1);
    // A change to the defaults changes every policy; removing a policy nothing was built from
    // is a change too, and names it.
    let longer = FILE.replace("total: 10s", "total: 12s");
    assert_eq!(registry.reload_yaml(&longer), Ok(2));
    assert_eq!(timeout.timeout(), Duration::from_secs(12));
    let fewer = longer.replace(
        "  payment-gateway:\n    critical: true\n    circuit_breaker:\n      sliding_window_size: 10\n      failure_rate: 0.6\n      minimum_calls: 4\n",
        "",
    );
    assert_eq!(registry.reload_yaml(&fewer), Ok(3));
    assert_eq!(
        *events.lock().unwrap(),
        [
            "1 unchanged",
            "1 unchanged",
            "2 applied [\"payment-gateway\", \"search\"]",
            "3 applied [\"payment-gateway\"]",
        ]
    );
}

#[test]
fn a_failed_build_does_not_pin_its_policy() {
    let registry = Registry::from_yaml(FILE).unwrap();
    // `search` sets no `timeout.total` of its own... in a file without defaults.
    let file = "policies:\n  search: {}\n  payments: {}\n";
    registry.reload_yaml(file).unwrap();
    let err = registry.timeout("search").unwrap_err();
    assert_eq!(
        err.to_string(),
        "policies.search.timeout.total: is needed for a timeout layer"
    );
    // Nothing runs on `search`: a reload may remove it.
    assert_eq!(registry.reload_yaml("policies:\n  payments: {}\n"), Ok(3));
    // A layer that was built does pin its policy.
    registry.timeout("payments").unwrap_err();
    registry.client("payments").unwrap();
    let err = registry
        .reload_yaml("policies:\n  other: {}\n")
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("policies.payments: layers built from this policy are running"),
        "{err}"
    );
}

#[test]
fn an_empty_file_is_refused_on_reload_and_changes_nothing() {
    let registry = Registry::from_yaml(FILE).unwrap();
    for empty in ["", "# emptied by a deploy script\n"] {
        let err = registry.reload_yaml(empty).unwrap_err();
        assert!(err.to_string().starts_with("the file is empty"), "{err}");
        let err = registry.reload_toml(empty).unwrap_err();
        assert!(err.to_string().starts_with("the file is empty"), "{err}");
    }
    assert_eq!(registry.generation(), 1);
    assert_eq!(registry.policy_names(), ["payment-gateway", "search"]);
}
