//! Reloading a retry layer's policy while services made by it serve calls.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::SeqCst},
    },
    time::Duration,
};

use tokio::time::Instant;
use tower::{Service, ServiceExt, service_fn};
use tower_layer::Layer;

use super::{Budget, Builder, EventKind, RetryLayer, RetryReload};
use crate::{BoxError, backoff::Backoff};

const TEN_MS: Duration = Duration::from_millis(10);

fn builder(attempts: u32, delay: Duration) -> Builder {
    RetryLayer::builder()
        .max_attempts(attempts)
        .backoff(Backoff::constant(delay))
}

/// A service that always fails and counts its attempts.
fn failing(
    attempts: &Arc<AtomicU32>,
) -> impl Service<(), Response = (), Error = BoxError, Future: Send> + Clone + Send + 'static {
    let attempts = attempts.clone();
    service_fn(move |()| {
        attempts.fetch_add(1, SeqCst);
        async { Err::<(), BoxError>("down".into()) }
    })
}

/// Makes one call; returns the attempts it made and the (paused) time it took.
async fn call_once<S>(svc: &mut S, attempts: &AtomicU32) -> (u32, Duration)
where
    S: Service<(), Error = BoxError>,
{
    let (before, start) = (attempts.load(SeqCst), Instant::now());
    let result = svc.ready().await.unwrap().call(()).await;
    assert!(result.is_err());
    (attempts.load(SeqCst) - before, start.elapsed())
}

/// Both kinds of reloadable layer, each with its own policy: counted, and leaked before
/// reloading.
fn both(b: impl Fn() -> Builder) -> [(RetryLayer, RetryReload); 2] {
    let counted = b().build().unwrap();
    let leaked = b().build().unwrap().leak();
    [counted.reloadable(), leaked.reloadable()]
}

#[tokio::test(start_paused = true)]
async fn services_made_before_a_reload_follow_it() {
    for (layer, reload) in both(|| builder(2, TEN_MS)) {
        let attempts = Arc::new(AtomicU32::new(0));
        let mut svc = layer.layer(failing(&attempts));
        let mut clone = svc.clone();
        assert_eq!(call_once(&mut svc, &attempts).await, (2, TEN_MS));
        reload
            .apply(builder(4, Duration::from_millis(100)))
            .unwrap();
        let expected = (4, Duration::from_millis(300));
        assert_eq!(call_once(&mut svc, &attempts).await, expected);
        assert_eq!(call_once(&mut clone, &attempts).await, expected);
        // A service made after the reload, and through a clone of the layer, too.
        let mut later = layer.clone().layer(failing(&attempts));
        assert_eq!(call_once(&mut later, &attempts).await, expected);
        assert_eq!(reload.current().max_attempts, 4);
    }
}

#[tokio::test(start_paused = true)]
async fn a_call_keeps_the_policy_it_started_with() {
    for (layer, reload) in both(|| builder(3, Duration::from_secs(1))) {
        let attempts = Arc::new(AtomicU32::new(0));
        let mut svc = layer.layer(failing(&attempts));
        let started = Instant::now();
        let call = tokio::spawn(svc.ready().await.unwrap().call(()));
        // The first attempt failed; the call waits out its first 1 s delay.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(attempts.load(SeqCst), 1);
        reload.apply(builder(5, TEN_MS)).unwrap();
        assert!(call.await.unwrap().is_err());
        // Three attempts, two delays of 1 s: the old policy, to the end.
        assert_eq!(attempts.load(SeqCst), 3);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        // The next call uses the new one.
        assert_eq!(call_once(&mut svc, &attempts).await, (5, 4 * TEN_MS));
    }
}

