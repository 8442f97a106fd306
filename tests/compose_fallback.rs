//! HTTP fallbacks (#9, item 3), over real HTTP: a canned JSON response in front of a breaker
//! and a timeout in HTTP mode on an axum server, and a backup service whose copy rule is chosen
//! when the layer is built, in a reqwest client stack.

mod common;

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Router, http::StatusCode, routing::any};
use common::{
    breakers::server_side,
    http::{client, http_timeout, never, serve, serve_addr},
};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_rampart::{
    BoxError,
    circuit_breaker::Config,
    classify::HttpStatus,
    fallback::{Event, EventKind, FallbackLayer, Trigger},
    replay::HttpReplay,
    timeout::{Elapsed, TimeoutLayer},
};

const CANNED: &str = r#"{"price":"41.80","stale":true}"#;

/// A handler's own 503, not a breaker's.
async fn busy() -> (StatusCode, &'static str) {
    (StatusCode::SERVICE_UNAVAILABLE, "handler busy")
}

/// Collects a fallback layer's events.
fn events() -> (
    Arc<Mutex<Vec<Event>>>,
    impl Fn(&Event) + Send + Sync + 'static,
) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    (seen, move |e: &Event| sink.lock().unwrap().push(*e))
}

/// The trigger and kind of each event seen.
fn triggers(seen: &Mutex<Vec<Event>>) -> Vec<(Trigger, EventKind)> {
    seen.lock()
        .unwrap()
        .iter()
        .map(|e| (e.trigger, e.kind))
        .collect()
}

#[tokio::test]
async fn canned_json_answers_for_an_open_breaker_and_a_timeout() {
    let breaker = server_side(Config::builder().name("quotes").build().unwrap());
    let handle = breaker.handle();
    let (seen, sink) = events();
    let app = Router::new()
        .route("/quote", any(|| async { "42.00" }))
        .route("/slow", any(never))
        .route("/busy", any(busy))
        .layer(
            ServiceBuilder::new()
                .layer(
                    FallbackLayer::json(StatusCode::OK, CANNED)
                        .on(&[Trigger::CircuitOpen, Trigger::Timeout])
                        .recognise_http()
                        .on_event(sink),
                )
                .layer(breaker)
                .layer(http_timeout(Duration::from_millis(100))),
        );
    let base = serve(app).await;
    let client = client();
    let get = |path: &str| {
        let req = client.get(format!("{base}{path}"));
        async move {
            let res = req.send().await.unwrap();
            let status = res.status();
            let kind = res
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned());
            (status, kind, res.text().await.unwrap())
        }
    };

    assert_eq!(
        get("/quote").await,
        (
            StatusCode::OK,
            Some("text/plain; charset=utf-8".into()),
            "42.00".into()
        )
    );
    let json = Some("application/json".to_owned());
    assert_eq!(
        get("/slow").await,
        (StatusCode::OK, json.clone(), CANNED.into()),
        "the timeout's 504 became the canned JSON"
    );
    assert_eq!(
        get("/busy").await,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Some("text/plain; charset=utf-8".into()),
            "handler busy".into()
        ),
        "the handler's own 503 is not the breaker's"
    );
    handle.force_open();
    assert_eq!(
        get("/quote").await,
        (StatusCode::OK, json.clone(), CANNED.into()),
        "the open breaker's 503 became the canned JSON"
    );
    // Served twice more from the same shared bytes.
    assert_eq!(get("/quote").await.2, CANNED);
    assert_eq!(
        triggers(&seen),
        [
            (Trigger::Timeout, EventKind::FellBack),
            (Trigger::CircuitOpen, EventKind::FellBack),
            (Trigger::CircuitOpen, EventKind::FellBack),
        ]
    );
}

#[tokio::test]
async fn canned_response_keeps_its_headers_and_status() {
    let mut headers = http::HeaderMap::new();
    headers.insert("content-type", "text/plain".parse().unwrap());
    headers.insert("x-degraded", "cache".parse().unwrap());
    let app = Router::new().route("/", any(never)).layer(
        ServiceBuilder::new()
            .layer(
                FallbackLayer::response(
                    StatusCode::NON_AUTHORITATIVE_INFORMATION,
                    headers,
                    "cached",
                )
                .recognise_http(),
            )
            .layer(http_timeout(Duration::from_millis(50))),
    );
    let base = serve(app).await;
    let res = client().get(&base).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NON_AUTHORITATIVE_INFORMATION);
    assert_eq!(res.headers()["x-degraded"], "cache");
    assert_eq!(res.headers()["content-type"], "text/plain");
    assert_eq!(res.text().await.unwrap(), "cached");
}

/// A primary that never answers in time and a backup that counts its calls, both real servers;
/// the client stack is fallback (backup service) > timeout > reqwest.
struct Servers {
    primary: SocketAddr,
    backup: SocketAddr,
    backup_hits: Arc<AtomicUsize>,
}

