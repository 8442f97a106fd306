//! Real HTTP over loopback: an axum app on a port the OS picks, and a client for it.

use std::{net::SocketAddr, time::Duration};

use axum::http::{HeaderMap, StatusCode};
use tower_rampart::{idempotency::IDEMPOTENT_REPLAYED, mode::RespondHttp, timeout::TimeoutLayer};

/// Serves `app` on 127.0.0.1 with a port the OS picks, in the background; its address.
pub async fn serve_addr(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Serves `app` like [`serve_addr`]; its base URL, `http://127.0.0.1:<port>`.
pub async fn serve(app: axum::Router) -> String {
    format!("http://{}", serve_addr(app).await)
}

/// A plain-HTTP client that ignores any proxy set in the environment. A request gives up after
/// 15 s, so a server that hangs fails the test instead of stalling it.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap()
}

/// A handler that never answers in time: it sleeps 30 s, longer than any test's timeout.
pub async fn never() -> &'static str {
    tokio::time::sleep(Duration::from_secs(30)).await;
    "never"
}

/// A timeout layer in HTTP mode: a call that outlasts `after` is answered with a 504.
pub fn http_timeout(after: Duration) -> TimeoutLayer<RespondHttp> {
    TimeoutLayer::new(after).unwrap().respond_http()
}

/// `GET url`: the status and the body text.
pub async fn get_text(client: &reqwest::Client, url: String) -> (StatusCode, String) {
    let res = client.get(url).send().await.unwrap();
    (res.status(), res.text().await.unwrap())
}

/// An answer of the Idempotency-Key layer, as its client sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    /// Marked `idempotent-replayed: true`.
    pub replayed: bool,
    /// The `type` of a problem+json answer.
    pub problem: Option<String>,
    pub body: String,
}

impl Answer {
    /// The answer with `status`, `headers` and `body`. A problem+json body must be JSON with a
    /// string `type`.
    pub fn new(status: StatusCode, headers: &HeaderMap, body: String) -> Answer {
        let replayed = headers
            .get(IDEMPOTENT_REPLAYED)
            .is_some_and(|v| v == "true");
        let is_problem = headers
            .get("content-type")
            .is_some_and(|v| v == "application/problem+json");
        let problem = is_problem.then(|| {
            let v: serde_json::Value = serde_json::from_str(&body).expect("problem+json is JSON");
            v["type"].as_str().expect("a problem type").to_owned()
        });
        Answer {
            status: status.as_u16(),
            replayed,
            problem,
            body,
        }
    }

    /// A problem+json answer of type `kind`.
    pub fn is_problem(&self, kind: &str) -> bool {
        self.problem.as_deref() == Some(kind)
    }
}
