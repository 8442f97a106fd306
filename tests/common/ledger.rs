//! The Idempotency-Key harness shared by the store fault matrices (Redis, PostgreSQL): a fenced
//! ledger (one row per key, with the owner token that wrote it), the `/pay` handler that counts
//! its invocations, selects on `lease().lost()` and commits only while it holds its lease, the
//! app around it, the client side (`send`, `documented`) and the waits (`until`, `not_stuck`).
//! Also the plain counting `/pay` route and the POST of the store smoke tests.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    time::{Duration, Instant},
};

use axum::{
    Extension, Router,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use tower_rampart::idempotency::{
    DoNotStore, IdempotencyContext, IdempotencyLayer, OnStoreError, Store, problem_types,
};

use super::http::{Answer, client, serve};

/// A handler's work when the request names none (`x-work-ms`).
pub const SHORT_WORK: u64 = 50;
/// The body of the handler's own 503 when it lost its key.
pub const LOST_BODY: &str = "lease lost: not committed";

// ---------------------------------------------------------------------------------------------
// The fenced ledger and the handler.

#[derive(Default)]
pub struct Books {
    /// Invocations per scoped key.
    pub invocations: HashMap<String, usize>,
    /// Commit attempts per scoped key (by handlers that held their lease), by owner token.
    pub attempts: HashMap<String, Vec<u128>>,
    /// The payments: one row per key, with the token that wrote it (the unique constraint).
    pub rows: HashMap<String, u128>,
    /// Owner tokens whose handler learned that its lease was lost.
    pub lost: HashSet<u128>,
    /// The token of each invocation, in order, per key.
    pub tokens: HashMap<String, Vec<u128>>,
}

#[derive(Clone, Default)]
pub struct Ledger(Arc<Mutex<Books>>);

impl Ledger {
    pub fn books(&self) -> std::sync::MutexGuard<'_, Books> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn invocations(&self, key: &str) -> usize {
        self.books()
            .invocations
            .get(&scoped(key))
            .copied()
            .unwrap_or(0)
    }

    pub fn attempts(&self, key: &str) -> usize {
        self.books().attempts.get(&scoped(key)).map_or(0, Vec::len)
    }

    pub fn commits(&self, key: &str) -> usize {
        usize::from(self.books().rows.contains_key(&scoped(key)))
    }

    pub fn first_token(&self, key: &str) -> u128 {
        self.books().tokens[&scoped(key)][0]
    }

    pub fn saw_loss(&self, token: u128) -> bool {
        self.books().lost.contains(&token)
    }

    /// The invariant of every scenario: at most one commit attempt per key, by an owner that
    /// held its lease.
    pub fn check_once(&self) {
        let b = self.books();
        for (key, attempts) in &b.attempts {
            assert!(
                attempts.len() <= 1,
                "{key}: {} commit attempts by owners that believed they held the key ({:?})",
                attempts.len(),
                b.invocations.get(key)
            );
        }
    }
}

/// The layer's scoped form of a client key with global keys.
pub fn scoped(key: &str) -> String {
    format!("0::{key}")
}

/// Takes `x-work-ms` (`SHORT_WORK` by default; not part of the fingerprint), stopping early if
/// the lease is lost; commits only while it holds the lease, fenced by the ledger.
async fn pay(
    State(ledger): State<Ledger>,
    Extension(ctx): Extension<IdempotencyContext>,
    headers: HeaderMap,
) -> Response {
    let work = headers
        .get("x-work-ms")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(SHORT_WORK);
    let token = ctx.token.as_u128();
    let key = ctx.key.to_string();
    let run = {
        let mut b = ledger.books();
        b.tokens.entry(key.clone()).or_default().push(token);
        let n = b.invocations.entry(key.clone()).or_default();
        *n += 1;
        *n
    };
    let lost = tokio::select! {
        () = ctx.lease().lost() => true,
        () = tokio::time::sleep(Duration::from_millis(work)) => !ctx.lease().is_held(),
    };
    if lost {
        ledger.books().lost.insert(token);
        let mut res = (StatusCode::SERVICE_UNAVAILABLE, LOST_BODY).into_response();
        res.extensions_mut().insert(DoNotStore);
        return res;
    }
    let mut b = ledger.books();
    b.attempts.entry(key.clone()).or_default().push(token);
    if b.rows.contains_key(&key) {
        // The fence: a stale owner's write is refused. Never expected in these schedules.
        return (StatusCode::CONFLICT, "already processed").into_response();
    }
    b.rows.insert(key, token);
    (StatusCode::CREATED, format!("{{\"run\":{run}}}")).into_response()
}

