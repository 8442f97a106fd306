//! Fallbacks: only the chosen triggers, values, functions and services, on axum over real HTTP.

mod common;

use std::{convert::Infallible, time::Duration};

use axum::{http::StatusCode, response::IntoResponse, routing::get};
use common::{
    breakers::server_side,
    http::{client, get_text, http_timeout, never, serve},
};
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};
use tower_rampart::{
    BoxError,
    circuit_breaker::{CircuitBreakerLayer, Config},
    classify::HttpStatus,
    fallback::{Cause, FallbackLayer, Trigger},
    timeout::TimeoutLayer,
};

#[tokio::test(start_paused = true)]
async fn only_the_chosen_triggers_fire() {
    let inner =
        service_fn(|fail: bool| async move { if fail { Err("boom") } else { Ok("fresh") } });
    let mut on_errors = FallbackLayer::value("stale")
        .on(&[Trigger::Error])
        .layer(inner);
    assert_eq!(
        on_errors.ready().await.unwrap().call(true).await,
        Ok("stale")
    );
    assert_eq!(
        on_errors.ready().await.unwrap().call(false).await,
        Ok("fresh")
    );

    // The default triggers (circuit open, timeout) leave a plain error alone.
    let mut defaults = FallbackLayer::value("stale").layer(inner);
    assert_eq!(
        defaults.ready().await.unwrap().call(true).await,
        Err("boom")
    );
}

#[tokio::test(start_paused = true)]
async fn circuit_open_and_timeout_errors_are_recognised() {
    let breaker = CircuitBreakerLayer::new(Config::builder().build().unwrap());
    breaker.handle().force_open();
    let mut svc = ServiceBuilder::new()
        .layer(FallbackLayer::from_fn(|cause: Cause<&str, BoxError>| {
            assert!(cause.circuit_open().is_some());
            "degraded"
        }))
        .layer(breaker)
        .service_fn(|_: ()| async { Ok::<_, Infallible>("live") });
    assert_eq!(
        svc.ready().await.unwrap().call(()).await.unwrap(),
        "degraded"
    );

    let mut slow = ServiceBuilder::new()
        .layer(FallbackLayer::from_fn(|cause: Cause<&str, BoxError>| {
            assert_eq!(cause.trigger(), Trigger::Timeout);
            assert_eq!(cause.elapsed().unwrap().after(), Duration::from_millis(50));
            "cached"
        }))
        .layer(TimeoutLayer::new(Duration::from_millis(50)).unwrap())
        .service_fn(|_: ()| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, Infallible>("live")
        });
    assert_eq!(
        slow.ready().await.unwrap().call(()).await.unwrap(),
        "cached"
    );
}

#[tokio::test(start_paused = true)]
async fn a_backup_service_gets_a_copy_of_the_request() {
    let primary =
        service_fn(|n: u32| async move { Err::<u32, _>(format!("primary down for {n}")) });
    let backup = service_fn(|n: u32| async move { Ok::<_, String>(n * 10) });
    let mut svc = FallbackLayer::service(backup, tower_rampart::replay::CloneRequest)
        .on(&[Trigger::Error])
        .layer(primary);
    assert_eq!(svc.ready().await.unwrap().call(4).await, Ok(40));
}

#[tokio::test(start_paused = true)]
async fn failure_responses_need_the_failure_trigger() {
    let inner = service_fn(|status: u16| async move {
        Ok::<_, Infallible>(
            http::Response::builder()
                .status(status)
                .body(String::new())
                .unwrap(),
        )
    });
    let fallback = || {
        FallbackLayer::from_fn(|_| http::Response::new(String::from("fallback")))
            .classify(HttpStatus::default())
            .recognise_http()
    };
    let mut on_failure = fallback().on(&[Trigger::Failure]).layer(inner);
    let res = on_failure.ready().await.unwrap().call(502).await.unwrap();
    assert_eq!(res.body(), "fallback");
    let res = on_failure.ready().await.unwrap().call(404).await.unwrap();
    assert_eq!(
        (res.status(), res.body().as_str()),
        (StatusCode::NOT_FOUND, "")
    );
    let mut defaults = fallback().layer(inner);
    let res = defaults.ready().await.unwrap().call(502).await.unwrap();
    assert_eq!(
        res.status(),
        StatusCode::BAD_GATEWAY,
        "not asked: passes through"
    );
}

#[tokio::test]
async fn axum_router_degrades_on_timeouts_and_open_breakers_only() {
    let breaker = server_side(Config::builder().build().unwrap());
    let handle = breaker.handle();
    let app = axum::Router::new()
        .route("/slow", get(never))
        .route(
            "/busy",
            get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "handler says busy") }),
        )
        .route("/ok", get(|| async { "live" }))
        .layer(
            ServiceBuilder::new()
                .layer(
                    FallbackLayer::from_fn(|cause: Cause<axum::response::Response, Infallible>| {
                        let why = match cause.trigger() {
                            Trigger::Timeout => "cached (timeout)",
                            _ => "cached (breaker open)",
                        };
                        (StatusCode::OK, why).into_response()
                    })
                    .recognise_http(),
                )
                .layer(breaker)
                .layer(http_timeout(Duration::from_millis(100))),
        );
    let base = serve(app).await;
    let client = client();
    let get = |path: &str| get_text(&client, format!("{base}{path}"));
    assert_eq!(
        get("/slow").await,
        (StatusCode::OK, "cached (timeout)".into())
    );
    assert_eq!(get("/ok").await, (StatusCode::OK, "live".into()));
    assert_eq!(
        get("/busy").await,
        (StatusCode::SERVICE_UNAVAILABLE, "handler says busy".into()),
        "the handler's own 503 is not the breaker's"
    );
    handle.force_open();
    assert_eq!(
        get("/ok").await,
        (StatusCode::OK, "cached (breaker open)".into())
    );
}
