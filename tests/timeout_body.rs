//! Body-inclusive timeouts over real HTTP (issue #15, item 4): an axum server whose response
//! head comes at once and whose body streams for 600 ms, read by a reqwest client behind a
//! 200 ms timeout. A head-only timeout lets the body run past it; a body-inclusive one (and the
//! standard client pipeline's total timeout, by default) fails the body read with `Elapsed`.
//! Also the timeout counter (issue #15, item 6).

mod common;

use std::time::Duration;

use axum::{Router, body::Body, routing::get};
use bytes::Bytes;
use common::http::{client, serve};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_rampart::{
    BoxError,
    pipeline::StandardClientLayer,
    timeout::{Elapsed, TimeoutLayer, metric_names},
};

const TIMEOUT: Duration = Duration::from_millis(200);

/// An app whose `/slow` answers at once with a body of 6 chunks, 100 ms apart (600 ms: well
/// past the 200 ms timeouts, so no race decides a test), and `/fast` with a short body.
async fn server() -> String {
    let app = Router::new()
        .route(
            "/slow",
            get(|| async {
                let chunks = futures_util::stream::unfold(0u8, |i| async move {
                    if i == 6 {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Some((
                        Ok::<_, std::convert::Infallible>(Bytes::from(vec![b'x'; 10])),
                        i + 1,
                    ))
                });
                Body::from_stream(chunks)
            }),
        )
        .route("/fast", get(|| async { "quick" }));
    serve(app).await
}

/// GETs `url` through `svc` and reads the whole body.
async fn read<S>(svc: &mut S, url: &str) -> Result<Bytes, BoxError>
where
    S: Service<reqwest::Request, Response = reqwest::Response, Error = BoxError>,
{
    let req = reqwest::Request::new(reqwest::Method::GET, url.parse().unwrap());
    let res = svc.ready().await?.call(req).await?;
    assert_eq!(res.status(), 200, "the head arrives in time");
    Ok(res.bytes().await?)
}

/// The `Elapsed` somewhere in `err`'s source chain.
fn elapsed_in(err: &BoxError) -> Option<Elapsed> {
    let mut e: Option<&(dyn std::error::Error + 'static)> = Some(err.as_ref());
    while let Some(cur) = e {
        if let Some(elapsed) = cur.downcast_ref::<Elapsed>() {
            return Some(*elapsed);
        }
        e = cur.source();
    }
    None
}

#[tokio::test]
async fn a_head_only_timeout_lets_the_body_run_past_it() {
    // What the issue saw: the layer's timeout stops at the headers.
    let base = server().await;
    let mut svc = ServiceBuilder::new()
        .layer(TimeoutLayer::new(TIMEOUT).unwrap())
        .service(client());
    let body = read(&mut svc, &format!("{base}/slow")).await.unwrap();
    assert_eq!(body.len(), 60);
}

#[tokio::test]
async fn a_body_inclusive_timeout_fails_the_body_with_elapsed() {
    let base = server().await;
    let mut svc = ServiceBuilder::new()
        .layer(TimeoutLayer::new(TIMEOUT).unwrap().including_body())
        .service(client());
    let err = read(&mut svc, &format!("{base}/slow")).await.unwrap_err();
    // reqwest reports a body error whose source is the `Elapsed`.
    let reqwest_err = err
        .downcast_ref::<reqwest::Error>()
        .expect("a reqwest error");
    assert!(
        reqwest_err.is_body() || reqwest_err.is_decode(),
        "{reqwest_err:?}"
    );
    let elapsed = elapsed_in(&err).expect("Elapsed in the source chain");
    assert_eq!(elapsed.after(), TIMEOUT);
    // A body read in time is untouched.
    assert_eq!(
        read(&mut svc, &format!("{base}/fast")).await.unwrap(),
        "quick"
    );
}

#[tokio::test]
async fn the_client_pipeline_total_timeout_covers_the_body_by_default() {
    let base = server().await;
    let layer = StandardClientLayer::builder()
        .total_timeout(TIMEOUT)
        .attempt_timeout(TIMEOUT)
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new().layer(layer).service(client());
    let err = read(&mut svc, &format!("{base}/slow")).await.unwrap_err();
    assert_eq!(
        elapsed_in(&err).expect("Elapsed").after(),
        TIMEOUT,
        "{err:?}"
    );
    assert_eq!(
        read(&mut svc, &format!("{base}/fast")).await.unwrap(),
        "quick"
    );
}

#[tokio::test]
async fn the_client_pipeline_can_leave_the_body_untimed() {
    let base = server().await;
    let layer = StandardClientLayer::builder()
        .total_timeout(TIMEOUT)
        .attempt_timeout(TIMEOUT)
        .total_timeout_covers_body(false)
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new().layer(layer).service(client());
    let body = read(&mut svc, &format!("{base}/slow")).await.unwrap();
    assert_eq!(body.len(), 60);
}

#[tokio::test]
async fn http_bodies_fail_with_elapsed_as_their_error() {
    // Any `http::Response<B>` client (here hyper-util's): the body's error is the `Elapsed`.
    use http_body_util::BodyExt;
    let base = server().await;
    let hyper = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<Bytes>>();
    let mut svc = ServiceBuilder::new()
        .layer(TimeoutLayer::new(TIMEOUT).unwrap().including_body())
        .service(hyper);
    let req = http::Request::get(format!("{base}/slow"))
        .body(http_body_util::Empty::new())
        .unwrap();
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    let err = res.into_body().collect().await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<Elapsed>().expect("Elapsed").after(),
        TIMEOUT
    );
}

/// `(timeout, scope, count)` of every `rampart_timeouts_total` series, and its help text.
fn timeouts(
    snapshot: metrics_util::debugging::Snapshot,
) -> (Vec<(String, String, u64)>, Option<String>) {
    let mut help = None;
    let mut series = Vec::new();
    for (key, _, text, value) in snapshot.into_vec() {
        if key.key().name() != metric_names::TIMEOUTS {
            continue;
        }
        help = help.or(text.map(|t| t.to_string()));
        let label = |n: &str| {
            key.key()
                .labels()
                .find(|l| l.key() == n)
                .map(|l| l.value().to_owned())
                .unwrap_or_default()
        };
        let DebugValue::Counter(n) = value else {
            panic!("a counter")
        };
        series.push((label("timeout"), label("scope"), n));
    }
    series.sort();
    (series, help)
}

#[tokio::test]
async fn timeouts_are_counted_by_name_and_scope() {
    let base = server().await;
    // Layers built before the recorder is installed still report (the counter binds when a
    // timeout happens).
    let mut body = ServiceBuilder::new()
        .layer(
            TimeoutLayer::new(TIMEOUT)
                .unwrap()
                .name("downloads")
                .including_body(),
        )
        .service(client());
    let mut head = ServiceBuilder::new()
        .layer(TimeoutLayer::new(Duration::from_millis(50)).unwrap())
        .service_fn(|_: ()| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<_, std::convert::Infallible>(())
        });
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // The test's runtime is single-threaded: every poll runs on this thread.
    let _local = metrics::set_default_local_recorder(&recorder);
    assert!(read(&mut body, &format!("{base}/slow")).await.is_err());
    assert!(read(&mut body, &format!("{base}/fast")).await.is_ok());
    let err = head.ready().await.unwrap().call(()).await.unwrap_err();
    assert!(err.is::<Elapsed>());
    let (series, help) = timeouts(snapshotter.snapshot());
    assert_eq!(
        series,
        [
            (String::new(), "head".to_owned(), 1),
            ("downloads".to_owned(), "body".to_owned(), 1),
        ]
    );
    assert!(help.is_some_and(|h| h.contains("timeout")));
}

