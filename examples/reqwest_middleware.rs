//! The standard client pipeline inside a `reqwest_middleware::ClientWithMiddleware`: calls keep
//! `.send()`, and the breaker's and timeouts' errors downcast from `reqwest_middleware::Error`.
//!
//! The example serves a small axum app on 127.0.0.1 and calls it through
//! `ClientBuilder::new(client).with(RampartMiddleware::new(pipeline)).with(Log)`, where `Log` is
//! a middleware placed inside the pipeline: it prints every attempt. It shows:
//!
//! 1. a GET retried after two 503s until it succeeds;
//! 2. a POST with an `Idempotency-Key` retried, a POST without one sent once;
//! 3. a host that always answers 500 opening its breaker, the next `.send()` failing fast with a
//!    `CircuitOpen`;
//! 4. a slow endpoint cut by the attempt timeout, the error downcasting as `Elapsed`.
//!
//! ```text
//! cargo run --example reqwest_middleware --features reqwest-middleware
//! ```

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

use axum::{Router, http::StatusCode, routing::get};
use http::Extensions;
use reqwest_middleware::{ClientBuilder, Error, Middleware, Next};
use tower_rampart::{
    backoff::Backoff, circuit_breaker::CircuitOpen, pipeline::StandardClientLayer,
    reqwest_middleware::RampartMiddleware, timeout::Elapsed,
};

/// Prints every attempt that reaches it.
struct Log;

#[async_trait::async_trait]
impl Middleware for Log {
    async fn handle(
        &self,
        req: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let line = format!("  attempt: {} {}", req.method(), req.url().path());
        let res = next.run(req, extensions).await;
        match &res {
            Ok(r) => println!("{line} -> {}", r.status().as_u16()),
            Err(e) => println!("{line} -> error: {e}"),
        }
        res
    }
}

/// Serves `app` on 127.0.0.1 with a port the OS picks; its base URL.
async fn serve(app: Router) -> Result<String, std::io::Error> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(base)
}

/// `GET /flaky`: 503 for the first two hits, then 200.
fn get_flaky(hits: &AtomicUsize) -> StatusCode {
    if hits.fetch_add(1, SeqCst) < 2 {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    }
}

/// `POST /flaky`: 503 and 201 in turn.
fn post_flaky(hits: &AtomicUsize) -> StatusCode {
    if hits.fetch_add(1, SeqCst).is_multiple_of(2) {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::CREATED
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (gets, posts) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let app = Router::new()
        .route(
            "/flaky",
            get(move || async move { get_flaky(&gets) })
                .post(move || async move { post_flaky(&posts) }),
        )
        .route(
            "/broken",
            get(|| async { StatusCode::INTERNAL_SERVER_ERROR }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        );
    // The same app on two ports: two hosts, each with a breaker of its own.
    let good = serve(app.clone()).await?;
    let bad = serve(app).await?;

    let pipeline = StandardClientLayer::builder()
        .name("example")
        .total_timeout(Duration::from_secs(2))
        .attempt_timeout(Duration::from_millis(300))
        .retry(|d| d.backoff(Backoff::constant(Duration::from_millis(50))))
        .circuit_breaker(|d| d.count_window(10).minimum_calls(4).failure_rate(0.9))
        .build()?;
    let client = ClientBuilder::new(reqwest::Client::builder().no_proxy().build()?)
        .with(RampartMiddleware::new(pipeline))
        .with(Log)
        .build();

    println!("1. GET /flaky: two 503s, then 200");
    let res = client.get(format!("{good}/flaky")).send().await?;
    println!("=> {}\n", res.status());

    println!("2. POST /flaky with an Idempotency-Key: retried");
    let res = client
        .post(format!("{good}/flaky"))
        .header("idempotency-key", "\"order-42\"")
        .body("{}")
        .send()
        .await?;
    println!("=> {}", res.status());
    println!("   POST /flaky without a key: sent once");
    let res = client
        .post(format!("{good}/flaky"))
        .body("{}")
        .send()
        .await?;
    println!("=> {}\n", res.status());

    println!("3. GET /broken on the other host until its breaker opens");
    for _ in 0..3 {
        match client.get(format!("{bad}/broken")).send().await {
            Ok(res) => println!("=> {}", res.status()),
            Err(Error::Middleware(e)) => match e.downcast_ref::<CircuitOpen>() {
                Some(open) => println!("=> refused: {open}"),
                None => println!("=> {e}"),
            },
            Err(e) => println!("=> {e}"),
        }
    }
    println!();

    println!("4. GET /slow: each attempt cut at 300 ms");
    match client.get(format!("{good}/slow")).send().await {
        Err(Error::Middleware(e)) if e.is::<Elapsed>() => println!("=> timed out: {e}"),
        other => println!("=> unexpected: {other:?}"),
    }
    Ok(())
}
