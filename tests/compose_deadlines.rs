//! A total timeout passes its deadline down: the retry inside gives up (`GiveUp::Deadline`)
//! instead of sleeping into it, and the attempt timeout inside never outlasts it. Real layers,
//! paused time: total timeout > retry > attempt timeout > a slow service.

mod common;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{
    events::{RetryEvents, retried_once_then_gave_up, retry_events},
    http::serve,
};
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_rampart::{
    BoxError,
    backoff::Backoff,
    pipeline::StandardClientLayer,
    retry::{EventKind, GiveUp, RetryLayer},
    timeout::{Deadline, DeadlineOrigin, Elapsed, TimeoutLayer},
};

type Log<T> = Arc<Mutex<Vec<T>>>;

/// The events of a retry that gave up at its first attempt for the deadline.
const GAVE_UP_AT_THE_DEADLINE: [EventKind; 1] = [EventKind::GaveUp {
    attempts: 1,
    reason: GiveUp::Deadline,
}];

/// A retry layer with a constant backoff, recording its events.
fn retry(backoff: Duration, attempt_timeout: Option<Duration>) -> (RetryLayer, RetryEvents) {
    let (events, sink) = retry_events();
    let mut b = RetryLayer::builder()
        .max_attempts(10)
        .backoff(Backoff::constant(backoff))
        .on_event(sink);
    if let Some(t) = attempt_timeout {
        b = b.attempt_timeout(t);
    }
    (b.build().unwrap(), events)
}

/// A service that takes 10 s, and the time left on its deadline at each call.
fn slow(
    left: Log<Option<Duration>>,
) -> impl Service<(), Response = (), Error = BoxError, Future: Send> + Clone {
    tower::service_fn(move |_: ()| {
        left.lock()
            .unwrap()
            .push(Deadline::current().map(Deadline::remaining));
        async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok::<_, BoxError>(())
        }
    })
}

fn elapsed_of(err: &BoxError) -> Duration {
    err.downcast_ref::<Elapsed>()
        .unwrap_or_else(|| panic!("not a timeout: {err}"))
        .after()
}

/// The next delay plus the attempt timeout would pass the deadline: the retry stops at once.
#[tokio::test(start_paused = true)]
async fn retry_gives_up_before_the_total_timeout() {
    let readme = include_str!("../README.md");
    assert!(readme.contains("The outer one passes its deadline down (`timeout::Deadline`"));
    assert!(readme.contains("(`GiveUp::Deadline`) instead of sleeping or starting an attempt"));
    let attempt = Duration::from_secs(2);
    let (retry, events) = retry(Duration::from_millis(1500), Some(attempt));
    let left = Log::default();
    let mut svc = ServiceBuilder::new()
        .layer(TimeoutLayer::new(Duration::from_secs(5)).unwrap())
        .layer(retry)
        .layer(TimeoutLayer::new(attempt).unwrap())
        .service(slow(left.clone()));
    let started = Instant::now();
    let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
    // Attempt 1 timed out at 2 s; 1.5 s of delay + 2 s of attempt do not fit in the 3 s left.
    assert_eq!(
        started.elapsed(),
        attempt,
        "no sleep into the total timeout"
    );
    assert_eq!(
        elapsed_of(&err),
        attempt,
        "the attempt's timeout, not the total's"
    );
    assert_eq!(events.lock().unwrap()[..], GAVE_UP_AT_THE_DEADLINE);
    assert_eq!(left.lock().unwrap()[..], [Some(attempt)]);
}

/// Without the attempt timeout, a retry starts while time is left, and its attempt timeout
/// shrinks to what is left; then the retry stops with the deadline's reason. What ran out is
/// the total timeout, and the error says so (issue 14 item 13).
#[tokio::test(start_paused = true)]
async fn attempt_timeouts_shrink_to_the_time_left() {
    let (retry, events) = retry(Duration::from_millis(1500), None);
    let left = Log::default();
    let mut svc = ServiceBuilder::new()
        .layer(TimeoutLayer::new(Duration::from_secs(5)).unwrap())
        .layer(retry)
        .layer(TimeoutLayer::new(Duration::from_secs(2)).unwrap())
        .service(slow(left.clone()));
    let started = Instant::now();
    let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
    // 0-2 s: attempt 1 (2 s); 2-3.5 s: delay; 3.5-5 s: attempt 2, its timeout cut to 1.5 s.
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    assert_eq!(
        elapsed_of(&err),
        Duration::from_secs(5),
        "the total timeout, which cut the attempt short"
    );
    assert_eq!(
        err.downcast_ref::<Elapsed>().unwrap().deadline_origin(),
        Some(DeadlineOrigin::Timeout)
    );
    assert_eq!(
        left.lock().unwrap()[..],
        [
            Some(Duration::from_secs(2)),
            Some(Duration::from_millis(1500))
        ]
    );
    let events = events.lock().unwrap().clone();
    assert!(
        retried_once_then_gave_up(&events, GiveUp::Deadline),
        "{events:?}"
    );
}

