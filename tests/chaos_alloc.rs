//! The chaos layer's pass-through path allocates nothing, disabled or enabled: counted by a
//! global allocator. An injected latency allocates nothing either (the decision, the draw and
//! the sleep live in atomics and in the future).

mod common;

use std::{convert::Infallible, time::Duration};

use common::alloc::{Counting, allocations_in_calls};
use tower::ServiceBuilder;
use tower_rampart::chaos::{ChaosLayer, Config, Fault};

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by 10,000 calls through a layer with `config`, after a warm-up.
fn allocations_with(config: Config) -> u64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(ChaosLayer::new(config))
        .service_fn(|x: u64| async move { Ok::<_, Infallible>(x) });
    rt.block_on(allocations_in_calls(&mut svc))
}

fn config(fault: Fault, rate: f64, enabled: bool) -> Config {
    Config::builder()
        .fault(fault)
        .injection_rate(rate)
        .enabled(enabled)
        .seed(1)
        .build()
        .unwrap()
}

#[test]
fn passing_calls_do_not_allocate() {
    assert_eq!(allocations_with(config(Fault::Error, 1.0, false)), 0);
    // Enabled, rate 0: the settings are read, no call is injected.
    assert_eq!(allocations_with(config(Fault::Error, 0.0, true)), 0);
}

#[test]
fn injected_latency_does_not_allocate() {
    let latency = Fault::Latency(Duration::from_millis(1));
    assert_eq!(allocations_with(config(latency, 1.0, true)), 0);
}
