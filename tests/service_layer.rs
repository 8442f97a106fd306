//! The tower layer: shared state across `layer` calls and clones, cancelled probes, paused time.

mod common;

use std::{convert::Infallible, future::pending, time::Duration};

use common::breakers::one_probe;

use tower::{Layer, Service, ServiceExt, service_fn};
use tower_rampart::{
    BoxError,
    circuit_breaker::{CircuitBreakerLayer, CircuitOpen, Config, State},
};

fn failing(fail: bool) -> Result<&'static str, &'static str> {
    if fail { Err("boom") } else { Ok("ok") }
}

#[tokio::test(start_paused = true)]
async fn every_layer_call_and_clone_shares_one_breaker() {
    let layer =
        CircuitBreakerLayer::new(Config::builder().consecutive_failures(4).build().unwrap());
    let handle = layer.handle();
    let inner = service_fn(|fail: bool| async move { failing(fail) });
    let mut a = layer.layer(inner);
    let mut b = layer.layer(inner);
    let mut c = a.clone();
    let mut d = layer.clone().layer(inner);
    for svc in [&mut a, &mut b, &mut c, &mut d] {
        assert!(svc.ready().await.unwrap().call(true).await.is_err());
    }
    assert_eq!(
        handle.state(),
        State::Open,
        "four failures across four services"
    );
    let err: BoxError = b.ready().await.unwrap().call(false).await.unwrap_err();
    let open = err.downcast_ref::<CircuitOpen>().expect("CircuitOpen");
    assert_eq!(open.state(), State::Open);
    assert_eq!(open.breaker(), "default");
}

