//! Circuit-breaker overhead on the success path, against the bare service and two peers.
//!
//! Every measured call is `svc.ready().await` followed by `svc.call(x).await` on a `service_fn`
//! that answers at once, so the figures are the cost of the middleware itself. Only the
//! success path is measured: the breakers stay closed (checked after every benchmark, see
//! [`check`]).
//!
//! Groups:
//!
//! - `closed_single_task`: one task on a current-thread runtime. Time per call.
//! - `shared_tasks`: one breaker shared by 1 or 2 tasks on a 2-worker multi-thread runtime,
//!   each task on its own worker (see [`drive_tasks`]). Each task makes `iters` calls on its
//!   own clone of the service; the figure is **wall time / iters**, i.e. the time per call
//!   *per task*, where wall time runs from the first task's first call to the last task's last
//!   call. Two tasks running perfectly in parallel give the same figure as one task; two tasks
//!   that fully serialise give twice it.
//! - `time_window_load`: the time window (10 s, 10 buckets) starting each sample empty, or
//!   holding 100,000 calls recorded just before (real clock, well inside the window).
//!
//! Peers and their configurations:
//!
//! - `tower-resilience` 0.13 (`circuitbreaker`): `sliding_window_type(CountBased)`,
//!   `sliding_window_size(100)` (so `minimum_number_of_calls` = 100), failure rate 0.5 (its
//!   default); and `sliding_window_type(TimeBased)`, `sliding_window_duration(10 s)` (window
//!   size, hence minimum calls, 100). Services are clones of one layered service, which share
//!   one circuit.
//! - `failsafe` 1.3: `Config::new().build()` (success rate 80 % over 30 s, at least 5 requests,
//!   or 5 consecutive failures; equal-jittered backoff 10 s..300 s), wrapping the inner
//!   service's call future with `failsafe::futures::CircuitBreaker::call`.
//!
//! `rampart_live/count_100` is the count breaker behind a reloadable `LiveBreaker`.
//!
//! `rampart_leaked/*` are the same breakers after `CircuitBreakerLayer::leak()` (static memory, no
//! reference count per call).
//!
//! Run: `cargo bench --bench circuit_breaker`.

use std::{
    convert::Infallible,
    fmt::Debug,
    future::Future,
    hint::black_box,
    sync::{
        Arc,
        atomic::{
            AtomicU64, AtomicUsize,
            Ordering::{Relaxed, SeqCst},
        },
    },
    time::{Duration, Instant},
};

use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, criterion_group, criterion_main, measurement::WallTime,
};
use tokio::runtime::{Builder as RtBuilder, Runtime};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_rampart::circuit_breaker::{
    CircuitBreakerHandle, CircuitBreakerLayer, Config, LiveBreaker, State,
};
use tower_resilience::circuitbreaker::{CircuitBreakerLayer as TrLayer, SlidingWindowType};

const WARM_UP: Duration = Duration::from_secs(1);
const MEASURE: Duration = Duration::from_secs(3);
const PREFILL: u64 = 100_000;

/// Calls that did not succeed during the current benchmark (should stay 0).
static NOT_OK: AtomicU64 = AtomicU64::new(0);

/// The inner service: answers at once.
fn leaf() -> impl Service<
    u64,
    Response = u64,
    Error = Infallible,
    Future = impl Future<Output = Result<u64, Infallible>> + Send + 'static,
> + Clone
+ Send
+ Sync
+ 'static {
    service_fn(|x: u64| async move { Ok::<_, Infallible>(x) })
}

/// `iters` calls, each `ready().await` then `call(x).await`; returns the time they took.
async fn drive<S>(svc: &mut S, iters: u64) -> Duration
where
    S: Service<u64, Response = u64>,
    S::Error: Debug,
{
    let mut not_ok = 0;
    let start = Instant::now();
    for i in 0..iters {
        let r = match svc.ready().await {
            Ok(s) => s.call(black_box(i)).await,
            Err(e) => Err(e),
        };
        if black_box(r).is_err() {
            not_ok += 1;
        }
    }
    let elapsed = start.elapsed();
    if not_ok > 0 {
        NOT_OK.fetch_add(not_ok, Relaxed);
    }
    elapsed
}

