//! Real HTTP over loopback: an axum app on a port the OS picks, and a client for it.

use std::{net::SocketAddr, time::Duration};

use axum::http::StatusCode;

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

/// `GET url`: the status and the body text.
pub async fn get_text(client: &reqwest::Client, url: String) -> (StatusCode, String) {
    let res = client.get(url).send().await.unwrap();
    (res.status(), res.text().await.unwrap())
}
