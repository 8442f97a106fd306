//! A flaky downstream: an axum app that counts its hits and answers by hit number.

use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use axum::{Router, extract::State, response::Response, routing::any};

/// The hits a server saw, with their arrival times; clones share them.
#[derive(Clone, Default)]
pub struct Hits(Arc<Mutex<Vec<Instant>>>);

impl Hits {
    /// Records a hit; its number, from 1.
    pub fn hit(&self) -> usize {
        let mut v = self.0.lock().unwrap();
        v.push(Instant::now());
        v.len()
    }

    /// How many hits so far.
    pub fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// The arrival times so far.
    pub fn times(&self) -> Vec<Instant> {
        self.0.lock().unwrap().clone()
    }
}

/// A router whose `/` (any method) answers what `respond` says for the hit number (from 1),
/// and the hits it records.
pub fn counting_server(respond: fn(usize) -> Response) -> (Router, Hits) {
    let hits = Hits::default();
    let app = Router::new()
        .route(
            "/",
            any(move |State(hits): State<Hits>| async move { respond(hits.hit()) }),
        )
        .with_state(hits.clone());
    (app, hits)
}

/// `status` as a response with an empty body.
pub fn status(code: axum::http::StatusCode) -> Response {
    axum::response::IntoResponse::into_response(code)
}