#[tokio::test(start_paused = true)]
async fn open_duration_passes_on_paused_time() {
    let layer = CircuitBreakerLayer::new(one_probe(Duration::from_secs(30)).build().unwrap());
    let handle = layer.handle();
    let mut svc = layer.layer(service_fn(|fail: bool| async move { failing(fail) }));
    svc.ready().await.unwrap().call(true).await.unwrap_err();
    tokio::time::advance(Duration::from_secs(29)).await;
    let err = svc.ready().await.unwrap().call(false).await.unwrap_err();
    let wait = err
        .downcast_ref::<CircuitOpen>()
        .unwrap()
        .retry_after()
        .unwrap();
    assert_eq!(wait, Duration::from_secs(1));
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(svc.ready().await.unwrap().call(false).await.unwrap(), "ok");
    assert_eq!(handle.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_probe_gives_its_permit_back() {
    let layer = CircuitBreakerLayer::new(one_probe(Duration::from_secs(1)).build().unwrap());
    let handle = layer.handle();
    // `true` fails at once, `false` hangs forever, as a stuck downstream would.
    let mut svc = layer.layer(service_fn(|fail: bool| async move {
        if fail {
            Err::<(), _>("boom")
        } else {
            pending::<Result<(), &str>>().await
        }
    }));
    svc.ready().await.unwrap().call(true).await.unwrap_err();
    tokio::time::advance(Duration::from_secs(1)).await;

    let probe = svc.ready().await.unwrap().call(false);
    assert_eq!(handle.state(), State::HalfOpen);
    let refused = svc.ready().await.unwrap().call(true).await.unwrap_err();
    assert!(
        refused.downcast_ref::<CircuitOpen>().is_some(),
        "the only permit is taken"
    );
    // The caller gives up (a client timeout, a dropped request).
    let timed_out = tokio::time::timeout(Duration::from_millis(100), probe).await;
    assert!(timed_out.is_err());
    // The permit is back: the next call is admitted as a probe, and its failure reopens.
    let err = svc.ready().await.unwrap().call(true).await.unwrap_err();
    assert!(
        err.downcast_ref::<CircuitOpen>().is_none(),
        "admitted: {err}"
    );
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn inner_errors_pass_through_unchanged() {
    let layer = CircuitBreakerLayer::new(Config::builder().build().unwrap());
    let mut svc = layer.layer(service_fn(|_: ()| async {
        Err::<(), _>(std::io::Error::other("disk on fire"))
    }));
    let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
    let io = err
        .downcast_ref::<std::io::Error>()
        .expect("the inner error, boxed");
    assert_eq!(io.to_string(), "disk on fire");
}

#[tokio::test(start_paused = true)]
async fn respond_http_keeps_an_infallible_error_type() {
    let layer = CircuitBreakerLayer::new(Config::builder().build().unwrap())
        .classify(tower_rampart::classify::HttpStatus::default())
        .respond_http();
    layer.handle().force_open();
    let mut svc = layer.layer(service_fn(|_: ()| async {
        Ok::<_, Infallible>(http::Response::new(bytes::Bytes::from("hello")))
    }));
    let res: http::Response<bytes::Bytes> = svc.ready().await.unwrap().call(()).await.unwrap();
    assert_eq!(res.status(), 503);
    assert!(
        res.headers().get(http::header::RETRY_AFTER).is_none(),
        "forced open has no end"
    );
    let body = String::from_utf8(res.body().to_vec()).unwrap();
    assert!(body.contains("forced_open"), "{body}");
}

#[tokio::test(start_paused = true)]
async fn a_leaked_layer_shares_one_breaker_too() {
    let layer =
        CircuitBreakerLayer::new(Config::builder().consecutive_failures(2).build().unwrap()).leak();
    let handle = layer.handle();
    let inner = service_fn(|fail: bool| async move { failing(fail) });
    let mut a = layer.layer(inner);
    let mut b = layer.clone().layer(inner);
    a.ready().await.unwrap().call(true).await.unwrap_err();
    b.ready().await.unwrap().call(true).await.unwrap_err();
    assert_eq!(handle.state(), State::Open);
    let err = a.ready().await.unwrap().call(false).await.unwrap_err();
    assert!(err.downcast_ref::<CircuitOpen>().is_some());
    handle.reset();
    assert_eq!(b.ready().await.unwrap().call(false).await.unwrap(), "ok");
}

/// Every service type is shaped like tower's: `new` takes what its layer takes, and
/// `get_ref`, `get_mut` and `into_inner` reach the wrapped service.
#[tokio::test(start_paused = true)]
async fn every_service_has_new_get_ref_get_mut_and_into_inner() {
    use tower_rampart::{
        fallback::{FallbackLayer, FallbackService},
        idempotency::{Idempotency, IdempotencyLayer},
        replay::BufferBody,
        retry::{Retry, RetryLayer, SetIdempotencyKey},
        timeout::Timeout,
    };

    #[derive(Clone, Debug, PartialEq)]
    struct Inner(u32);

    fn check<T>(
        mut svc: T,
        get_ref: fn(&T) -> &Inner,
        get_mut: fn(&mut T) -> &mut Inner,
        into_inner: fn(T) -> Inner,
    ) {
        assert_eq!(get_ref(&svc), &Inner(1));
        get_mut(&mut svc).0 = 2;
        assert_eq!(into_inner(svc), Inner(2));
    }

    let config = || Config::builder().build().unwrap();
    check(
        tower_rampart::circuit_breaker::CircuitBreaker::new(Inner(1), config()),
        |s| s.get_ref(),
        |s| s.get_mut(),
        |s| s.into_inner(),
    );
    let retry = RetryLayer::builder().build().unwrap();
    check(
        Retry::new(Inner(1), &retry),
        |s| s.get_ref(),
        |s| s.get_mut(),
        |s| s.into_inner(),
    );
    check(
        SetIdempotencyKey::new(Inner(1)),
        |s| s.get_ref(),
        |s| s.get_mut(),
        |s| s.into_inner(),
    );
    check(
        Timeout::new(Inner(1), Duration::from_secs(1)).unwrap(),
        |s| s.get_ref(),
        |s| s.get_mut(),
        |s| s.into_inner(),
    );
    assert!(Timeout::new(Inner(1), Duration::ZERO).is_err());
    let fallback = FallbackLayer::value(0u32);
    check(
        FallbackService::new(Inner(1), &fallback),
        |s| s.get_ref(),
        |s| s.get_mut(),
        |s| s.into_inner(),
    );
    let idempotency = IdempotencyLayer::builder().global_keys().build().unwrap();
    check(
        Idempotency::new(Inner(1), &idempotency),
        |s| s.get_ref(),
        |s| s.get_mut(),
        |s| s.into_inner(),
    );
    check(
        BufferBody::new(Inner(1), 1024),
        |s| s.get_ref(),
        |s| s.get_mut(),
        |s| s.into_inner(),
    );
}
