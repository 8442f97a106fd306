//! A streaming (SSE) response behind the Idempotency-Key layer reaches the first caller as the
//! handler produces it, while a copy is kept for the store: real axum server, real reqwest
//! client reading the body as a stream. The handler waits on a gate the test opens, so "the
//! first event arrived before the handler produced the rest" needs no clock.

mod common;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

use axum::{
    Router,
    extract::State,
    response::sse::{Event, Sse},
    routing::post,
};
use bytes::Bytes;
use common::http::{Answer, client, serve};
use futures_util::{Stream, StreamExt, stream};
use tokio::sync::{Notify, Semaphore};
use tower_rampart::idempotency::{EventKind, IDEMPOTENT_REPLAYED, IdempotencyLayer, problem_types};

const EVENTS: usize = 12;

#[derive(Clone)]
struct Chat {
    runs: Arc<AtomicUsize>,
    /// Events produced so far, over every run.
    produced: Arc<AtomicUsize>,
    /// Event 0 goes at once; the rest wait for one permit.
    gate: Arc<Semaphore>,
    /// Told when a run produced its last event.
    finished: Arc<Notify>,
    /// Fails the body after this many events.
    fail_after: Option<usize>,
    /// The layer's events.
    kinds: Arc<Mutex<Vec<EventKind>>>,
}

impl Default for Chat {
    fn default() -> Self {
        Chat {
            runs: Arc::default(),
            produced: Arc::default(),
            gate: Arc::new(Semaphore::new(0)),
            finished: Arc::default(),
            fail_after: None,
            kinds: Arc::default(),
        }
    }
}

/// An LLM-style endpoint: 12 SSE events, 50 ms apart after the gate opens.
async fn chat(State(chat): State<Chat>) -> Sse<impl Stream<Item = Result<Event, std::io::Error>>> {
    chat.runs.fetch_add(1, SeqCst);
    let events = stream::unfold((0usize, chat), |(i, chat)| async move {
        if i == EVENTS {
            chat.finished.notify_one();
            return None;
        }
        if chat.fail_after == Some(i) {
            let e = std::io::Error::other("the model went away");
            return Some((Err(e), (EVENTS, chat)));
        }
        if i == 1 {
            chat.gate.acquire().await.unwrap().forget();
        }
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        chat.produced.fetch_add(1, SeqCst);
        let event = Event::default().data(format!("token {i}"));
        Some((Ok(event), (i + 1, chat)))
    });
    Sse::new(events)
}

async fn app(state: Chat, max_response_body: usize) -> String {
    // A short lease: a stream outlives several, renewed until the key completes.
    let layer = IdempotencyLayer::builder()
        .global_keys()
        .lease(Duration::from_millis(60))
        .store_timeout(Duration::from_millis(20))
        .max_response_body(max_response_body)
        .on_event({
            let kinds = state.kinds.clone();
            move |e| kinds.lock().unwrap().push(e.kind)
        })
        .build()
        .unwrap();
    let app = Router::new()
        .route("/chat", post(chat))
        .with_state(state)
        .layer(layer);
    format!("{}/chat", serve(app).await)
}

async fn start(client: &reqwest::Client, url: &str, key: &str) -> reqwest::Response {
    let send = client
        .post(url)
        .header("idempotency-key", key)
        .body("{\"prompt\":\"hi\"}")
        .send();
    tokio::time::timeout(Duration::from_secs(5), send)
        .await
        .expect("the headers of a streamed response come at once")
        .unwrap()
}

async fn answer(client: &reqwest::Client, url: &str, key: &str) -> (Answer, Bytes) {
    let res = start(client, url, key).await;
    let (status, headers) = (res.status(), res.headers().clone());
    let body = res.bytes().await.unwrap();
    let text = String::from_utf8_lossy(&body).into_owned();
    (Answer::new(status, &headers, text), body)
}

/// Reads until the body ends: every byte, or the error that ended it.
async fn read_rest(
    body: &mut (impl Stream<Item = reqwest::Result<Bytes>> + Unpin),
    into: &mut Vec<u8>,
) -> Result<(), reqwest::Error> {
    while let Some(chunk) = body.next().await {
        into.extend_from_slice(&chunk?);
    }
    Ok(())
}