/// A deadline is only passed down, never up or sideways: without a timeout outside, the retry
/// and the attempt timeout behave as before.
#[tokio::test(start_paused = true)]
async fn no_deadline_without_a_timeout_outside() {
    let (retry, events) = retry(Duration::from_millis(1500), Some(Duration::from_secs(2)));
    let left = Log::default();
    let mut svc = ServiceBuilder::new()
        .layer(retry)
        .layer(TimeoutLayer::new(Duration::from_secs(2)).unwrap())
        .service(slow(left.clone()));
    assert_eq!(Deadline::current(), None);
    let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
    assert_eq!(elapsed_of(&err), Duration::from_secs(2));
    assert_eq!(left.lock().unwrap().len(), 10, "every attempt made");
    assert!(
        left.lock()
            .unwrap()
            .iter()
            .all(|l| *l == Some(Duration::from_secs(2)))
    );
    assert!(matches!(
        events.lock().unwrap().last(),
        Some(EventKind::GaveUp {
            attempts: 10,
            reason: GiveUp::Attempts
        })
    ));
}

/// The standard client pipeline wires it: total 5 s > retry > breaker > attempt 2 s. A
/// downstream that hangs costs one attempt and an early answer, not a sleep into the total.
#[tokio::test(start_paused = true)]
async fn standard_client_pipeline_stops_at_the_deadline() {
    let (events, sink) = retry_events();
    let layer = StandardClientLayer::builder()
        .total_timeout(Duration::from_secs(5))
        .attempt_timeout(Duration::from_secs(2))
        .replace_retry(
            RetryLayer::builder()
                .max_attempts(3)
                .backoff(Backoff::constant(Duration::from_millis(1500)))
                .on_event(sink),
        )
        .build()
        .unwrap();
    let calls = Log::default();
    let seen_calls = calls.clone();
    let mut client = ServiceBuilder::new()
        .layer(layer)
        .service(tower::service_fn(move |_: http::Request<String>| {
            seen_calls
                .lock()
                .unwrap()
                .push(Deadline::current().map(Deadline::remaining));
            async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok::<_, BoxError>(http::Response::new(String::new()))
            }
        }));
    let req = http::Request::get("http://svc.test/")
        .body(String::new())
        .unwrap();
    let started = Instant::now();
    let err = client.ready().await.unwrap().call(req).await.unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    assert_eq!(elapsed_of(&err), Duration::from_secs(2));
    assert_eq!(calls.lock().unwrap()[..], [Some(Duration::from_secs(2))]);
    assert_eq!(events.lock().unwrap()[..], GAVE_UP_AT_THE_DEADLINE);
}

/// Across the wire: a client's total timeout goes out as `grpc-timeout`, and the server's
/// timeout in `respond_grpc` mode makes it the handler's deadline (shorter than its own 30 s).
/// Real time, a real axum server and reqwest client.
#[tokio::test]
async fn deadline_crosses_the_wire_as_grpc_timeout() {
    let app = axum::Router::new()
        .route(
            "/",
            axum::routing::post(|| async {
                let left = Deadline::current()
                    .expect("the server's timeout")
                    .remaining();
                left.as_millis().to_string()
            }),
        )
        .layer(
            TimeoutLayer::new(Duration::from_secs(30))
                .unwrap()
                .respond_grpc(),
        );
    let url = format!("{}/", serve(app).await);

    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut client = ServiceBuilder::new()
        .layer(TimeoutLayer::new(Duration::from_secs(5)).unwrap())
        .map_request(|mut req: reqwest::Request| {
            let deadline = Deadline::current().expect("inside the total timeout");
            req.headers_mut()
                .insert("grpc-timeout", deadline.to_grpc_timeout());
            req
        })
        .service(http.clone());
    let res = client
        .ready()
        .await
        .unwrap()
        .call(http.post(&url).build().unwrap())
        .await
        .unwrap();
    let left: u64 = res.text().await.unwrap().parse().unwrap();
    assert!(
        (3_000..=5_000).contains(&left),
        "the client's 5 s, not the server's 30 s: {left} ms"
    );
}
