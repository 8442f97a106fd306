//! Spans of the retry layer (feature `tracing`, issue #15 item 7): one `rampart.call` span per
//! logical call, one `rampart.attempt` child span per attempt with OpenTelemetry's
//! `http.request.resend_count`, and breaker refusals as events in the attempt's span. Read back
//! with a capturing `tracing-subscriber` layer, over real HTTP.
#![cfg(feature = "tracing")]

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

use axum::{Router, http::StatusCode, routing::get};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_rampart::{
    backoff::Backoff,
    circuit_breaker::CircuitOpen,
    pipeline::{StandardClient, StandardClientLayer},
};
use tracing::{
    Event, Subscriber,
    field::{Field, Visit},
    span::{Attributes, Id, Record},
};
use tracing_subscriber::{Layer, layer::Context, prelude::*, registry::LookupSpan};

/// A span as it closed, or an event, with its fields as text.
#[derive(Debug, Clone)]
struct Seen {
    name: String,
    /// The span's parent, or the span an event happened in.
    parent: Option<String>,
    fields: BTreeMap<String, String>,
}

#[derive(Clone, Default)]
struct Capture {
    spans: Arc<Mutex<Vec<Seen>>>,
    events: Arc<Mutex<Vec<Seen>>>,
}

struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut f = Fields(BTreeMap::new());
        attrs.record(&mut f);
        ctx.span(id).unwrap().extensions_mut().insert(f);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let span = ctx.span(id).unwrap();
        let mut ext = span.extensions_mut();
        values.record(ext.get_mut::<Fields>().unwrap());
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut f = Fields(BTreeMap::new());
        event.record(&mut f);
        let parent = ctx.event_span(event).map(|s| s.name().to_string());
        self.events.lock().unwrap().push(Seen {
            name: f.0.remove("message").unwrap_or_default(),
            parent,
            fields: f.0,
        });
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let span = ctx.span(&id).unwrap();
        let fields = span.extensions().get::<Fields>().unwrap().0.clone();
        self.spans.lock().unwrap().push(Seen {
            name: span.name().to_string(),
            parent: span.parent().map(|p| p.name().to_string()),
            fields,
        });
    }
}

/// A server on 127.0.0.1 whose `/flaky` answers 503 once, then 200; `/down` always 500.
async fn server() -> String {
    let hits = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route(
            "/flaky",
            get(move || {
                let hit = hits.fetch_add(1, SeqCst);
                async move {
                    if hit == 0 {
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        StatusCode::OK
                    }
                }
            }),
        )
        .route("/down", get(|| async { StatusCode::INTERNAL_SERVER_ERROR }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// The standard client pipeline: 2 attempts 5 ms apart, a breaker per host that opens after
/// `failures` consecutive failures.
fn client(failures: u32) -> StandardClient<reqwest::Client> {
    let layer = StandardClientLayer::builder()
        .name("spans")
        .retry(|r| {
            r.max_attempts(2)
                .backoff(Backoff::constant(Duration::from_millis(5)))
        })
        .circuit_breaker(move |b| {
            b.consecutive_failures(failures)
                .open_duration(Duration::from_secs(60))
        })
        .build()
        .unwrap();
    ServiceBuilder::new()
        .layer(layer)
        .service(reqwest::Client::new())
}

fn request(url: &str) -> reqwest::Request {
    reqwest::Request::new(reqwest::Method::GET, url.parse().unwrap())
}

#[tokio::test]
async fn one_retried_call_is_one_call_span_with_two_attempt_spans() {
    let capture = Capture::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(capture.clone()));
    let base = server().await;
    let mut svc = client(5);

    let res = svc
        .ready()
        .await
        .unwrap()
        .call(request(&format!("{base}/flaky")))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    let spans = capture.spans.lock().unwrap().clone();
    let calls: Vec<_> = spans.iter().filter(|s| s.name == "rampart.call").collect();
    assert_eq!(calls.len(), 1, "{spans:#?}");
    assert_eq!(
        calls[0].fields.get("rampart.retry").map(String::as_str),
        Some("spans")
    );
    assert_eq!(
        calls[0].fields.get("rampart.attempts").map(String::as_str),
        Some("2")
    );
    assert_eq!(
        calls[0].fields.get("error.type"),
        None,
        "the call succeeded"
    );
    let attempts: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "rampart.attempt")
        .collect();
    assert_eq!(attempts.len(), 2, "{spans:#?}");
    assert!(
        attempts
            .iter()
            .all(|a| a.parent.as_deref() == Some("rampart.call"))
    );
    // Closed in order: the failed first attempt, then the resend.
    assert_eq!(attempts[0].fields.get("http.request.resend_count"), None);
    // The classifier names the failed response: its status, as OpenTelemetry's `error.type`.
    assert_eq!(
        attempts[0].fields.get("error.type").map(String::as_str),
        Some("503"),
        "{:?}",
        attempts[0]
    );
    assert_eq!(
        attempts[1]
            .fields
            .get("http.request.resend_count")
            .map(String::as_str),
        Some("1")
    );
    assert_eq!(attempts[1].fields.get("error.type"), None);

    let events = capture.events.lock().unwrap().clone();
    let retrying = events
        .iter()
        .find(|e| e.name == "retrying")
        .expect("a retrying event");
    assert_eq!(retrying.parent.as_deref(), Some("rampart.attempt"));
    let delay: f64 = retrying.fields["delay_ms"]
        .parse()
        .expect("a number of milliseconds");
    assert!((0.0..=5.0).contains(&delay), "{delay}");
}

#[tokio::test]
async fn a_breaker_refusal_is_an_event_in_the_attempt_span() {
    let capture = Capture::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(capture.clone()));
    let base = server().await;
    let mut svc = client(1);
    // The first attempt's 500 opens the host's breaker: it refuses the retry.
    let refused = svc
        .ready()
        .await
        .unwrap()
        .call(request(&format!("{base}/down")))
        .await
        .unwrap_err();
    assert!(refused.downcast_ref::<CircuitOpen>().is_some(), "{refused}");

    let events = capture.events.lock().unwrap().clone();
    let refusal = events
        .iter()
        .find(|e| e.name == "circuit breaker refused the call")
        .unwrap_or_else(|| panic!("{events:#?}"));
    assert_eq!(refusal.parent.as_deref(), Some("rampart.attempt"));
    assert_eq!(
        refusal.fields.get("state").map(String::as_str),
        Some("open")
    );
    let spans = capture.spans.lock().unwrap().clone();
    let last_call = spans
        .iter()
        .rev()
        .find(|s| s.name == "rampart.call")
        .unwrap();
    assert_eq!(
        last_call.fields.get("error.type").map(String::as_str),
        Some("circuit_open"),
        "{spans:#?}"
    );
}