/// One event's fields, `(name, kind:value)`.
type Recorded = Vec<(String, String)>;

/// The fields of `tower_rampart` events, as recorded: numbers stay numbers.
#[derive(Clone, Default)]
struct Fields(std::sync::Arc<std::sync::Mutex<Vec<Recorded>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Fields {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Visit(Vec<(String, String)>);
        impl tracing::field::Visit for Visit {
            fn record_u64(&mut self, f: &tracing::field::Field, v: u64) {
                self.0.push((f.name().into(), format!("u64:{v}")));
            }
            fn record_str(&mut self, f: &tracing::field::Field, v: &str) {
                self.0.push((f.name().into(), format!("str:{v}")));
            }
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                self.0.push((f.name().into(), format!("{v:?}")));
            }
        }
        if event
            .metadata()
            .target()
            .starts_with("tower_rampart::timeout")
        {
            let mut visit = Visit(Vec::new());
            event.record(&mut visit);
            self.0.lock().unwrap().push(visit.0);
        }
    }
}

#[tokio::test]
async fn a_timeout_logs_a_tracing_event_with_numeric_timeout_ms() {
    use tracing_subscriber::layer::SubscriberExt;
    let fields = Fields::default();
    let _sub =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(fields.clone()));
    let base = server().await;
    let mut svc = ServiceBuilder::new()
        .layer(
            TimeoutLayer::new(TIMEOUT)
                .unwrap()
                .name("downloads")
                .including_body(),
        )
        .service(client());
    assert!(read(&mut svc, &format!("{base}/slow")).await.is_err());
    let events = fields.0.lock().unwrap().clone();
    assert_eq!(events.len(), 1, "{events:?}");
    let get = |k: &str| {
        events[0]
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(get("timeout_ms").as_deref(), Some("u64:200"));
    assert_eq!(get("timeout").as_deref(), Some("str:downloads"));
    assert_eq!(get("scope").as_deref(), Some("str:body"));
}
