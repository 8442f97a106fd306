//! Deadlines seen from inside: an attempt timeout cut short by a deadline outside fails with
//! the deadline's timeout, and a deadline given with `Deadline::scope_call` is seen by every
//! layer for the whole call. Real layers, paused time.

mod common;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use common::events::{RetryEvents, retry_events};
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_rampart::{
    BoxError,
    backoff::Backoff,
    retry::{EventKind, GiveUp, RetryLayer},
    timeout::{self, Deadline, DeadlineOrigin, Elapsed, TimeoutLayer},
};

type Log<T> = Arc<Mutex<Vec<T>>>;

/// A service that never answers in time, logging the time left on its deadline at each call.
fn hanging(
    left: Log<Option<Duration>>,
) -> impl Service<(), Response = (), Error = BoxError, Future: Send> + Clone {
    tower::service_fn(move |_: ()| {
        left.lock()
            .unwrap()
            .push(Deadline::current().map(Deadline::remaining));
        async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, BoxError>(())
        }
    })
}

fn retry(attempts: u32, backoff: Duration) -> (RetryLayer, RetryEvents) {
    let (events, sink) = retry_events();
    let layer = RetryLayer::builder()
        .max_attempts(attempts)
        .backoff(Backoff::constant(backoff))
        .on_event(sink)
        .build()
        .unwrap();
    (layer, events)
}

fn elapsed(err: &BoxError) -> Elapsed {
    *err.downcast_ref::<Elapsed>()
        .unwrap_or_else(|| panic!("not a timeout: {err}"))
}

const MS: Duration = Duration::from_millis(1);

/// Issue 14 item 13: total 2.5 s > retry > attempt 1 s. Attempts start at 0, 1.1 and 2.2 s; the
/// last is cut to the 300 ms left and ends at 2.5 s. What ran out is the 2.5 s total, and the
/// error says so, naming where the deadline came from.
#[tokio::test(start_paused = true)]
async fn a_shrunk_attempt_timeout_reports_the_total() {
    let (retry, events) = retry(3, 100 * MS);
    let left = Log::default();
    let cut = Log::default();
    let seen = cut.clone();
    let attempt = TimeoutLayer::new(1000 * MS)
        .unwrap()
        .on_event(move |e| seen.lock().unwrap().push(e.kind));
    let mut svc = ServiceBuilder::new()
        .layer(TimeoutLayer::new(2500 * MS).unwrap())
        .layer(retry)
        .layer(attempt)
        .service(hanging(left.clone()));
    let started = Instant::now();
    let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
    assert_eq!(started.elapsed(), 2500 * MS);
    assert_eq!(
        left.lock().unwrap()[..],
        [Some(1000 * MS), Some(1000 * MS), Some(300 * MS)]
    );
    let e = elapsed(&err);
    assert_eq!(e.after(), 2500 * MS, "the total ran out, not 300 ms: {e}");
    assert_eq!(e.deadline_origin(), Some(DeadlineOrigin::Timeout));
    assert_eq!(
        e.to_string(),
        "request timed out after 2.500s (the deadline of a timeout outside)"
    );
    let events = events.lock().unwrap().clone();
    assert!(matches!(
        events.last(),
        Some(EventKind::GaveUp {
            attempts: 3,
            reason: GiveUp::Attempts
        })
    ));
    // The attempt timeout's own events still say how long each attempt was given.
    let given = |ms| timeout::EventKind::Elapsed { after: ms * MS };
    assert_eq!(
        cut.lock().unwrap()[..],
        [given(1000), given(1000), given(300)]
    );
}

/// An attempt that runs out on its own keeps reporting its own timeout, deadline or not.
#[tokio::test(start_paused = true)]
async fn an_attempt_timeout_that_was_not_shrunk_reports_itself() {
    let (retry, _) = retry(2, 100 * MS);
    let mut svc = ServiceBuilder::new()
        .layer(TimeoutLayer::new(5000 * MS).unwrap())
        .layer(retry)
        .layer(TimeoutLayer::new(1000 * MS).unwrap())
        .service(hanging(Log::default()));
    let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
    let e = elapsed(&err);
    assert_eq!((e.after(), e.deadline_origin()), (1000 * MS, None));
    assert_eq!(e.to_string(), "request timed out after 1.000s");
}

