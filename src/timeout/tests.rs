//! Changing a timeout while services made by its layer serve calls.

use std::{convert::Infallible, time::Duration};

use http::{Request, Response};
use tokio::time::Instant;
use tower::{Service, ServiceExt, service_fn};
use tower_layer::Layer;

use super::{Elapsed, TimeoutLayer};
use crate::BoxError;

const SECOND: Duration = Duration::from_secs(1);

/// Answers after `d` (paused time).
async fn slow(d: Duration) -> Result<&'static str, Infallible> {
    tokio::time::sleep(d).await;
    Ok("done")
}

fn elapsed_after(err: BoxError) -> Duration {
    err.downcast_ref::<Elapsed>().expect("timed out").after()
}

/// A 5 s call through `svc`, which must time out: after how long.
async fn cut_off<S>(svc: &mut S) -> Duration
where
    S: Service<Duration, Error = BoxError>,
    S::Response: std::fmt::Debug,
{
    elapsed_after(
        svc.ready()
            .await
            .unwrap()
            .call(5 * SECOND)
            .await
            .unwrap_err(),
    )
}

#[tokio::test(start_paused = true)]
async fn services_made_before_a_change_follow_it() {
    let (layer, reload) = TimeoutLayer::new(10 * SECOND).unwrap().reloadable();
    let mut svc = layer.layer(service_fn(|d: Duration| slow(d)));
    let mut clone = svc.clone();
    assert_eq!(
        svc.ready().await.unwrap().call(5 * SECOND).await.unwrap(),
        "done"
    );
    reload.set(2 * SECOND).unwrap();
    assert_eq!(reload.get(), 2 * SECOND);
    assert_eq!(layer.timeout(), 2 * SECOND);
    for svc in [&mut svc, &mut clone] {
        let start = Instant::now();
        assert_eq!(cut_off(svc).await, 2 * SECOND);
        assert_eq!(start.elapsed(), 2 * SECOND);
    }
    // A service made after the change, through a clone of the layer.
    let mut later = layer.clone().layer(service_fn(|d: Duration| slow(d)));
    assert_eq!(cut_off(&mut later).await, 2 * SECOND);
}

#[tokio::test(start_paused = true)]
async fn a_call_keeps_the_timeout_it_started_with() {
    let (layer, reload) = TimeoutLayer::new(10 * SECOND).unwrap().reloadable();
    let mut svc = layer.layer(service_fn(|d: Duration| slow(d)));
    let start = Instant::now();
    let long = tokio::spawn(svc.ready().await.unwrap().call(5 * SECOND));
    tokio::time::sleep(SECOND).await;
    reload.set(SECOND).unwrap();
    // Started under 10 s: finishes after its 5 s, though 1 s is the timeout now.
    assert_eq!(long.await.unwrap().unwrap(), "done");
    assert_eq!(start.elapsed(), 5 * SECOND);
    // And the other way: a call started under 1 s times out after 1 s despite a longer one
    // set meanwhile.
    let short = tokio::spawn(svc.ready().await.unwrap().call(5 * SECOND));
    tokio::task::yield_now().await;
    reload.set(10 * SECOND).unwrap();
    assert_eq!(elapsed_after(short.await.unwrap().unwrap_err()), SECOND);
}

#[tokio::test(start_paused = true)]
async fn zero_is_refused_and_changes_nothing() {
    let (layer, reload) = TimeoutLayer::new(SECOND).unwrap().reloadable();
    let err = reload.set(Duration::ZERO).unwrap_err();
    assert_eq!(err, TimeoutLayer::new(Duration::ZERO).unwrap_err());
    assert_eq!(err.setting(), Some("timeout"));
    assert_eq!(err.reason(), "must be above zero");
    assert_eq!(
        err.to_string(),
        "invalid timeout configuration: timeout must be above zero"
    );
    assert_eq!(reload.get(), SECOND);
    let mut svc = layer.layer(service_fn(|d: Duration| slow(d)));
    assert_eq!(cut_off(&mut svc).await, SECOND);
}

#[test]
fn reloadable_twice_shares_one_timeout() {
    let (layer, first) = TimeoutLayer::new(SECOND).unwrap().reloadable();
    let (layer, second) = layer.reloadable();
    second.set(3 * SECOND).unwrap();
    assert_eq!(first.get(), 3 * SECOND);
    assert_eq!(layer.timeout(), 3 * SECOND);
    assert!(format!("{layer:?}").contains("3s (reloadable)"));
    // Beyond a year: refused, the timeout unchanged.
    let err = first.set(Duration::MAX).unwrap_err();
    assert_eq!(err.setting(), Some("timeout"));
    assert_eq!(second.get(), 3 * SECOND);
    first.set(crate::MAX_DURATION).unwrap();
    assert_eq!(second.get(), crate::MAX_DURATION);
}

fn http_slow(
    req: Request<()>,
) -> impl Future<Output = Result<Response<String>, Infallible>> + use<> {
    let d = Duration::from_secs(req.uri().path()[1..].parse().unwrap());
    async move {
        tokio::time::sleep(d).await;
        Ok(Response::new("done".to_owned()))
    }
}

fn get(secs: u64) -> Request<()> {
    Request::get(format!("/{secs}")).body(()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn response_modes_follow_changes() {
    // Reloadable, then HTTP mode.
    let (layer, reload) = TimeoutLayer::new(10 * SECOND).unwrap().reloadable();
    let mut svc = layer.respond_http().layer(service_fn(http_slow));
    assert_eq!(
        svc.ready()
            .await
            .unwrap()
            .call(get(5))
            .await
            .unwrap()
            .status(),
        200
    );
    reload.set(2 * SECOND).unwrap();
    let res = svc.ready().await.unwrap().call(get(5)).await.unwrap();
    assert_eq!(res.status(), 504);
    assert_eq!(
        res.extensions().get::<Elapsed>().unwrap().after(),
        2 * SECOND
    );

    // gRPC mode, then reloadable: the client's shorter `grpc-timeout` still wins.
    let (layer, reload) = TimeoutLayer::new(10 * SECOND)
        .unwrap()
        .respond_grpc()
        .reloadable();
    let mut svc = layer.layer(service_fn(http_slow));
    reload.set(3 * SECOND).unwrap();
    let res = svc.ready().await.unwrap().call(get(5)).await.unwrap();
    assert_eq!(res.headers()["grpc-status"], "4");
    assert_eq!(
        res.extensions().get::<Elapsed>().unwrap().after(),
        3 * SECOND
    );
    let mut req = get(5);
    req.headers_mut()
        .insert("grpc-timeout", "1S".parse().unwrap());
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(res.extensions().get::<Elapsed>().unwrap().after(), SECOND);
}