async fn servers() -> Servers {
    let primary = serve_addr(Router::new().route("/order", any(never))).await;
    let backup_hits = Arc::new(AtomicUsize::new(0));
    let hits = backup_hits.clone();
    let backup = serve_addr(Router::new().route(
        "/order",
        any(move |method: axum::http::Method, body: String| {
            hits.fetch_add(1, Ordering::SeqCst);
            async move { format!("backup {method} {body}") }
        }),
    ))
    .await;
    Servers {
        primary,
        backup,
        backup_hits,
    }
}

/// The servers, the client stack over them with the backup service's copy rule `replay`, and
/// the events its fallback reports.
async fn stack(
    replay: HttpReplay,
) -> (
    Servers,
    Arc<Mutex<Vec<Event>>>,
    impl Service<reqwest::Request, Response = reqwest::Response, Error = BoxError> + Clone,
) {
    let servers = servers().await;
    let (seen, sink) = events();
    let client = client();
    let backup_addr = servers.backup;
    let backup_client = client.clone();
    // The backup sends the copy to the backup server.
    let backup = service_fn(move |mut req: reqwest::Request| {
        let client = backup_client.clone();
        req.url_mut().set_port(Some(backup_addr.port())).unwrap();
        async move { client.execute(req).await.map_err(BoxError::from) }
    });
    let svc = ServiceBuilder::new()
        .layer(
            FallbackLayer::service(backup, replay)
                .on(&[Trigger::Timeout, Trigger::Error])
                .on_event(sink),
        )
        .layer(TimeoutLayer::new(Duration::from_millis(200)).unwrap())
        .service(client);
    (servers, seen, svc)
}

/// The body of the answer `svc` gives to `req`.
async fn text_of<S>(svc: &S, req: reqwest::Request) -> String
where
    S: Service<reqwest::Request, Response = reqwest::Response, Error = BoxError> + Clone,
{
    let res = svc.clone().oneshot(req).await.unwrap();
    res.text().await.unwrap()
}

#[tokio::test]
async fn backup_service_under_the_default_http_rule() {
    let (servers, seen, svc) = stack(HttpReplay::default()).await;
    let url = format!("http://{}/order", servers.primary);
    let c = client();

    // GET: safe to send again, the backup answers.
    let get = c.get(&url).build().unwrap();
    assert_eq!(text_of(&svc, get).await, "backup GET ");
    assert_eq!(servers.backup_hits.load(Ordering::SeqCst), 1);

    // POST without a key: not copied, so the backup is skipped, visibly: the timeout stands
    // and the layer reports the skip.
    let post = c.post(&url).body("{\"qty\":1}").build().unwrap();
    let err = svc.clone().oneshot(post).await.unwrap_err();
    assert!(err.downcast_ref::<Elapsed>().is_some(), "{err}");
    assert_eq!(
        servers.backup_hits.load(Ordering::SeqCst),
        1,
        "backup not called"
    );

    // POST with an Idempotency-Key: the backup answers.
    let keyed = c
        .post(&url)
        .header("idempotency-key", "\"order-1\"")
        .body("{\"qty\":1}")
        .build()
        .unwrap();
    assert_eq!(text_of(&svc, keyed).await, "backup POST {\"qty\":1}");
    assert_eq!(servers.backup_hits.load(Ordering::SeqCst), 2);

    assert_eq!(
        triggers(&seen),
        [
            (Trigger::Timeout, EventKind::FellBack),
            (Trigger::Timeout, EventKind::BackupSkipped),
            (Trigger::Timeout, EventKind::FellBack),
        ]
    );
}

#[tokio::test]
async fn backup_service_under_any_method() {
    let (servers, seen, svc) = stack(HttpReplay::any_method()).await;
    let url = format!("http://{}/order", servers.primary);
    let c = client();

    let get = c.get(&url).build().unwrap();
    assert_eq!(text_of(&svc, get).await, "backup GET ");
    let post = c.post(&url).body("{\"qty\":2}").build().unwrap();
    assert_eq!(text_of(&svc, post).await, "backup POST {\"qty\":2}");
    assert_eq!(servers.backup_hits.load(Ordering::SeqCst), 2);
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .all(|e| e.kind == EventKind::FellBack)
    );
}

/// The fallback recognises a breaker's refusal the way retry does, through the classifier
/// (`Classify::is_refused`): with the HTTP classifier, the breaker's 503 triggers
/// `CircuitOpen` without `recognise_http`, and a handler's own 503 does not.
#[tokio::test]
async fn the_classifier_recognises_the_breakers_503() {
    let breaker = server_side(Config::builder().name("classified").build().unwrap());
    let handle = breaker.handle();
    let app = Router::new()
        .route("/", any(|| async { "live" }))
        .route("/busy", any(busy))
        .layer(
            ServiceBuilder::new()
                .layer(
                    FallbackLayer::json(StatusCode::OK, CANNED)
                        .on(&[Trigger::CircuitOpen])
                        .classify(HttpStatus::default()),
                )
                .layer(breaker),
        );
    let base = serve(app).await;
    let c = client();
    let res = c.get(format!("{base}/busy")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    handle.force_open();
    let res = c.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.text().await.unwrap(), CANNED);
}
