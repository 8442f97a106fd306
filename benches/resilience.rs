//! Retry, timeout, fallback and the standard client pipeline on the success path, against the
//! bare service, tower's own layers and tower-resilience 0.13.
//!
//! Every measured call is `svc.ready().await` + `svc.call(x).await` on a current-thread runtime,
//! with an inner `service_fn` that answers at once, so the figures are the layers' own cost.
//!
//! - `retry_success`: 3 attempts allowed, none needed. Ours (`RetryLayer`, `AnyError`,
//!   `CloneRequest`, constant 1 ms backoff; `rampart_leaked` after `RetryLayer::leak()`;
//!   `rampart_reloadable` and `rampart_leaked_reloadable` after `RetryLayer::reloadable()`);
//!   `tower::retry` with a policy that allows two
//!   retries of an `Err` and clones the request; tower-resilience `RetryLayer` with
//!   `max_attempts(3)` and a fixed 1 ms backoff.
//! - `timeout_success`: 1 s timeout. Ours (`TimeoutLayer`, error mode; `rampart_reloadable`
//!   after `TimeoutLayer::reloadable()`); `tower::timeout`;
//!   tower-resilience `TimeLimiterLayer` with `timeout_duration(1 s)`.
//! - `fallback_success`: ours (`FallbackLayer::value`, triggered on errors) vs bare.
//! - `pipeline_success`: `StandardClientLayer` (total timeout > retry with budget > breaker per
//!   authority > attempt timeout) around an `http::Request` -> `http::Response` service, vs the
//!   same service bare; both build the same `GET` request per call.
//!
//! Run: `cargo bench --bench resilience`.

use std::{
    convert::Infallible,
    fmt::Debug,
    future::{Ready, ready},
    hint::black_box,
    time::{Duration, Instant},
};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::Full;
use tokio::runtime::{Builder, Runtime};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_rampart::{
    backoff::Backoff,
    fallback::{FallbackLayer, Trigger},
    pipeline::StandardClientLayer,
    retry::RetryLayer,
    timeout::TimeoutLayer,
};

fn leaf()
-> impl Service<u64, Response = u64, Error = Infallible, Future = Ready<Result<u64, Infallible>>> + Clone
{
    service_fn(|x: u64| ready(Ok::<_, Infallible>(x)))
}

