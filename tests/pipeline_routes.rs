//! Per-route policies in the server pipeline, over real HTTP (axum on 127.0.0.1, reqwest): one
//! breaker per `MatchedPath` so that a failing route does not take the others down, a shared key
//! for unmatched requests, what an outer `ServiceBuilder` layer sees, and per-route timeouts
//! with `route_layer`.

mod common;

use std::time::Duration;

use axum::{
    Router,
    http::StatusCode,
    routing::{get, post},
};
use common::http::{client as http, get_text, never, serve, serve_addr};
use tower::ServiceBuilder;
use tower_rampart::{
    circuit_breaker::{self, MatchedRoute, State},
    health::{Readiness, Status},
    pipeline::StandardServerLayer,
};

/// Three failures in a row open a breaker.
fn three_in_a_row(defaults: circuit_breaker::Builder) -> circuit_breaker::Builder {
    defaults.consecutive_failures(3)
}

/// `/fail` always answers 500; `/items` and `/items/{id}` answer 200.
fn routes() -> Router {
    Router::new()
        .route("/fail", get(|| async { StatusCode::INTERNAL_SERVER_ERROR }))
        .route("/items", get(|| async { "items" }))
        .route("/items/{id}", get(|| async { "item" }))
}

/// The setup, kept as the contrast: with the pipeline's one breaker, `/fail` opening
/// it makes `/items` answer 503 too.
#[tokio::test]
async fn one_breaker_for_the_router_refuses_every_route() {
    let layer = StandardServerLayer::builder()
        .circuit_breaker(three_in_a_row)
        .build()
        .unwrap();
    let base = serve(routes().layer(layer.clone())).await;
    let client = http();
    for _ in 0..3 {
        let (status, _) = get_text(&client, format!("{base}/fail")).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    }
    assert_eq!(layer.breaker().state(), State::Open);
    let (status, _) = get_text(&client, format!("{base}/items")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn a_failing_route_opens_only_its_own_breaker() {
    let layer = StandardServerLayer::builder()
        .breaker_per_route()
        .circuit_breaker(three_in_a_row)
        .build()
        .unwrap();
    let base = serve(routes().layer(layer.clone())).await;
    let client = http();
    for _ in 0..3 {
        let (status, _) = get_text(&client, format!("{base}/fail")).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    }
    // `/fail`'s breaker is open and refuses it...
    let (status, body) = get_text(&client, format!("{base}/fail")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    // ...while the other routes keep answering.
    for path in ["/items", "/items/7", "/items/8"] {
        let (status, body) = get_text(&client, format!("{base}{path}")).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }

    // One breaker per route template (`/items/7` and `/items/8` share `/items/{id}`), named
    // `<name>/<route>`, steerable by the route.
    let family = layer.route_breakers();
    let mut keys: Vec<String> = family.keys().iter().map(|k| k.to_string()).collect();
    keys.sort();
    assert_eq!(keys, ["/fail", "/items", "/items/{id}"]);
    let fail = family.get("/fail").expect("a breaker for /fail");
    assert_eq!(fail.state(), State::Open);
    assert_eq!(fail.name(), "server//fail");
    assert_eq!(family.get("/items").unwrap().state(), State::Closed);

    // Readiness lists each route's breaker; the open one fails it when the family is critical.
    let report = Readiness::new()
        .critical(layer.route_breakers())
        .report()
        .await;
    assert_eq!(report.status, Status::Fail);
    let fail_check = report
        .get("server//fail:state")
        .next()
        .expect("a check for /fail");
    assert_eq!(fail_check.status, Status::Fail);
    let items_check = report
        .get("server//items:state")
        .next()
        .expect("a check for /items");
    assert_eq!(items_check.status, Status::Pass);
}

#[tokio::test]
async fn requests_no_route_matched_share_one_key() {
    let layer = StandardServerLayer::builder()
        .breaker_per_route()
        .circuit_breaker(three_in_a_row)
        .build()
        .unwrap();
    // The router's fallback fails: it answers every path no route matched.
    let app = routes()
        .fallback(|| async { StatusCode::BAD_GATEWAY })
        .layer(layer.clone());
    let base = serve(app).await;
    let client = http();
    for path in ["/nope", "/other", "/a/b/c"] {
        let (status, _) = get_text(&client, format!("{base}{path}")).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{path}");
    }
    // Three different unmatched paths, one key: its breaker is open for every unmatched path.
    let (status, _) = get_text(&client, format!("{base}/yet-another")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let family = layer.route_breakers();
    assert_eq!(
        family
            .keys()
            .iter()
            .map(|k| k.to_string())
            .collect::<Vec<_>>(),
        [MatchedRoute::UNMATCHED]
    );
    assert_eq!(
        family.get(MatchedRoute::UNMATCHED).unwrap().state(),
        State::Open
    );
    // Matched routes have their own breakers, closed.
    let (status, _) = get_text(&client, format!("{base}/items")).await;
    assert_eq!(status, StatusCode::OK);
}

/// A layer put around the whole router from outside (`ServiceBuilder` around
/// `Router::into_service`) runs before the router has matched a route: no `MatchedPath` yet,
/// so every request gets the unmatched key.
#[tokio::test]
async fn an_outer_layer_around_the_router_sees_no_matched_path() {
    let layer = StandardServerLayer::builder()
        .breaker_per_route()
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(routes().into_service::<axum::body::Body>());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let make = axum::ServiceExt::<axum::extract::Request>::into_make_service(svc);
    tokio::spawn(async move { axum::serve(listener, make).await.unwrap() });
    let client = http();
    for path in ["/items", "/items/7", "/fail"] {
        let _ = get_text(&client, format!("http://{addr}{path}")).await;
    }
    let keys: Vec<String> = layer
        .route_breakers()
        .keys()
        .iter()
        .map(|k| k.to_string())
        .collect();
    assert_eq!(keys, [MatchedRoute::UNMATCHED]);
}

/// A handler that takes 300 ms (an upload, say).
async fn slow() -> &'static str {
    tokio::time::sleep(Duration::from_millis(300)).await;
    "done"
}

/// Per-route timeouts: each group of routes gets its own pipeline with `route_layer`, so an
/// upload route may take longer than the API's default. (A layer on the whole router bounds
/// every route: an inner route layer can shorten that bound, never lengthen it.)
#[tokio::test]
async fn route_layers_give_routes_their_own_timeouts() {
    let api = StandardServerLayer::builder()
        .timeout(Duration::from_millis(100))
        .breaker_per_route()
        .build()
        .unwrap();
    let uploads = StandardServerLayer::builder()
        .timeout(Duration::from_millis(2_000))
        .breaker_per_route()
        .circuit_breaker(|defaults| defaults.name("uploads"))
        .build()
        .unwrap();
    let app = Router::new()
        // Never answers: the API's 100 ms timeout cuts it, as it would cut the upload.
        .route("/report", post(never))
        .route_layer(api.clone())
        .merge(
            Router::new()
                .route("/upload", post(slow))
                .route_layer(uploads.clone()),
        );
    let addr = serve_addr(app).await;
    let client = http();
    let res = client
        .post(format!("http://{addr}/report"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    let res = client
        .post(format!("http://{addr}/upload"))
        .body(vec![0u8; 64 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.text().await.unwrap(), "done");
    // Each group's breakers know only their own routes.
    assert_eq!(
        api.route_breakers()
            .keys()
            .iter()
            .map(|k| k.to_string())
            .collect::<Vec<_>>(),
        ["/report"]
    );
    let upload = uploads.route_breakers().get("/upload").unwrap();
    assert_eq!(upload.name(), "uploads//upload");
}
