//! Issue 14 item 12: a retried call keeps the error names it started with, as it keeps its retry
//! policy, when a reload replaces them mid-call; calls that start after the reload use the new
//! names. A real axum server, a reqwest client, the classifier a registry builds
//! (`ByName::live`).

mod common;

use std::time::Duration;

use common::{
    events::retry_events,
    flaky::{counting_server, status},
    http::{client, serve},
};
use http::StatusCode;
use tower::{Layer, Service, ServiceExt};
use tower_rampart::{
    backoff::Backoff,
    classify::{ByName, ErrorNames, HttpStatus, LiveNames},
    retry::{EventKind, HttpReplay, RetryLayer},
};

#[tokio::test]
async fn a_call_keeps_the_error_names_it_started_with() {
    // 503, 503, then 200.
    let (app, hits) = counting_server(|n| {
        status(if n <= 2 {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        })
    });
    let url = serve(app).await;
    let names = ErrorNames::default();
    let lists = LiveNames::new(Some(names.compile(&["503"]).unwrap()), None);
    let (events, sink) = retry_events();
    let reload = lists.clone();
    let only_502 = names.compile(&["502"]).unwrap();
    let retry = RetryLayer::builder()
        .max_attempts(5)
        .backoff(Backoff::constant(Duration::from_millis(10)))
        .on_event(sink)
        // A reload lands while the call waits for its second attempt: 503 is no longer named.
        .on_event(move |e| {
            if let EventKind::Retry { attempt: 2, .. } = e.kind {
                reload.set(Some(only_502.clone()), None);
            }
        })
        .build()
        .unwrap()
        .classify(ByName::live(HttpStatus::retryable(), lists.clone()))
        .replay(HttpReplay::default());
    let http = client();
    let mut svc = retry.layer(http.clone());

    let req = http.get(&url).build().unwrap();
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "the second 503 was judged by the names the call started with"
    );
    assert_eq!(hits.count(), 3);
    let seen = events.lock().unwrap().clone();
    assert!(
        matches!(
            seen[..],
            [
                EventKind::Retry { attempt: 2, .. },
                EventKind::Retry { attempt: 3, .. }
            ]
        ),
        "{seen:?}"
    );

    // A call that starts after the reload uses the new names: a 503 is not retried.
    let (app, hits) = counting_server(|_| status(StatusCode::SERVICE_UNAVAILABLE));
    let url = serve(app).await;
    let req = http.get(&url).build().unwrap();
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(hits.count(), 1, "not one of the names now");
}