#[tokio::test(start_paused = true)]
async fn a_call_with_one_attempt_allowed_stays_at_one() {
    // The call keeps no copy of its request when its policy allows no retry: a reload during
    // the call must not make it try to retry.
    let (layer, reload) = builder(1, TEN_MS).build().unwrap().reloadable();
    let attempts = Arc::new(AtomicU32::new(0));
    let gate = Arc::new(tokio::sync::Notify::new());
    let (seen, wait) = (attempts.clone(), gate.clone());
    let mut svc = layer.layer(service_fn(move |()| {
        seen.fetch_add(1, SeqCst);
        let wait = wait.clone();
        async move {
            wait.notified().await;
            Err::<(), BoxError>("down".into())
        }
    }));
    let call = tokio::spawn(svc.ready().await.unwrap().call(()));
    tokio::task::yield_now().await;
    reload.apply(builder(5, TEN_MS)).unwrap();
    gate.notify_one();
    assert!(call.await.unwrap().is_err());
    assert_eq!(attempts.load(SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_refused_builder_changes_nothing() {
    for (layer, reload) in both(|| builder(2, TEN_MS)) {
        let attempts = Arc::new(AtomicU32::new(0));
        let mut svc = layer.layer(failing(&attempts));
        let refusals = [
            (builder(0, TEN_MS), "max_attempts"),
            (builder(101, TEN_MS), "max_attempts"),
            (
                builder(5, TEN_MS).max_elapsed(Duration::ZERO),
                "max_elapsed",
            ),
            (
                builder(5, TEN_MS).backoff(Backoff::exponential(TEN_MS).multiplier(0.5)),
                "multiplier",
            ),
            (
                builder(5, TEN_MS).backoff(Backoff::exponential(Duration::ZERO)),
                "initial_delay",
            ),
        ];
        for (b, field) in refusals {
            let expected = b.check().unwrap_err();
            let err = reload.apply(b).unwrap_err();
            assert_eq!(err, expected, "the same error as build()");
            assert_eq!(err.setting(), Some(field));
        }
        let now = reload.current();
        assert_eq!(now.max_attempts, 2);
        assert_eq!(now.backoff, Backoff::constant(TEN_MS));
        assert_eq!(call_once(&mut svc, &attempts).await, (2, TEN_MS));
    }
}

#[test]
fn the_budget_is_kept_when_its_settings_are() {
    let tokens = || Budget::token_bucket(10, 0.1).unwrap();
    for (_layer, reload) in both(|| RetryLayer::builder().budget(tokens())) {
        let first = reload.current().budget.unwrap();
        for _ in 0..3 {
            first.record_outcome(false);
        }
        let now = Instant::now();
        assert_eq!(first.remaining(now), 7.0);
        // Same settings: the same budget, with its state.
        reload.apply(builder(5, TEN_MS).budget(tokens())).unwrap();
        let kept = reload.current().budget.unwrap();
        assert!(kept.same_budget(&first));
        assert_eq!(kept.remaining(now), 7.0);
        assert_eq!(reload.current().max_attempts, 5);
        // Other settings: the builder's budget, fresh.
        let other = Budget::token_bucket(20, 0.1).unwrap();
        reload
            .apply(builder(5, TEN_MS).budget(other.clone()))
            .unwrap();
        let replaced = reload.current().budget.unwrap();
        assert!(replaced.same_budget(&other) && !replaced.same_budget(&first));
        assert_eq!(replaced.remaining(now), 20.0);
        // Another kind: replaced too.
        let percent = Budget::percent(0.2, 10, Duration::from_secs(10)).unwrap();
        reload
            .apply(builder(5, TEN_MS).budget(percent.clone()))
            .unwrap();
        assert!(reload.current().budget.unwrap().same_budget(&percent));
        // No budget in the builder: none from now on.
        reload.apply(builder(5, TEN_MS)).unwrap();
        assert!(reload.current().budget.is_none());
    }
}

#[tokio::test(start_paused = true)]
async fn the_name_and_listeners_are_kept() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let ignored = Arc::new(AtomicU32::new(0));
    let count = ignored.clone();
    let (layer, reload) = builder(2, TEN_MS)
        .name("ledger")
        .on_event(move |e| log.lock().unwrap().push((e.retry.to_owned(), e.kind)))
        .build()
        .unwrap()
        .reloadable();
    reload
        .apply(builder(3, TEN_MS).name("other").on_event(move |_| {
            count.fetch_add(1, SeqCst);
        }))
        .unwrap();
    assert_eq!(layer.name(), "ledger");
    assert_eq!(&*reload.current().name, "ledger");
    let attempts = Arc::new(AtomicU32::new(0));
    let mut svc = layer.layer(failing(&attempts));
    call_once(&mut svc, &attempts).await;
    let events = seen.lock().unwrap().clone();
    assert_eq!(events.len(), 3, "two retries, one give-up: {events:?}");
    assert!(events.iter().all(|(name, _)| name == "ledger"));
    assert!(matches!(events[2].1, EventKind::GaveUp { attempts: 3, .. }));
    assert_eq!(ignored.load(SeqCst), 0, "the builder's listener is ignored");
}

#[test]
fn reloadable_twice_shares_one_policy() {
    let (layer, first) = builder(2, TEN_MS).build().unwrap().reloadable();
    let (_layer, second) = layer.clone().reloadable();
    second.apply(builder(4, TEN_MS)).unwrap();
    assert_eq!(first.current().max_attempts, 4);
    // `leak` leaves a reloadable layer reloadable.
    let (_leaked, third) = layer.leak().reloadable();
    third.apply(builder(6, TEN_MS)).unwrap();
    assert_eq!(first.current().max_attempts, 6);
    assert!(format!("{first:?}").contains("max_attempts: 6"));
}

/// Many calls through clones of one service while another thread keeps switching the policy
/// between 2 and 5 attempts: every call makes exactly 2 or 5 attempts, never a mix, and every
/// call issued is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_calls_each_see_one_version() {
    const TASKS: u64 = 8;
    const CALLS: u64 = 300;
    // A zero constant delay: retries without sleeping, so versions change within calls.
    let policy = |n| builder(n, Duration::ZERO);
    for (layer, reload) in both(|| policy(2)) {
        let counts: Arc<Vec<AtomicU32>> =
            Arc::new((0..TASKS * CALLS).map(|_| AtomicU32::new(0)).collect());
        let per_call = counts.clone();
        let svc = layer.layer(service_fn(move |id: u64| {
            per_call[id as usize].fetch_add(1, SeqCst);
            async { Err::<(), BoxError>("down".into()) }
        }));
        let done = Arc::new(AtomicBool::new(false));
        let applies = Arc::new(AtomicU64::new(0));
        let switcher = {
            let (done, applies) = (done.clone(), applies.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !done.load(SeqCst) {
                    reload
                        .apply(policy(if n.is_multiple_of(2) { 5 } else { 2 }))
                        .unwrap();
                    n += 1;
                    applies.store(n, SeqCst);
                    std::thread::yield_now();
                }
            })
        };
        let answered = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                let (mut svc, answered) = (svc.clone(), answered.clone());
                tokio::spawn(async move {
                    for i in 0..CALLS {
                        let id = t * CALLS + i;
                        let result = svc.ready().await.unwrap().call(id).await;
                        assert!(result.is_err());
                        answered.fetch_add(1, SeqCst);
                        if i % 16 == 0 {
                            tokio::task::yield_now().await;
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        done.store(true, SeqCst);
        switcher.join().unwrap();
        assert_eq!(answered.load(SeqCst), TASKS * CALLS, "no call lost");
        let counts: Vec<u32> = counts.iter().map(|c| c.load(SeqCst)).collect();
        let mixed: Vec<_> = counts.iter().filter(|&&c| c != 2 && c != 5).collect();
        assert!(mixed.is_empty(), "calls with a mix of versions: {mixed:?}");
        assert!(applies.load(SeqCst) > 1, "the policy was switched");
        // Both versions served calls (the switcher runs all along).
        assert!(counts.contains(&2) && counts.contains(&5), "{counts:?}");
    }
}
