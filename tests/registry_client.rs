//! The client stack's per-host breakers keep the stack's name across reloads, whether the
//! stack is reloaded through [`ClientReload::apply`] or from a registry file (real axum
//! servers, a real reqwest client).

mod common;

use axum::{Router, http::StatusCode, routing::get};
use common::http::{client, serve};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_rampart::{
    BoxError, circuit_breaker, health::BreakerSource, pipeline::StandardClientLayer,
    registry::Registry,
};

async fn server() -> String {
    serve(Router::new().route("/", get(|| async { StatusCode::OK }))).await
}

async fn get_from<S>(svc: &mut S, base: &str)
where
    S: Service<reqwest::Request, Response = reqwest::Response, Error = BoxError>,
{
    let req = reqwest::Request::new(reqwest::Method::GET, format!("{base}/").parse().unwrap());
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(res.status(), 200);
}

/// `host:port` of a base URL.
fn authority(base: &str) -> &str {
    base.trim_start_matches("http://")
}

fn names(layer: &StandardClientLayer) -> Vec<String> {
    let mut names: Vec<String> = layer
        .breakers()
        .handles()
        .into_iter()
        .map(|(_, h)| h.name().to_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn client_reload_apply_keeps_the_stacks_breaker_names() {
    let (a, b, c) = (server().await, server().await, server().await);
    let (layer, reload) = StandardClientLayer::builder()
        .name("payments")
        .build()
        .unwrap()
        .reloadable();
    let mut svc = ServiceBuilder::new().layer(layer.clone()).service(client());
    get_from(&mut svc, &a).await;
    assert_eq!(names(&layer), [format!("payments/{}", authority(&a))]);

    // New thresholds (the breakers are retuned), from a builder that leaves the name unset.
    reload
        .apply(
            StandardClientLayer::builder()
                .circuit_breaker(|d: circuit_breaker::Builder| d.failure_rate(0.5)),
        )
        .unwrap();
    get_from(&mut svc, &b).await;
    let mut want = vec![
        format!("payments/{}", authority(&a)),
        format!("payments/{}", authority(&b)),
    ];
    want.sort();
    assert_eq!(names(&layer), want, "a breaker made after a retune");

    // A new window (the breakers are replaced), from a builder named otherwise.
    reload
        .apply(
            StandardClientLayer::builder()
                .name("client")
                .circuit_breaker(|d: circuit_breaker::Builder| d.count_window(200)),
        )
        .unwrap();
    get_from(&mut svc, &c).await;
    assert_eq!(
        names(&layer),
        [format!("payments/{}", authority(&c))],
        "a breaker made after a replacement"
    );
    assert_eq!(layer.breakers().config().name(), "payments");
}

#[tokio::test]
async fn registry_client_breakers_keep_the_policy_name_across_reloads() {
    let (a, b) = (server().await, server().await);
    let file = |rate: &str| {
        format!(
            "policies:\n  payments:\n    critical: true\n    circuit_breaker:\n      failure_rate: {rate}\n"
        )
    };
    let registry = Registry::from_yaml(&file("0.5")).unwrap();
    let layer = registry.client("payments").unwrap();
    let mut svc = ServiceBuilder::new().layer(layer.clone()).service(client());
    get_from(&mut svc, &a).await;
    registry.reload_yaml(&file("0.4")).unwrap();
    get_from(&mut svc, &b).await;
    let mut want = vec![
        format!("payments/{}", authority(&a)),
        format!("payments/{}", authority(&b)),
    ];
    want.sort();
    assert_eq!(names(&layer), want);
    let mut critical: Vec<String> = registry
        .critical_host_breakers()
        .breakers()
        .iter()
        .map(|h| h.name().to_owned())
        .collect();
    critical.sort();
    assert_eq!(critical, want, "readiness lists them under the same names");
}

/// One host's open breaker in a critical client stack warns; more than half of the hosts open
/// fail the probe (every instance calls the same hosts: one host down must not take them all out).
#[tokio::test]
async fn a_critical_client_stack_fails_readiness_only_when_most_of_its_hosts_are_open() {
    let (a, b) = (server().await, server().await);
    let registry = Registry::from_yaml("policies:\n  payments:\n    critical: true\n").unwrap();
    let layer = registry.client("payments").unwrap();
    let mut svc = ServiceBuilder::new().layer(layer.clone()).service(client());
    get_from(&mut svc, &a).await;
    get_from(&mut svc, &b).await;
    let probe = serve(Router::new().route_service("/readyz", registry.readiness())).await;
    let ready = || async {
        let res = client()
            .get(format!("{probe}/readyz"))
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.text().await.unwrap())
    };
    assert_eq!(ready().await.0, 200);
    let handles = layer.breakers().handles();
    assert_eq!(handles.len(), 2);
    handles[0].1.force_open();
    let (status, body) = ready().await;
    assert_eq!(status, 200, "one host of two open only warns: {body}");
    assert!(body.contains("\"warn\""), "{body}");
    handles[1].1.force_open();
    let (status, body) = ready().await;
    assert_eq!(status, 503, "both hosts open fail the probe: {body}");
}
