//! The closed-state hot path allocates nothing: counted by a global allocator.

mod common;

use std::{convert::Infallible, time::Duration};

use common::alloc::{Counting, allocations, allocations_in_calls};
use tower::ServiceBuilder;
use tower_rampart::circuit_breaker::{CircuitBreakerLayer, Config};

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn closed_state_calls_do_not_allocate() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let configs = [
        ("count", Config::builder().count_window(100)),
        (
            "time",
            Config::builder().time_window(Duration::from_secs(10), 10),
        ),
        ("consecutive", Config::builder().consecutive_failures(5)),
        (
            "count+slow",
            Config::builder()
                .count_window(100)
                .slow_calls(Duration::from_secs(1), 0.5),
        ),
    ];
    for (name, builder) in configs {
        let layer = CircuitBreakerLayer::new(builder.name(name).build().unwrap());
        let mut svc = ServiceBuilder::new()
            .layer(layer)
            .service_fn(|x: u64| async move { Ok::<_, Infallible>(x) });
        let during = rt.block_on(allocations_in_calls(&mut svc));
        assert_eq!(during, 0, "{name}: {during} allocations in 10,000 calls");
    }
}

#[test]
fn the_counter_sees_allocations() {
    // Guards the test above against a counter that never counts.
    let before = allocations();
    let v = std::hint::black_box(vec![1u8; 16]);
    assert!(allocations() > before);
    drop(v);
}