/// Same as [`drive`], with the inner call future wrapped by a `failsafe` breaker.
async fn drive_failsafe<S, B>(svc: &mut S, breaker: &B, iters: u64) -> Duration
where
    S: Service<u64, Response = u64>,
    S::Error: Debug,
    B: failsafe::futures::CircuitBreaker,
{
    let mut not_ok = 0;
    let start = Instant::now();
    for i in 0..iters {
        let r = match svc.ready().await {
            Ok(s) => breaker.call(s.call(black_box(i))).await.map_err(drop),
            Err(_) => Err(()),
        };
        if black_box(r).is_err() {
            not_ok += 1;
        }
    }
    let elapsed = start.elapsed();
    if not_ok > 0 {
        NOT_OK.fetch_add(not_ok, Relaxed);
    }
    elapsed
}

/// `tasks` tasks on `rt`, each making `iters` calls on its own clone of `svc`, started together;
/// returns the wall time from the first task's first call to the last task's last call (the
/// caller divides by `iters`, giving the time per call per task).
///
/// Tasks that never wait run to completion on the worker that picked them up, and tokio may
/// hand two freshly spawned tasks to the same worker, which would then run them one after the
/// other. So task `k + 1` is spawned only once task `k` runs (and spins at the gate, keeping
/// its worker busy): with `tasks` <= workers, each task gets its own worker. The gate opens
/// when every task has arrived; spawn, wake-up and join latencies stay outside the figure.
fn drive_tasks<S>(rt: &Runtime, svc: &S, tasks: usize, iters: u64) -> Duration
where
    S: Service<u64, Response = u64> + Clone + Send + 'static,
    S::Error: Debug + Send,
    S::Future: Send,
{
    let arrived = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::with_capacity(tasks);
    for k in 0..tasks {
        let (mut svc, gate) = (svc.clone(), arrived.clone());
        handles.push(rt.spawn(async move {
            gate.fetch_add(1, SeqCst);
            while gate.load(SeqCst) < tasks {
                std::hint::spin_loop();
            }
            let start = Instant::now();
            drive(&mut svc, iters).await;
            (start, Instant::now())
        }));
        while arrived.load(SeqCst) <= k {
            std::thread::yield_now();
        }
    }
    let spans: Vec<(Instant, Instant)> = handles
        .into_iter()
        .map(|h| rt.block_on(h).expect("task panicked"))
        .collect();
    let first = spans.iter().map(|s| s.0).min().expect("at least one task");
    let last = spans.iter().map(|s| s.1).max().expect("at least one task");
    last - first
}

/// Reports calls that did not succeed, and for our breakers the state and window readings, so
/// that a figure measured off the success path never goes unnoticed.
fn check(bench: &str, handle: Option<&CircuitBreakerHandle>) {
    let not_ok = NOT_OK.swap(0, Relaxed);
    if not_ok > 0 {
        eprintln!(
            "WARNING {bench}: {not_ok} calls did not succeed; the figure is not the success path"
        );
    }
    if let Some(h) = handle {
        let s = h.snapshot();
        if s.state != State::Closed || s.not_permitted > 0 {
            eprintln!("WARNING {bench}: breaker left the success path: {s:?}");
        } else if s.failures > 0 || s.slow_calls > 0 {
            // Every call of the benchmark succeeded at once, so the window should hold none.
            eprintln!(
                "WARNING {bench}: window reports failures or slow calls although every call \
                 succeeded at once: {s:?}"
            );
        }
    }
}

fn rampart_count() -> CircuitBreakerLayer {
    CircuitBreakerLayer::new(
        Config::builder()
            .name("bench-count")
            .count_window(100)
            .minimum_calls(100)
            .build()
            .expect("valid config"),
    )
}

