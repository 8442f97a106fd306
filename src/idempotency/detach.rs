//! The owner of a new key runs detached from its caller, yet costs no task of its own while the
//! caller waits for it: the request's future polls it, and hands it to a task of its own only
//! when it must outlive that future (the caller went away, or the owner goes on after
//! answering: a streamed body, a completion being retried).
//!
//! It is never polled inside a caller's call id or deadline: with either in scope (a rampart
//! layer outside this one) it moves to its own task, so that a timeout outside bounds only
//! how long the caller waits, never the handler.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::sync::oneshot::{self, error::RecvError, error::TryRecvError};

/// The owner's work, boxed once: moving it to a task moves a pointer.
pub(crate) type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Waits for the owner's answer, driving the owner while it has no task of its own.
pub(crate) struct Owning<T> {
    /// `Some` while the owner is polled here.
    task: Option<Task>,
    answer: oneshot::Receiver<T>,
    /// The caller's span, for the owner's task if it gets one.
    #[cfg(feature = "tracing")]
    span: tracing::Span,
}

impl<T> Owning<T> {
    pub(crate) fn new(task: Task, answer: oneshot::Receiver<T>) -> Self {
        Owning {
            task: Some(task),
            answer,
            #[cfg(feature = "tracing")]
            span: current_span(),
        }
    }

    /// Moves the owner, if it is still polled here, to a task of its own.
    pub(crate) fn detach(&mut self) {
        let Some(task) = self.task.take() else { return };
        // Outside a runtime (it is shutting down) the owner is dropped, as its task would be:
        // the lease frees the key.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        #[cfg(feature = "tracing")]
        let task = tracing::Instrument::instrument(task, self.span.clone());
        runtime.spawn(task);
    }
}

/// The caller's span, for work that may move to a task of its own. With `tracing` built in and
/// no subscriber ever set (global or scoped), there is none to look up: `Span::none()` at once.
#[cfg(feature = "tracing")]
pub(crate) fn current_span() -> tracing::Span {
    if tracing::dispatcher::has_been_set() {
        tracing::Span::current()
    } else {
        tracing::Span::none()
    }
}

/// Whether a rampart layer outside has a call or a deadline in scope on this thread (asking
/// draws no call id: nobody may ever want one).
pub(crate) fn in_outer_call() -> bool {
    crate::timeout::Deadline::current().is_some() || crate::call::in_scope()
}

impl<T> Future for Owning<T> {
    type Output = Result<T, RecvError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if let Some(task) = &mut this.task {
            if in_outer_call() {
                this.detach();
            } else {
                if task.as_mut().poll(cx).is_ready() {
                    this.task = None;
                }
                // The owner answers while polled here: no waker needed for the answer.
                match this.answer.try_recv() {
                    Ok(answer) => {
                        this.detach();
                        return Poll::Ready(Ok(answer));
                    }
                    Err(TryRecvError::Empty) if this.task.is_some() => return Poll::Pending,
                    Err(_) => {}
                }
            }
        }
        Pin::new(&mut this.answer).poll(cx)
    }
}

impl<T> Drop for Owning<T> {
    fn drop(&mut self) {
        // The caller went away: the owner goes on.
        self.detach();
    }
}

#[cfg(test)]
mod tests {
    //! The owner polled by its request's future: each test first sends a warm-up request, so
    //! that the layer's renewal queue holds a key and the request under test is polled in
    //! place (not moved to a task at once, as when the renewals' task was just scheduled).

    use std::{
        sync::{
            Arc, Mutex,
            atomic::{AtomicUsize, Ordering::SeqCst},
        },
        time::Duration,
    };

    use axum::{Router, body::Body, http::StatusCode, routing::post};
    use http::Request;
    use tokio::sync::Notify;
    use tower::{Layer, ServiceExt};

    use crate::{
        call::CallId,
        idempotency::{IDEMPOTENT_REPLAYED, IdempotencyLayer},
        timeout::{Deadline, TimeoutLayer},
    };

    fn req(key: &str) -> Request<Body> {
        Request::post("/pay")
            .header("idempotency-key", key)
            .body(Body::from("{}"))
            .unwrap()
    }

