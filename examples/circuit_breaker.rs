//! A circuit breaker in front of a flaky HTTP downstream, end to end over loopback.
//!
//! The example starts an axum server on a free port that is healthy, then answers `503` for
//! 1.5 s, then heals. A reqwest client calls it every 20 ms for 5 s through a `tower-rampart`
//! breaker: each state change is printed as it happens, and a summary at the end.
//!
//! ```text
//! cargo run --example circuit_breaker
//! ```

use std::{
    ops::Range,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::Relaxed},
    },
    time::Duration,
};

use axum::{Router, extract::State as Shared, http::StatusCode, routing::get};
use tokio::time::{Instant, MissedTickBehavior};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_rampart::{
    BoxError,
    circuit_breaker::{CircuitBreakerLayer, CircuitOpen, Config, Event, EventKind},
    classify::HttpStatus,
};

/// How long the client sends traffic.
const RUN: Duration = Duration::from_secs(5);
/// One call every...
const TICK: Duration = Duration::from_millis(20);
/// When the downstream answers 503, from the start of the run.
const OUTAGE: Range<Duration> = Duration::from_millis(1500)..Duration::from_millis(3000);

#[derive(Clone)]
struct Downstream {
    started: Instant,
    hits: Arc<AtomicUsize>,
}

async fn quote(Shared(down): Shared<Downstream>) -> (StatusCode, &'static str) {
    down.hits.fetch_add(1, Relaxed);
    if OUTAGE.contains(&down.started.elapsed()) {
        (StatusCode::SERVICE_UNAVAILABLE, "overloaded")
    } else {
        (StatusCode::OK, "EUR/USD 1.0842")
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let started = Instant::now();
    let at = move || started.elapsed().as_secs_f64();

    // The downstream: a real server on 127.0.0.1 with a port the OS picks.
    let hits = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route("/quote", get(quote))
        .with_state(Downstream {
            started,
            hits: hits.clone(),
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    println!(
        "downstream on http://{addr}/quote: healthy, 503 from {:.1}s to {:.1}s, healthy again",
        OUTAGE.start.as_secs_f64(),
        OUTAGE.end.as_secs_f64()
    );
    tokio::spawn(async move {
        tokio::time::sleep_until(started + OUTAGE.start).await;
        println!("[{:5.2}s] downstream: starts failing (503)", at());
        tokio::time::sleep_until(started + OUTAGE.end).await;
        println!("[{:5.2}s] downstream: healthy again", at());
    });

    // The breaker: judge the last 20 calls once there are 10, open at 50 % failures, stay open
    // 1 s, then let 3 probes decide.
    let config = Config::builder()
        .name("quotes")
        .count_window(20)
        .minimum_calls(10)
        .failure_rate(0.5)
        .open_duration(Duration::from_secs(1))
        .half_open_permits(3)
        .on_event(move |event: &Event<'_>| {
            if let EventKind::Transition { from, to } = event.kind {
                println!(
                    "[{:5.2}s] breaker `{}`: {from} -> {to}",
                    at(),
                    event.breaker
                );
            }
        })
        .build()?;
    // 5xx, 408 and 429 are failures; a downstream's `Retry-After` can lengthen the open time.
    let layer = CircuitBreakerLayer::new(config).classify(HttpStatus::default());
    let handle = layer.handle();
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()?;
    let mut client = ServiceBuilder::new().layer(layer).service(http.clone());

    // Traffic.
    let url = format!("http://{addr}/quote");
    let (mut sent, mut ok, mut failed, mut errors, mut rejected) = (0, 0, 0, 0, 0);
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    while started.elapsed() < RUN {
        ticks.tick().await;
        sent += 1;
        let req = http.get(&url).build()?;
        match client.ready().await?.call(req).await {
            Ok(res) if res.status().is_success() => {
                ok += 1;
                res.bytes().await?;
            }
            Ok(res) => {
                failed += 1;
                res.bytes().await?;
            }
            Err(err) if err.downcast_ref::<CircuitOpen>().is_some() => rejected += 1,
            Err(err) => {
                errors += 1;
                eprintln!("[{:5.2}s] transport error: {err}", at());
            }
        }
    }

    let snap = handle.snapshot();
    let reached = hits.load(Relaxed);
    println!();
    println!("summary after {:.2}s", at());
    println!("  calls sent:                {sent}");
    println!("  successes (2xx):           {ok}");
    println!("  failures (downstream 5xx): {failed}");
    println!("  transport errors:          {errors}");
    println!("  rejected fast by breaker:  {rejected}");
    println!("  requests that reached the downstream: {reached}");
    println!("  final state: {}", handle.state());
    println!(
        "  snapshot: {} calls in window, {} failures, failure rate {}, {} refused in total, {:.2}s in state",
        snap.calls,
        snap.failures,
        snap.failure_rate
            .map_or_else(|| "n/a".to_owned(), |r| format!("{:.0} %", r * 100.0)),
        snap.not_permitted,
        snap.time_in_state.as_secs_f64()
    );
    Ok(())
}
