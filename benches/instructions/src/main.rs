//! Runs one layer N times over a ready `service_fn`, for `check.sh` to count instructions with
//! callgrind at N and 2N calls: the difference over N is the cost of one call, start-up and
//! layer construction cancelled out.
//!
//! `rampart-instructions CASE N`; `rampart-instructions list` names the cases.

use std::{
    convert::Infallible,
    future::{Ready, ready},
    hint::black_box,
    time::Duration,
};

use tower::{Layer, Service, ServiceExt, service_fn};
use tower_rampart::{
    backoff::Backoff,
    circuit_breaker::{CircuitBreakerLayer, Config, LiveBreaker},
    retry::RetryLayer,
    timeout::TimeoutLayer,
};

type Leaf<E> = tower::util::ServiceFn<fn(u64) -> Ready<Result<u64, E>>>;

fn leaf() -> Leaf<Infallible> {
    service_fn(|x| ready(Ok(x)))
}

/// Fails with `&str` (never, here) so that retry has an error type to judge.
fn leaf_fallible() -> Leaf<&'static str> {
    service_fn(|x| ready(Ok(x)))
}

async fn drive<S>(mut svc: S, calls: u64)
where
    S: Service<u64, Response = u64>,
    S::Error: std::fmt::Debug,
{
    for i in 0..calls {
        let out = svc.ready().await.unwrap().call(black_box(i)).await.unwrap();
        black_box(out);
    }
}

fn count_window() -> Config {
    let b = Config::builder().name("count").count_window(100);
    b.minimum_calls(100).build().unwrap()
}

fn time_window() -> Config {
    let b = Config::builder().name("time");
    b.time_window(Duration::from_secs(10), 10).build().unwrap()
}

fn consecutive() -> Config {
    let b = Config::builder().name("consecutive");
    b.consecutive_failures(5).build().unwrap()
}

fn retry() -> RetryLayer {
    let b = RetryLayer::builder().max_attempts(3);
    b.backoff(Backoff::constant(Duration::from_millis(1)))
        .build()
        .unwrap()
}

const CASES: &[&str] = &[
    "bare",
    "breaker_count",
    "breaker_count_leaked",
    "breaker_count_live",
    "breaker_time",
    "breaker_time_leaked",
    "breaker_consecutive",
    "breaker_consecutive_leaked",
    "retry",
    "retry_leaked",
    "retry_reloadable",
    "timeout",
    "timeout_reloadable",
    "tower_timeout",
];

async fn run(case: &str, n: u64) {
    let second = Duration::from_secs(1);
    match case {
        "bare" => drive(leaf(), n).await,
        "breaker_count" => drive(CircuitBreakerLayer::new(count_window()).layer(leaf()), n).await,
        "breaker_count_leaked" => {
            let layer = CircuitBreakerLayer::new(count_window()).leak();
            drive(layer.layer(leaf()), n).await
        }
        "breaker_count_live" => {
            let live = LiveBreaker::new(count_window());
            drive(CircuitBreakerLayer::live(live).layer(leaf()), n).await
        }
        "breaker_time" => drive(CircuitBreakerLayer::new(time_window()).layer(leaf()), n).await,
        "breaker_time_leaked" => {
            let layer = CircuitBreakerLayer::new(time_window()).leak();
            drive(layer.layer(leaf()), n).await
        }
        "breaker_consecutive" => {
            drive(CircuitBreakerLayer::new(consecutive()).layer(leaf()), n).await
        }
        "breaker_consecutive_leaked" => {
            let layer = CircuitBreakerLayer::new(consecutive()).leak();
            drive(layer.layer(leaf()), n).await
        }
        "retry" => drive(retry().layer(leaf_fallible()), n).await,
        "retry_leaked" => drive(retry().leak().layer(leaf_fallible()), n).await,
        "retry_reloadable" => {
            let (layer, _reload) = retry().reloadable();
            drive(layer.layer(leaf_fallible()), n).await
        }
        "timeout" => drive(TimeoutLayer::new(second).unwrap().layer(leaf()), n).await,
        "timeout_reloadable" => {
            let (layer, _reload) = TimeoutLayer::new(second).unwrap().reloadable();
            drive(layer.layer(leaf()), n).await
        }
        "tower_timeout" => {
            let layer = tower::timeout::TimeoutLayer::new(second);
            drive(layer.layer(leaf()), n).await
        }
        other => {
            eprintln!("unknown case {other:?}; cases: {}", CASES.join(" "));
            std::process::exit(2)
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("list") {
        println!("{}", CASES.join("\n"));
        return;
    }
    let (Some(case), Some(n)) = (args.first(), args.get(1).and_then(|n| n.parse().ok())) else {
        eprintln!("usage: rampart-instructions CASE CALLS | list");
        std::process::exit(2)
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(run(case, n));
}