/// Same as `leaf`, failing type `&str` so retry policies have an error to look at.
fn leaf_fallible()
-> impl Service<u64, Response = u64, Error = &'static str, Future = Ready<Result<u64, &'static str>>>
+ Clone {
    service_fn(|x: u64| ready(Ok::<_, &'static str>(x)))
}

async fn drive<S>(svc: &mut S, iters: u64) -> Duration
where
    S: Service<u64, Response = u64>,
    S::Error: Debug,
{
    let start = Instant::now();
    for i in 0..iters {
        let out = svc.ready().await.unwrap().call(black_box(i)).await.unwrap();
        black_box(out);
    }
    start.elapsed()
}

fn runtime() -> Runtime {
    Builder::new_current_thread().enable_all().build().unwrap()
}

fn bench<S>(c: &mut Criterion, group: &str, id: &str, rt: &Runtime, svc: S)
where
    S: Service<u64, Response = u64> + Clone,
    S::Error: Debug,
{
    let mut g = c.benchmark_group(group);
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    g.bench_function(id, |b| {
        b.to_async(rt).iter_custom(|iters| {
            let mut svc = svc.clone();
            async move { drive(&mut svc, iters).await }
        })
    });
    g.finish();
}

/// tower's retry with "two retries of an `Err`", cloning the request.
#[derive(Clone)]
struct TwoRetries(u8);

impl<Req: Clone, Res, E> tower::retry::Policy<Req, Res, E> for TwoRetries {
    type Future = Ready<()>;

    fn retry(&mut self, _: &mut Req, result: &mut Result<Res, E>) -> Option<Self::Future> {
        match result {
            Err(_) if self.0 > 0 => {
                self.0 -= 1;
                Some(ready(()))
            }
            _ => None,
        }
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

fn retry_success(c: &mut Criterion) {
    let rt = runtime();
    bench(c, "retry_success", "bare", &rt, leaf_fallible());
    let ours = RetryLayer::builder()
        .max_attempts(3)
        .backoff(Backoff::constant(Duration::from_millis(1)))
        .build()
        .unwrap();
    bench(
        c,
        "retry_success",
        "rampart",
        &rt,
        ours.layer(leaf_fallible()),
    );
    // Reloadable: each call takes the current policy version (see `RetryLayer::reloadable`).
    let (reloadable, _reload) = ours.clone().reloadable();
    bench(
        c,
        "retry_success",
        "rampart_reloadable",
        &rt,
        reloadable.layer(leaf_fallible()),
    );
    let leaked = ours.leak();
    bench(
        c,
        "retry_success",
        "rampart_leaked",
        &rt,
        leaked.layer(leaf_fallible()),
    );
    let (leaked_reloadable, _reload) = leaked.clone().reloadable();
    bench(
        c,
        "retry_success",
        "rampart_leaked_reloadable",
        &rt,
        leaked_reloadable.layer(leaf_fallible()),
    );
    let tower_retry = tower::retry::RetryLayer::new(TwoRetries(2));
    bench(
        c,
        "retry_success",
        "tower",
        &rt,
        tower_retry.layer(leaf_fallible()),
    );
    let theirs = tower_resilience::retry::RetryLayer::<u64, u64, &'static str>::builder()
        .max_attempts(3)
        .fixed_backoff(Duration::from_millis(1))
        .build();
    bench(
        c,
        "retry_success",
        "tower_resilience",
        &rt,
        theirs.layer(leaf_fallible()),
    );
}

fn timeout_success(c: &mut Criterion) {
    let rt = runtime();
    let d = Duration::from_secs(1);
    bench(c, "timeout_success", "bare", &rt, leaf());
    bench(
        c,
        "timeout_success",
        "rampart",
        &rt,
        TimeoutLayer::new(d).unwrap().layer(leaf()),
    );
    let (reloadable, _reload) = TimeoutLayer::new(d).unwrap().reloadable();
    bench(
        c,
        "timeout_success",
        "rampart_reloadable",
        &rt,
        reloadable.layer(leaf()),
    );
    bench(
        c,
        "timeout_success",
        "tower",
        &rt,
        tower::timeout::TimeoutLayer::new(d).layer(leaf()),
    );
    let theirs = tower_resilience::timelimiter::TimeLimiterLayer::builder()
        .timeout_duration(d)
        .build();
    bench(
        c,
        "timeout_success",
        "tower_resilience",
        &rt,
        theirs.layer(leaf()),
    );
}

fn fallback_success(c: &mut Criterion) {
    let rt = runtime();
    bench(c, "fallback_success", "bare", &rt, leaf_fallible());
    let ours = FallbackLayer::value(0u64).on(&[Trigger::Error]);
    bench(
        c,
        "fallback_success",
        "rampart",
        &rt,
        ours.layer(leaf_fallible()),
    );
}

type HttpAnswer = Response<Full<Bytes>>;

fn http_leaf() -> impl Service<
    Request<Bytes>,
    Response = HttpAnswer,
    Error = Infallible,
    Future = Ready<Result<HttpAnswer, Infallible>>,
> + Clone {
    // An empty body ends at the head: the client pipeline's end-of-stream breaker records at once.
    service_fn(|_req: Request<Bytes>| {
        ready(Ok::<_, Infallible>(Response::new(Full::new(Bytes::new()))))
    })
}

async fn drive_http<S, B>(svc: &mut S, iters: u64) -> Duration
where
    S: Service<Request<Bytes>, Response = Response<B>>,
    S::Error: Debug,
{
    let start = Instant::now();
    for _ in 0..iters {
        let req = Request::get("http://api.local/items")
            .body(Bytes::new())
            .unwrap();
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(black_box(req))
            .await
            .unwrap();
        black_box(res.status());
    }
    start.elapsed()
}

fn pipeline_success(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("pipeline_success");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    let bare = http_leaf();
    g.bench_function("bare", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let mut svc = bare.clone();
            async move { drive_http(&mut svc, iters).await }
        })
    });
    let piped = StandardClientLayer::builder()
        .build()
        .unwrap()
        .layer(http_leaf());
    g.bench_function("rampart_standard_client", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let mut svc = piped.clone();
            async move { drive_http(&mut svc, iters).await }
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    retry_success,
    timeout_success,
    fallback_success,
    pipeline_success
);
criterion_main!(benches);
