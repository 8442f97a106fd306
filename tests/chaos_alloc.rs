//! The chaos layer's pass-through path allocates nothing, disabled or enabled: counted by a
//! global allocator. An injected latency allocates nothing either (the decision, the draw and
//! the sleep live in atomics and in the future).

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    convert::Infallible,
    time::Duration,
};

use tower::{Service, ServiceBuilder, ServiceExt};
use tower_rampart::chaos::{ChaosLayer, Config, Fault};

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|a| a.set(a.get() + 1));
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.with(|a| a.set(a.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCS.with(Cell::get)
}

/// Allocations made by 10,000 calls through a layer with `config`, after a warm-up.
fn allocations_in_calls(config: Config) -> u64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(ChaosLayer::new(config))
        .service_fn(|x: u64| async move { Ok::<_, Infallible>(x) });
    rt.block_on(async {
        for i in 0..100 {
            svc.ready().await.unwrap().call(i).await.unwrap();
        }
        let before = allocations();
        for i in 0..10_000 {
            let out = svc.ready().await.unwrap().call(i).await.unwrap();
            assert_eq!(out, i);
        }
        allocations() - before
    })
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
    assert_eq!(allocations_in_calls(config(Fault::Error, 1.0, false)), 0);
    // Enabled, rate 0: the settings are read, no call is injected.
    assert_eq!(allocations_in_calls(config(Fault::Error, 0.0, true)), 0);
}

#[test]
fn injected_latency_does_not_allocate() {
    let latency = Fault::Latency(Duration::from_millis(1));
    assert_eq!(allocations_in_calls(config(latency, 1.0, true)), 0);
}