fn rampart_time() -> CircuitBreakerLayer {
    CircuitBreakerLayer::new(
        Config::builder()
            .name("bench-time")
            .time_window(Duration::from_secs(10), 10)
            .build()
            .expect("valid config"),
    )
}

fn rampart_consecutive() -> CircuitBreakerLayer {
    CircuitBreakerLayer::new(
        Config::builder()
            .name("bench-consecutive")
            .consecutive_failures(5)
            .build()
            .expect("valid config"),
    )
}

fn resilience_count() -> TrLayer {
    TrLayer::builder()
        .sliding_window_type(SlidingWindowType::CountBased)
        .sliding_window_size(100)
        .build()
        .expect("valid config")
}

fn resilience_time() -> TrLayer {
    TrLayer::builder()
        .sliding_window_type(SlidingWindowType::TimeBased)
        .sliding_window_duration(Duration::from_secs(10))
        .build()
        .expect("valid config")
}

fn current_thread() -> Runtime {
    RtBuilder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn configure(group: &mut BenchmarkGroup<'_, WallTime>) {
    group.warm_up_time(WARM_UP).measurement_time(MEASURE);
}

/// One long-lived service per benchmark, driven by one task.
fn bench_single<S>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    id: &str,
    svc: S,
    handle: Option<CircuitBreakerHandle>,
) where
    S: Service<u64, Response = u64> + Clone,
    S::Error: Debug,
{
    group.bench_function(id, |b| {
        b.to_async(rt).iter_custom(|iters| {
            let mut svc = svc.clone();
            async move { drive(&mut svc, iters).await }
        })
    });
    check(&format!("closed_single_task/{id}"), handle.as_ref());
}

fn closed_single_task(c: &mut Criterion) {
    let rt = current_thread();
    let mut group = c.benchmark_group("closed_single_task");
    configure(&mut group);

    bench_single(&mut group, &rt, "bare", leaf(), None);

    let layer = rampart_count();
    bench_single(
        &mut group,
        &rt,
        "rampart/count_100",
        layer.layer(leaf()),
        Some(layer.handle()),
    );

    let layer = rampart_time();
    bench_single(
        &mut group,
        &rt,
        "rampart/time_10s",
        layer.layer(leaf()),
        Some(layer.handle()),
    );

    let layer = rampart_consecutive();
    bench_single(
        &mut group,
        &rt,
        "rampart/consecutive_5",
        layer.layer(leaf()),
        Some(layer.handle()),
    );

    // The count breaker behind a `LiveBreaker` (reloadable): one `ArcSwap` load per call more.
    let live = LiveBreaker::new(
        Config::builder()
            .name("bench-live")
            .count_window(100)
            .minimum_calls(100)
            .build()
            .expect("valid config"),
    );
    bench_single(
        &mut group,
        &rt,
        "rampart_live/count_100",
        CircuitBreakerLayer::live(live.clone()).layer(leaf()),
        None,
    );
    let s = live.current().snapshot(tokio::time::Instant::now());
    if s.state != State::Closed || s.failures > 0 {
        eprintln!("WARNING rampart_live/count_100: breaker left the success path: {s:?}");
    }

    // The same three with `leak()`: the breaker in static memory, no reference count per call.
    for (id, layer) in [
        ("rampart_leaked/count_100", rampart_count()),
        ("rampart_leaked/time_10s", rampart_time()),
        ("rampart_leaked/consecutive_5", rampart_consecutive()),
    ] {
        let layer = layer.leak();
        bench_single(
            &mut group,
            &rt,
            id,
            layer.layer(leaf()),
            Some(layer.handle()),
        );
    }

    bench_single(
        &mut group,
        &rt,
        "tower_resilience/count_100",
        resilience_count().layer(leaf()),
        None,
    );

    // Its time window keeps one record per call and scans them all on every call, so this
    // figure grows with the calls made in the last 10 s of the benchmark itself.
    bench_single(
        &mut group,
        &rt,
        "tower_resilience/time_10s",
        resilience_time().layer(leaf()),
        None,
    );

    let breaker = failsafe::Config::new().build();
    let svc = leaf();
    group.bench_function("failsafe/default", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (mut svc, breaker) = (svc.clone(), breaker.clone());
            async move { drive_failsafe(&mut svc, &breaker, iters).await }
        })
    });
    check("closed_single_task/failsafe/default", None);

    group.finish();
}

