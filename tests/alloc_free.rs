//! The closed-state hot path allocates nothing: counted by a global allocator.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    convert::Infallible,
    time::Duration,
};

use tower::{Service, ServiceBuilder, ServiceExt};
use tower_rampart::circuit_breaker::{CircuitBreakerLayer, Config};

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
        rt.block_on(async {
            // Warm up: first polls may set up runtime state.
            for i in 0..100 {
                svc.ready().await.unwrap().call(i).await.unwrap();
            }
            let before = allocations();
            for i in 0..10_000 {
                let out = svc.ready().await.unwrap().call(i).await.unwrap();
                assert_eq!(out, i);
            }
            let during = allocations() - before;
            assert_eq!(during, 0, "{name}: {during} allocations in 10,000 calls");
        });
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