#[tokio::test]
async fn the_first_caller_gets_each_event_as_produced_and_the_retry_a_replay() {
    let chat = Chat::default();
    let url = app(chat.clone(), 1 << 20).await;
    let client = client();

    let res = start(&client, &url, "chat-1").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    assert!(res.headers().get(IDEMPOTENT_REPLAYED).is_none());
    let headers = res.headers().clone();
    let mut body = res.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(5), body.next())
        .await
        .expect("the first event arrives while the handler is still producing")
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&first).contains("token 0"),
        "{first:?}"
    );
    assert_eq!(
        chat.produced.load(SeqCst),
        1,
        "the rest is not produced yet"
    );

    // A duplicate while the stream runs, several leases later: still in flight.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (dup, _) = answer(&client, &url, "chat-1").await;
    assert_eq!(dup.status, 409, "{dup:?}");
    assert_eq!(dup.problem.as_deref(), Some(problem_types::IN_FLIGHT));

    chat.gate.add_permits(1);
    let mut all = first.to_vec();
    read_rest(&mut body, &mut all).await.unwrap();
    let text = String::from_utf8_lossy(&all);
    for i in 0..EVENTS {
        assert!(text.contains(&format!("data: token {i}\n")), "{text}");
    }

    // Read to the end, then retried at once: the replay, byte for byte.
    let replay = start(&client, &url, "chat-1").await;
    assert_eq!(replay.status(), 200);
    assert_eq!(replay.headers()[IDEMPOTENT_REPLAYED], "true");
    assert_eq!(replay.headers()["content-type"], headers["content-type"]);
    assert_eq!(replay.bytes().await.unwrap(), all);
    assert_eq!(chat.runs.load(SeqCst), 1);
}

/// Larger than the replay limit: the first caller still gets it all, as produced; the key
/// completes as not replayable and never runs again.
#[tokio::test]
async fn an_over_limit_stream_completes_as_not_replayable() {
    let chat = Chat::default();
    chat.gate.add_permits(1);
    let url = app(chat.clone(), 64).await;
    let client = client();

    let (first, body) = answer(&client, &url, "chat-2").await;
    assert_eq!(first.status, 200);
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("token 0") && text.contains("token 11"),
        "{text}"
    );
    assert!(body.len() > 64);

    let (retry, _) = answer(&client, &url, "chat-2").await;
    assert_eq!(retry.status, 409, "{retry:?}");
    assert_eq!(
        retry.problem.as_deref(),
        Some(problem_types::NOT_REPLAYABLE)
    );
    assert_eq!(chat.runs.load(SeqCst), 1);
    // Completed part-way through the stream: the lease is no longer renewed (nor lost).
    let kinds = chat.kinds.lock().unwrap().clone();
    assert!(!kinds.contains(&EventKind::LeaseLost), "{kinds:?}");
}

/// The first caller goes away after the first event: the detached owner drains the handler's
/// body to its end and completes the key, so the retry gets the whole replay.
#[tokio::test]
async fn a_caller_that_disconnects_mid_stream_leaves_a_complete_replay() {
    let chat = Chat::default();
    let url = app(chat.clone(), 1 << 20).await;
    let client = client();

    let res = start(&client, &url, "chat-3").await;
    let mut body = res.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("token 0"));
    drop(body);

    let finished = chat.finished.notified();
    chat.gate.add_permits(1);
    tokio::time::timeout(Duration::from_secs(5), finished)
        .await
        .expect("the handler's body is drained without its caller");
    // The completion lands just after the last event was read.
    let mut replay = None;
    for _ in 0..100 {
        let (a, body) = answer(&client, &url, "chat-3").await;
        if a.status != 409 {
            replay = Some((a, body));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (replay, body) = replay.expect("the key completes");
    assert!(
        (replay.status, replay.replayed) == (200, true),
        "{replay:?}"
    );
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("token 0") && text.contains("token 11"),
        "{text}"
    );
    assert_eq!(chat.runs.load(SeqCst), 1);
}

/// The body fails after two events: the first caller's stream ends with an error, and the key
/// completes as not replayable (the handler ran; it never runs again).
#[tokio::test]
async fn a_body_error_mid_stream_ends_the_stream_and_is_not_replayable() {
    let chat = Chat {
        fail_after: Some(2),
        ..Chat::default()
    };
    chat.gate.add_permits(1);
    let url = app(chat.clone(), 1 << 20).await;
    let client = client();

    let res = start(&client, &url, "chat-4").await;
    assert_eq!(res.status(), 200);
    let mut body = res.bytes_stream();
    let mut read = Vec::new();
    let end = read_rest(&mut body, &mut read).await;
    assert!(end.is_err(), "the stream ends with an error, not cleanly");
    // hyper closes the connection on a body error, possibly before flushing the last event.
    assert!(
        String::from_utf8_lossy(&read).contains("token 0"),
        "{end:?}"
    );

    let (retry, _) = answer(&client, &url, "chat-4").await;
    assert_eq!(retry.status, 409, "{retry:?}");
    assert_eq!(
        retry.problem.as_deref(),
        Some(problem_types::NOT_REPLAYABLE)
    );
    assert_eq!(chat.runs.load(SeqCst), 1);
}