    /// A handler that blocks its worker thread for four leases, polled in its request's task,
    /// keeps its key: the renewals run on the other workers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_handler_polled_in_place_that_blocks_its_thread_keeps_its_lease() {
        let runs = Arc::new(AtomicUsize::new(0));
        let counter = runs.clone();
        let layer = IdempotencyLayer::builder()
            .global_keys()
            .lease(Duration::from_millis(300))
            .store_timeout(Duration::from_millis(100))
            .build()
            .unwrap();
        let app = Router::new()
            .route(
                "/pay",
                post(move |body: String| async move {
                    if body == "block" {
                        counter.fetch_add(1, SeqCst);
                        // A synchronous driver: the worker thread is blocked, not the task.
                        std::thread::sleep(Duration::from_millis(1200));
                    }
                    (StatusCode::CREATED, "{}")
                }),
            )
            .layer(layer);
        let warm = app.clone().oneshot(req("warm")).await.unwrap();
        assert_eq!(warm.status(), StatusCode::CREATED);
        let blocking = |app: Router| async move {
            let req = Request::post("/pay")
                .header("idempotency-key", "blocking-1")
                .body(Body::from("block"))
                .unwrap();
            app.oneshot(req).await.unwrap().status()
        };
        let first = tokio::spawn(blocking(app.clone()));
        tokio::time::sleep(Duration::from_millis(700)).await;
        let duplicate = blocking(app.clone()).await;
        assert_eq!(first.await.unwrap(), StatusCode::CREATED);
        assert_eq!(
            duplicate,
            StatusCode::CONFLICT,
            "the key was lost meanwhile"
        );
        assert_eq!(runs.load(SeqCst), 1);
    }

    /// A timeout outside the layer bounds the caller's wait, never the handler: the handler
    /// sees neither the caller's deadline nor its call id, runs to its end after the caller
    /// gave up, and its response is stored for the retry.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_outer_timeout_neither_reaches_nor_cancels_the_handler() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let release = Arc::new(Notify::new());
        let layer = IdempotencyLayer::builder().global_keys().build().unwrap();
        let app = Router::new()
            .route(
                "/pay",
                post({
                    let (seen, release) = (seen.clone(), release.clone());
                    move |body: String| async move {
                        seen.lock().unwrap().push((
                            body.clone(),
                            Deadline::current().is_some(),
                            CallId::current().is_some(),
                        ));
                        if body == "wait" {
                            release.notified().await;
                        }
                        (StatusCode::CREATED, body)
                    }
                }),
            )
            .layer(layer);
        let outer = TimeoutLayer::new(Duration::from_millis(100)).unwrap();
        let send = |key: &'static str, body: &'static str| {
            let app = outer.layer(app.clone());
            async move {
                let req = Request::post("/pay")
                    .header("idempotency-key", key)
                    .body(Body::from(body))
                    .unwrap();
                app.oneshot(req).await
            }
        };
        assert!(send("warm", "now").await.is_ok());
        assert!(send("k", "wait").await.is_err(), "the caller gave up");
        release.notify_one();
        let retry = loop {
            let res = send("k", "wait").await.unwrap();
            if res.status() != StatusCode::CONFLICT {
                break res;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(retry.status(), StatusCode::CREATED);
        assert_eq!(retry.headers()[IDEMPOTENT_REPLAYED], "true");
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen,
            [("now".into(), false, false), ("wait".into(), false, false)],
            "handlers ran once each, outside the caller's deadline and call"
        );
    }

    /// A caller dropped while its handler runs in its request's future: the handler goes on in
    /// a task of its own and its response is stored.
    #[tokio::test]
    async fn a_caller_that_goes_away_leaves_the_handler_running() {
        let runs = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(Notify::new());
        let layer = IdempotencyLayer::builder().global_keys().build().unwrap();
        let app = Router::new()
            .route(
                "/pay",
                post({
                    let (runs, release) = (runs.clone(), release.clone());
                    move |body: String| async move {
                        if body == "{}" {
                            release.notified().await;
                        }
                        runs.fetch_add(1, SeqCst);
                        (StatusCode::CREATED, "paid")
                    }
                }),
            )
            .layer(layer);
        let warm = Request::post("/pay")
            .header("idempotency-key", "warm")
            .body(Body::from("now"))
            .unwrap();
        assert_eq!(app.clone().oneshot(warm).await.unwrap().status(), 201);
        let gone = tokio::time::timeout(Duration::from_millis(20), app.clone().oneshot(req("k")));
        assert!(gone.await.is_err(), "the caller gave up");
        assert_eq!(runs.load(SeqCst), 1, "only the warm-up has run");
        release.notify_one();
        let retry = loop {
            let res = app.clone().oneshot(req("k")).await.unwrap();
            if res.status() != StatusCode::CONFLICT {
                break res;
            }
            tokio::task::yield_now().await;
        };
        assert_eq!(retry.headers()[IDEMPOTENT_REPLAYED], "true");
        assert_eq!(runs.load(SeqCst), 2);
    }
}