/// One breaker shared by 1 and by 2 tasks. Per-call figure = wall time / iters (time per call
/// per task): 2 tasks in perfect parallel equal the 1-task figure.
fn bench_shared<S>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    name: &str,
    make: impl Fn() -> (S, Option<CircuitBreakerHandle>),
) where
    S: Service<u64, Response = u64> + Clone + Send + 'static,
    S::Error: Debug + Send,
    S::Future: Send,
{
    for tasks in [1usize, 2] {
        // A fresh breaker for each task count, shared by all the tasks of that benchmark.
        let (svc, handle) = make();
        let id = BenchmarkId::new(name, format!("{tasks}_tasks"));
        group.bench_with_input(id, &tasks, |b, &tasks| {
            b.iter_custom(|iters| drive_tasks(rt, &svc, tasks, iters))
        });
        check(
            &format!("shared_tasks/{name}/{tasks}_tasks"),
            handle.as_ref(),
        );
    }
}

fn shared_tasks(c: &mut Criterion) {
    let rt = RtBuilder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("shared_tasks");
    configure(&mut group);

    bench_shared(&mut group, &rt, "bare", || (leaf(), None));
    bench_shared(&mut group, &rt, "rampart/count_100", || {
        let layer = rampart_count();
        (layer.layer(leaf()), Some(layer.handle()))
    });
    bench_shared(&mut group, &rt, "rampart/time_10s", || {
        let layer = rampart_time();
        (layer.layer(leaf()), Some(layer.handle()))
    });
    bench_shared(&mut group, &rt, "rampart_leaked/count_100", || {
        let layer = rampart_count().leak();
        (layer.layer(leaf()), Some(layer.handle()))
    });
    bench_shared(&mut group, &rt, "rampart_leaked/time_10s", || {
        let layer = rampart_time().leak();
        (layer.layer(leaf()), Some(layer.handle()))
    });
    bench_shared(&mut group, &rt, "rampart_leaked/consecutive_5", || {
        let layer = rampart_consecutive().leak();
        (layer.layer(leaf()), Some(layer.handle()))
    });
    bench_shared(&mut group, &rt, "tower_resilience/count_100", || {
        (resilience_count().layer(leaf()), None)
    });

    group.finish();
}

/// Each sample gets a fresh time-window breaker, either empty or pre-filled with
/// [`PREFILL`] calls (real clock: the pre-fill takes milliseconds, far less than the 10 s
/// window, so every pre-filled call is still in the window while the sample runs). Only the
/// sample's own calls are timed.
fn time_window_load(c: &mut Criterion) {
    let rt = current_thread();
    let mut group = c.benchmark_group("time_window_load");
    configure(&mut group);

    for (id, prefill) in [("empty", 0), ("prefilled_100k", PREFILL)] {
        let last = std::cell::RefCell::new(None);
        group.bench_function(id, |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let layer = rampart_time();
                *last.borrow_mut() = Some(layer.handle());
                let mut svc = layer.layer(leaf());
                async move {
                    if prefill > 0 {
                        drive(&mut svc, prefill).await;
                        let calls = layer.handle().snapshot().calls;
                        assert!(calls >= prefill, "pre-fill left the window: {calls} calls");
                    }
                    drive(&mut svc, iters).await
                }
            })
        });
        check(&format!("time_window_load/{id}"), last.borrow().as_ref());
    }

    group.finish();
}

criterion_group!(benches, closed_single_task, shared_tasks, time_window_load);
criterion_main!(benches);
