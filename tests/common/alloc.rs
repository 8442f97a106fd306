//! A global allocator that counts the allocations of the current thread. Each test binary that
//! uses it declares its own static: `#[global_allocator] static GLOBAL: Counting = Counting;`.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
};

use tower::{Service, ServiceExt};

pub struct Counting;

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

/// Allocations this thread has made so far.
pub fn allocations() -> u64 {
    ALLOCS.with(Cell::get)
}

/// Allocations made by 10,000 calls through `svc`, after 100 warm-up calls (first polls may set
/// up runtime state). Each call must echo its input.
pub async fn allocations_in_calls<S>(svc: &mut S) -> u64
where
    S: Service<u64, Response = u64>,
    S::Error: std::fmt::Debug,
{
    for i in 0..100 {
        svc.ready().await.unwrap().call(i).await.unwrap();
    }
    let before = allocations();
    for i in 0..10_000 {
        let out = svc.ready().await.unwrap().call(i).await.unwrap();
        assert_eq!(out, i);
    }
    allocations() - before
}