/// The ledger's `/pay` behind the layer over `store`, served over real HTTP.
pub struct App<S> {
    pub url: String,
    pub ledger: Ledger,
    pub store: S,
}

/// How the layer of an [`App`] is configured (each fault matrix has its own numbers).
pub struct Limits {
    pub lease: Duration,
    pub store_timeout: Duration,
    pub ttl: Duration,
    pub on_error: OnStoreError,
}

impl<S: Store + Clone> App<S> {
    /// Serves the ledger's `/pay` behind an Idempotency-Key layer with global keys over `store`.
    pub async fn serve(store: S, limits: Limits) -> App<S> {
        let layer = IdempotencyLayer::builder()
            .store(store.clone())
            .global_keys()
            .lease(limits.lease)
            .store_timeout(limits.store_timeout)
            .ttl(limits.ttl)
            .on_store_error(limits.on_error)
            .build()
            .unwrap();
        let ledger = Ledger::default();
        let router = Router::new()
            .route("/pay", post(pay))
            .with_state(ledger.clone())
            .layer(layer);
        App {
            url: format!("{}/pay", serve(router).await),
            ledger,
            store,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Answers.

impl Answer {
    /// The handler's own 503: it lost its key and did not commit.
    pub fn handler_lost(&self) -> bool {
        self.status == 503 && self.problem.is_none() && self.body == LOST_BODY
    }
}

/// POSTs `{"amount":1}` with `key` to `url`, the handler working `work_ms` if given.
pub async fn post_key(url: &str, key: &str, work_ms: Option<u64>) -> Answer {
    let mut req = client().post(url).header("idempotency-key", key);
    if let Some(ms) = work_ms {
        req = req.header("x-work-ms", ms.to_string());
    }
    let res = req.body("{\"amount\":1}").send().await.unwrap();
    let (status, headers) = (res.status(), res.headers().clone());
    Answer::new(status, &headers, res.text().await.unwrap())
}

/// POSTs to the ledger's `/pay` with `key`, the handler working `work_ms`.
pub async fn send(url: &str, key: &str, work_ms: u64) -> Answer {
    post_key(url, key, Some(work_ms)).await
}

/// Every answer is one the README documents (for this layer and this handler).
pub fn documented(a: &Answer) {
    use problem_types as p;
    let ok = match a.status {
        201 => a.problem.is_none(),
        409 => a.is_problem(p::IN_FLIGHT) || a.is_problem(p::NOT_REPLAYABLE),
        422 => a.is_problem(p::MISMATCH),
        500 => a.is_problem(p::UNREADABLE_RECORD) || a.is_problem(p::HANDLER_FAILED),
        503 => a.is_problem(p::STORE_UNAVAILABLE) || a.handler_lost(),
        _ => false,
    };
    assert!(ok, "undocumented answer {a:?}");
}

// ---------------------------------------------------------------------------------------------
// Waits.

/// Waits until the app's own store connection answers again (the fault has cleared).
pub async fn until_ready(store: &impl Store) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.ready().await.is_err() {
        assert!(Instant::now() < deadline, "the store never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Starts a request for `key` whose handler works `work` ms, and waits until it runs; returns
/// the request and its handler's owner token.
pub async fn owner<S>(
    app: &App<S>,
    key: &'static str,
    work: u64,
) -> (tokio::task::JoinHandle<Answer>, u128) {
    let first = tokio::spawn({
        let url = app.url.clone();
        async move { send(&url, key, work).await }
    });
    until("the first handler runs", || {
        app.ledger.invocations(key) == 1
    })
    .await;
    (first, app.ledger.first_token(key))
}

/// One `lease` after the fault cleared, a retry is replayed or runs once, and the key then
/// holds exactly one commit.
pub async fn not_stuck<S: Store>(app: &App<S>, key: &str, lease: Duration) -> Answer {
    until_ready(&app.store).await;
    tokio::time::sleep(lease + Duration::from_millis(50)).await;
    let mut a = send(&app.url, key, SHORT_WORK).await;
    // A store that is slow for a moment (the pool replacing connections the fault broke, on a
    // machine running the whole suite) is refused as store-unavailable and a client retries;
    // a stuck key answers 409 in-flight, which no retry here excuses.
    for _ in 0..3 {
        if !a.is_problem(problem_types::STORE_UNAVAILABLE) {
            break;
        }
        documented(&a);
        tokio::time::sleep(Duration::from_millis(100)).await;
        a = send(&app.url, key, SHORT_WORK).await;
    }
    documented(&a);
    assert_eq!(
        a.status, 201,
        "{key}: stuck one lease after the fault: {a:?}"
    );
    assert_eq!(app.ledger.commits(key), 1, "{key}");
    // And it stays answered: a replay, never a second run.
    let again = send(&app.url, key, SHORT_WORK).await;
    assert_eq!(
        (again.status, again.replayed),
        (201, true),
        "{key}: {again:?}"
    );
    assert_eq!(again.body, a.body);
    app.ledger.check_once();
    a
}

/// `not_stuck`, and the key ran at most twice (the stale owner and at most one successor) with
/// exactly one commit attempt.
pub async fn recovered<S: Store>(app: &App<S>, key: &str, lease: Duration) -> Answer {
    let a = not_stuck(app, key, lease).await;
    let runs = app.ledger.invocations(key);
    assert!(
        runs <= 2,
        "{key}: the stale owner and at most one successor: {runs}"
    );
    assert_eq!(app.ledger.attempts(key), 1, "{key}");
    a
}

/// The verdict after a fault that outlasted the lease: every answer documented, the `owner` told
/// it lost its key (its `first` answer is the handler's own 503), at least two duplicates
/// refused as store-unavailable, then the key `recovered`.
pub async fn told_and_refused<S: Store>(
    app: &App<S>,
    key: &str,
    first: &Answer,
    owner: u128,
    answers: &[Answer],
    lease: Duration,
) {
    answers.iter().for_each(documented);
    documented(first);
    assert!(first.handler_lost(), "{key}: the owner was told: {first:?}");
    assert!(app.ledger.saw_loss(owner), "{key}");
    assert!(
        refused(answers) >= 2,
        "{key}: duplicates during the fault were refused: {answers:?}"
    );
    recovered(app, key, lease).await;
}

/// Each of `apps` in turn answers `key` 500 unreadable-record (a damaged record never runs, even
/// failing open).
pub async fn unreadable_in<S>(apps: &[&App<S>], key: &str) {
    for app in apps {
        let a = send(&app.url, key, 0).await;
        documented(&a);
        assert_eq!(a.status, 500, "{key}: {a:?}");
        assert!(
            a.is_problem(problem_types::UNREADABLE_RECORD),
            "{key}: {a:?}"
        );
    }
}

/// How many of `answers` the layer refused because the store was unavailable.
pub fn refused(answers: &[Answer]) -> usize {
    answers
        .iter()
        .filter(|a| a.is_problem(problem_types::STORE_UNAVAILABLE))
        .count()
}

// ---------------------------------------------------------------------------------------------
// The plain counting route of the store smoke tests.

/// A `/pay` route that takes `work`, then counts its run in `runs` and answers 201
/// `{"payment":n}`; the caller puts its layer on it.
pub fn counting(runs: Arc<AtomicUsize>, work: Duration) -> Router {
    Router::new()
        .route(
            "/pay",
            post(
                |State((runs, work)): State<(Arc<AtomicUsize>, Duration)>| async move {
                    tokio::time::sleep(work).await;
                    let n = runs.fetch_add(1, SeqCst) + 1;
                    (StatusCode::CREATED, format!("{{\"payment\":{n}}}"))
                },
            ),
        )
        .with_state((runs, work))
}