/// A gRPC client's deadline (`grpc-timeout`), passed down by the server's timeout, is named so
/// when it cuts a timeout inside short.
#[tokio::test(start_paused = true)]
async fn a_grpc_client_deadline_is_named() {
    let mut svc = ServiceBuilder::new()
        .layer(
            TimeoutLayer::new(Duration::from_secs(30))
                .unwrap()
                .respond_grpc(),
        )
        .layer(
            TimeoutLayer::new(Duration::from_secs(10))
                .unwrap()
                .respond_grpc()
                .honour_grpc_timeout(false),
        )
        .service(tower::service_fn(|_: http::Request<()>| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, BoxError>(http::Response::new(()))
        }));
    let req = http::Request::builder()
        .header("grpc-timeout", "2S")
        .body(())
        .unwrap();
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(res.headers()["grpc-status"], "4");
    let e = res.extensions().get::<Elapsed>().unwrap();
    assert_eq!(e.after(), Duration::from_secs(2));
    assert_eq!(e.deadline_origin(), Some(DeadlineOrigin::GrpcTimeout));
}

/// Issue 14 item 12: a deadline a caller gives with `Deadline::scope_call(|| svc.call(..))` is
/// current for the whole call, every poll included: the retry layer gives up at it and every
/// attempt timeout shrinks to it, as under a timeout layer. (`Deadline::scope(|| svc.call(()))`
/// covers only making the call, not its polls: the retry never saw the deadline and all five
/// attempts ran their whole second.)
#[tokio::test(start_paused = true)]
async fn a_scoped_deadline_is_seen_for_the_whole_call() {
    let (retry, events) = retry(5, 100 * MS);
    let left = Log::default();
    let mut svc = ServiceBuilder::new()
        .layer(retry)
        .layer(TimeoutLayer::new(1000 * MS).unwrap())
        .service(hanging(left.clone()));
    let deadline = Deadline::at(Instant::now() + 1500 * MS);
    let started = Instant::now();
    let ready = svc.ready().await.unwrap();
    let err = deadline.scope_call(|| ready.call(())).await.unwrap_err();
    // 0-1 s: attempt 1; 1.1-1.5 s: attempt 2, shrunk to the deadline; then the retry stops.
    assert_eq!(started.elapsed(), 1500 * MS);
    assert_eq!(left.lock().unwrap()[..], [Some(1000 * MS), Some(400 * MS)]);
    let e = elapsed(&err);
    assert_eq!(e.deadline_origin(), Some(DeadlineOrigin::Scope));
    assert_eq!(
        e.after(),
        1500 * MS,
        "the scoped deadline's time, from its start"
    );
    let events = events.lock().unwrap().clone();
    assert!(
        matches!(
            events[..],
            [
                EventKind::Retry { attempt: 2, .. },
                EventKind::GaveUp {
                    attempts: 2,
                    reason: GiveUp::Deadline
                }
            ]
        ),
        "{events:?}"
    );
    assert_eq!(Deadline::current(), None, "only inside the call");
}

/// The future a scoped call returns is polled with the deadline current, not only made: code
/// that reads the deadline while polling (here after a yield) sees it.
#[tokio::test(start_paused = true)]
async fn a_scoped_deadline_is_current_while_polled() {
    let deadline = Deadline::at(Instant::now() + Duration::from_secs(1));
    let seen = deadline
        .scope_call(|| async {
            tokio::task::yield_now().await;
            Deadline::current()
        })
        .await;
    assert_eq!(seen, Some(deadline));
    // An earlier deadline already current wins, as with `scope`.
    let sooner = Deadline::at(Instant::now() + Duration::from_millis(10));
    let seen = sooner
        .scope_call(|| {
            deadline.scope_call(|| async {
                tokio::task::yield_now().await;
                Deadline::current()
            })
        })
        .await;
    assert_eq!(seen, Some(sooner));
}
