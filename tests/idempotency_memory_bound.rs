//! A memory store bounded at N bytes holds at most N bytes: what the process allocates for it,
//! counted by a global allocator while keys are stored through the layer until the store is
//! full, stays within the bound (records, stored responses, the maps that hold them and the
//! tables' spare room included).

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicIsize, Ordering::Relaxed},
};

use axum::{Router, body::Body, http::StatusCode, routing::post};
use http::Request;
use tower::ServiceExt;
use tower_rampart::idempotency::{IdempotencyLayer, MemoryStore};

/// Live bytes of the whole process.
struct Live;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Live {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Live = Live;

async fn post_new_key(app: &Router, key: &str) -> StatusCode {
    let req = Request::post("/payments")
        .header("idempotency-key", key)
        .header("content-type", "application/json")
        .body(Body::from("{\"amount\":1}"))
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap();
    status
}

/// Stores new keys through the layer until the store answers 503; the bytes the process holds
/// afterwards, over what it held before the store was made, and the keys stored.
async fn filled(max_bytes: usize, handler_headers: usize) -> (isize, usize) {
    let before = LIVE.load(Relaxed);
    let store = MemoryStore::with_max_bytes(max_bytes);
    let app = Router::new()
        .route(
            "/payments",
            post(move || async move {
                let mut res = axum::response::Response::new(Body::from("{\"id\":1}"));
                *res.status_mut() = StatusCode::CREATED;
                for i in 0..handler_headers {
                    res.headers_mut().insert(
                        format!("x-trace-{i}").parse::<http::HeaderName>().unwrap(),
                        i.into(),
                    );
                }
                res
            }),
        )
        .layer(
            IdempotencyLayer::builder()
                .store(store.clone())
                .global_keys()
                .build()
                .unwrap(),
        );
    let mut stored = 0;
    loop {
        match post_new_key(&app, &format!("key-{stored:08}")).await {
            StatusCode::CREATED => stored += 1,
            StatusCode::SERVICE_UNAVAILABLE => break,
            other => panic!("key {stored}: {other}"),
        }
        assert!(stored < 1_000_000, "the store never filled up");
    }
    // Past the first renewal of every key: the layer's renewal queue lets go of them (it
    // holds each key for a third of its lease, which is the layer's memory, not the store's).
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    drop(app);
    let held = LIVE.load(Relaxed) - before;
    drop(store);
    (held, stored)
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_full_memory_store_holds_no_more_than_its_bound() {
    for (max_bytes, headers) in [(1 << 20, 0), (4 << 20, 0), (4 << 20, 3)] {
        let (held, stored) = filled(max_bytes, headers).await;
        eprintln!(
            "bound {max_bytes}, {headers} extra headers: {stored} keys stored, {held} bytes held ({} per key)",
            held / stored as isize
        );
        assert!(stored > 100, "{stored} keys");
        assert!(
            held <= max_bytes as isize,
            "a store bounded at {max_bytes} bytes holds {held} ({stored} keys, {headers} extra headers)"
        );
    }
}
