//! The inbox over idempotency stores under faults: a real redis-server (killed, cut off by a
//! fault-injecting proxy, its lease left to expire) and the memory store (faults injected with
//! `FaultyStore`, on the paused clock). Effects are counted in the handler.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering::SeqCst},
    },
    time::Duration,
};

use common::{proxy::FaultProxy, redis_server::RedisServer};
use tokio::sync::Notify;
use tower::{Layer, Service, ServiceExt};
use tower_rampart::{
    BoxError,
    idempotency::{
        MemoryStore, RedisStore, Store,
        testing::{Fault, FaultyStore, Op},
    },
    message::{
        Message, Poison,
        consumer::{KeyReused, RedeliverLater},
        inbox::{InboxContext, InboxFuture, InboxLayer, Inboxed},
    },
};

const MS: Duration = Duration::from_millis(1);

fn msg(id: &str) -> Message {
    Message::new(id, "order.placed", format!("{{\"order\":\"{id}\"}}"))
}

/// An inbox over `store` whose handler counts its effects, after waiting `hold`.
fn inbox<St: Store + Clone>(
    store: St,
    lease: Duration,
    hold: Duration,
    effects: Arc<AtomicU32>,
) -> impl Service<Message, Response = Inboxed<()>, Error = BoxError, Future = InboxFuture<()>>
+ Clone
+ Send
+ 'static {
    InboxLayer::builder(store)
        .lease(lease)
        .store_timeout(lease / 4)
        .store_error_delay(Duration::from_secs(3))
        .build()
        .unwrap()
        .layer(tower::service_fn(move |_: Message| {
            let effects = effects.clone();
            async move {
                tokio::time::sleep(hold).await;
                effects.fetch_add(1, SeqCst);
                Ok::<_, BoxError>(())
            }
        }))
}

fn later(e: &BoxError) -> Option<Duration> {
    e.downcast_ref::<RedeliverLater>().map(|l| l.after)
}

/// Twenty messages, each delivered to two consumers at once: each runs once; the copy that
/// met it in flight is told to come back later, and then acked as a duplicate.
async fn two_consumers_at_once<St: Store + Clone>(store: St, hold: Duration) {
    let effects = Arc::new(AtomicU32::new(0));
    let one = inbox(store.clone(), 2000 * MS, hold, effects.clone());
    let other = inbox(store, 2000 * MS, hold, effects.clone());
    let mut calls = Vec::new();
    for i in 0..20 {
        let m = msg(&format!("dup-{i}"));
        let (a, b) = (one.clone(), other.clone());
        calls.push(tokio::spawn(async move {
            let (x, y) = tokio::join!(a.oneshot(m.clone()), b.oneshot(m));
            (x, y)
        }));
    }
    for c in calls {
        let (x, y) = c.await.unwrap();
        let ran = [&x, &y]
            .iter()
            .filter(|r| matches!(r, Ok(Inboxed::Ran(()))))
            .count();
        assert_eq!(ran, 1, "{x:?} {y:?}");
        let other = if x.is_ok() { y } else { x };
        match other {
            Ok(Inboxed::Duplicate) => {}
            Err(e) => assert!(later(&e).unwrap() <= Duration::from_secs(1), "{e}"),
            r => panic!("{r:?}"),
        }
    }
    assert_eq!(effects.load(SeqCst), 20);
    // The redeliveries: duplicates, acked without running.
    for i in 0..20 {
        let r = other
            .clone()
            .oneshot(msg(&format!("dup-{i}")))
            .await
            .unwrap();
        assert_eq!(r, Inboxed::Duplicate);
    }
    assert_eq!(effects.load(SeqCst), 20);
}

#[tokio::test(start_paused = true)]
async fn memory_a_duplicate_delivered_to_two_consumers_at_once_runs_once() {
    two_consumers_at_once(MemoryStore::new(), 100 * MS).await;
}

#[tokio::test]
async fn redis_a_duplicate_delivered_to_two_consumers_at_once_runs_once() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    two_consumers_at_once(store, 50 * MS).await;
}

#[tokio::test(start_paused = true)]
async fn memory_failures_release_reused_keys_are_refused_and_outages_fail_closed() {
    let store = FaultyStore::new(MemoryStore::new());
    let runs = Arc::new(AtomicU32::new(0));
    let r = runs.clone();
    let svc = InboxLayer::new(store.clone()).layer(tower::service_fn(move |m: Message| {
        let n = r.fetch_add(1, SeqCst);
        async move {
            if m.id() == "fails-once" && n == 0 {
                return Err::<(), BoxError>("downstream down".into());
            }
            Ok(())
        }
    }));
    // A handler error releases the key: the redelivery runs.
    let err = svc.clone().oneshot(msg("fails-once")).await.unwrap_err();
    assert_eq!(err.to_string(), "downstream down");
    assert_eq!(
        svc.clone().oneshot(msg("fails-once")).await.unwrap(),
        Inboxed::Ran(())
    );
    assert_eq!(runs.load(SeqCst), 2);
    // The same id with another payload: refused, never run.
    let reused = Message::new("fails-once", "order.placed", "{\"order\":\"other\"}");
    let err = svc.clone().oneshot(reused).await.unwrap_err();
    assert!(err.downcast_ref::<KeyReused>().is_some(), "{err}");
    // The store fails: redeliver later, never run unprotected.
    store.inject(Op::Claim, .., Fault::Fail);
    let err = svc.clone().oneshot(msg("new")).await.unwrap_err();
    assert_eq!(later(&err), Some(Duration::from_secs(5)));
    assert_eq!(runs.load(SeqCst), 2);
    // A key that cannot be one is poison.
    store.heal();
    let long = Message::new("x".repeat(600), "k", "");
    let err = svc.clone().oneshot(long).await.unwrap_err();
    assert!(Poison::is_in(&*err), "{err}");
    // Fail open runs it (and says so), for handlers idempotent by themselves.
    store.inject(Op::Claim, .., Fault::Fail);
    let open = InboxLayer::builder(store.clone())
        .fail_open()
        .build()
        .unwrap()
        .layer(tower::service_fn(|_: Message| async {
            Ok::<_, BoxError>(7)
        }));
    assert_eq!(open.oneshot(msg("new")).await.unwrap(), Inboxed::Ran(7));
}

/// Consumer A's lease lapses while its handler is stalled and its renewals fail (the store
/// faulted for A only); consumer B then runs the same message. A's handler learns it lost the
/// key before applying its effect, and skips it: the fencing the lease caveat asks for.
#[tokio::test(start_paused = true)]
async fn memory_a_lease_that_expires_while_the_handler_is_stalled() {
    let memory = MemoryStore::new();
    let a_store = FaultyStore::new(memory.clone());
    a_store.inject(Op::Renew, .., Fault::Fail);
    let effects = Arc::new(AtomicU32::new(0));
    let (started, go) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let (e, s, g) = (effects.clone(), started.clone(), go.clone());
    let a = InboxLayer::builder(a_store)
        .lease(Duration::from_secs(3))
        .store_timeout(Duration::from_secs(1))
        .build()
        .unwrap()
        .layer(tower::service_fn(move |_: Message| {
            let (e, s, g) = (e.clone(), s.clone(), g.clone());
            async move {
                let ctx = InboxContext::current().expect("under the inbox");
                s.notify_one();
                g.notified().await; // stalled
                if !ctx.is_held() {
                    return Err::<(), BoxError>("lost the key: not applying".into());
                }
                e.fetch_add(1, SeqCst);
                Ok(())
            }
        }));
    let a_run = tokio::spawn(a.oneshot(msg("m")));
    started.notified().await;
    // Before the lease ends B is told to come back later.
    let b = inbox(memory, Duration::from_secs(3), MS, effects.clone());
    let err = b.clone().oneshot(msg("m")).await.unwrap_err();
    assert!(later(&err).is_some(), "{err}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    // A's lease ran out unrenewed: B runs it.
    assert_eq!(b.clone().oneshot(msg("m")).await.unwrap(), Inboxed::Ran(()));
    go.notify_one();
    let a_result = a_run.await.unwrap();
    assert_eq!(
        a_result.unwrap_err().to_string(),
        "lost the key: not applying"
    );
    assert_eq!(effects.load(SeqCst), 1);
    // A's release did not free B's completed key.
    assert_eq!(b.oneshot(msg("m")).await.unwrap(), Inboxed::Duplicate);
}

/// The same over Redis: A reaches Redis through a proxy that stalls (a silent partition);
/// B directly. A's renewals time out, Redis lets the key expire, B runs the message, and A's
/// handler sees the loss.
#[tokio::test]
async fn redis_a_lease_that_expires_while_the_handler_is_stalled() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    let a_store = RedisStore::connect(&format!("redis://{}", proxy.addr()))
        .await
        .unwrap();
    let b_store = RedisStore::connect(&server.url()).await.unwrap();
    let effects = Arc::new(AtomicU32::new(0));
    let lost = Arc::new(Notify::new());
    let go = Arc::new(Notify::new());
    let (e, l, g) = (effects.clone(), lost.clone(), go.clone());
    let a = InboxLayer::builder(a_store)
        .lease(300 * MS)
        .store_timeout(100 * MS)
        .build()
        .unwrap()
        .layer(tower::service_fn(move |_: Message| {
            let (e, l, g) = (e.clone(), l.clone(), g.clone());
            async move {
                let ctx = InboxContext::current().expect("under the inbox");
                ctx.lost().await;
                l.notify_one();
                g.notified().await;
                if !ctx.is_held() {
                    return Err::<(), BoxError>("lost the key: not applying".into());
                }
                e.fetch_add(1, SeqCst);
                Ok(())
            }
        }));
    let a_run = tokio::spawn(a.oneshot(msg("m")));
    // Let A claim, then partition it.
    tokio::time::sleep(50 * MS).await;
    proxy.stall(true);
    tokio::time::timeout(Duration::from_secs(5), lost.notified())
        .await
        .expect("A learned it lost the key");
    let b = inbox(b_store, 300 * MS, MS, effects.clone());
    // Redis let the key go with A's unrenewed lease (within a lease of A's loss).
    let mut ran = false;
    for _ in 0..20 {
        match b.clone().oneshot(msg("m")).await {
            Ok(Inboxed::Ran(())) => {
                ran = true;
                break;
            }
            Err(e) if later(&e).is_some() => tokio::time::sleep(50 * MS).await,
            r => panic!("{r:?}"),
        }
    }
    assert!(ran, "B ran the message once A's lease expired");
    proxy.stall(false);
    proxy.cut();
    go.notify_one();
    let a_result = a_run.await.unwrap();
    assert_eq!(
        a_result.unwrap_err().to_string(),
        "lost the key: not applying"
    );
    assert_eq!(effects.load(SeqCst), 1);
    assert_eq!(b.oneshot(msg("m")).await.unwrap(), Inboxed::Duplicate);
}

/// Redis refuses connections for a moment while a handler runs (the proxy cuts and refuses):
/// a duplicate delivered meanwhile is not run (fail closed); the handler's completion is
/// retried until Redis is back, so the key is remembered and later duplicates are skipped.
#[tokio::test]
async fn redis_a_short_outage_mid_handler_loses_nothing() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    let store = RedisStore::connect(&format!("redis://{}", proxy.addr()))
        .await
        .unwrap();
    let effects = Arc::new(AtomicU32::new(0));
    let (started, go) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let (e, s, g) = (effects.clone(), started.clone(), go.clone());
    let svc = InboxLayer::builder(store)
        .lease(2000 * MS)
        .store_timeout(200 * MS)
        .build()
        .unwrap()
        .layer(tower::service_fn(move |_: Message| {
            let (e, s, g) = (e.clone(), s.clone(), g.clone());
            async move {
                s.notify_one();
                g.notified().await;
                e.fetch_add(1, SeqCst);
                Ok::<_, BoxError>(())
            }
        }));
    let first = tokio::spawn(svc.clone().oneshot(msg("m")));
    started.notified().await;
    proxy.refuse(true);
    proxy.cut();
    let err = svc.clone().oneshot(msg("m")).await.unwrap_err();
    assert!(later(&err).is_some(), "fail closed: {err}");
    // The handler ends during the outage; Redis comes back within its lease.
    go.notify_one();
    tokio::time::sleep(300 * MS).await;
    proxy.refuse(false);
    assert_eq!(first.await.unwrap().unwrap(), Inboxed::Ran(()));
    assert_eq!(svc.oneshot(msg("m")).await.unwrap(), Inboxed::Duplicate);
    assert_eq!(effects.load(SeqCst), 1);
    assert_eq!(
        server.cli(&["EXISTS", "idempotency:inbox:m"]).as_deref(),
        Some("1"),
        "the completion is stored"
    );
}

/// Redis is killed while a handler runs: duplicates meanwhile are not run, the handler's
/// success still counts (its message is acked), and its lease is reported lost. A Redis that
/// restarts empty (no persistence) has forgotten the key: "at most once while the record
/// lives", the documented caveat.
#[tokio::test]
async fn redis_the_store_killed_mid_handler() {
    let mut server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    let effects = Arc::new(AtomicU32::new(0));
    let (started, go) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let held_at_end = Arc::new(AtomicU32::new(2));
    let (e, s, g, h) = (
        effects.clone(),
        started.clone(),
        go.clone(),
        held_at_end.clone(),
    );
    let svc = InboxLayer::builder(store)
        .lease(400 * MS)
        .store_timeout(100 * MS)
        .build()
        .unwrap()
        .layer(tower::service_fn(move |_: Message| {
            let (e, s, g, h) = (e.clone(), s.clone(), g.clone(), h.clone());
            async move {
                let ctx = InboxContext::current().unwrap();
                s.notify_one();
                g.notified().await;
                e.fetch_add(1, SeqCst);
                h.store(u32::from(ctx.is_held()), SeqCst);
                Ok::<_, BoxError>(())
            }
        }));
    let first = tokio::spawn(svc.clone().oneshot(msg("m")));
    started.notified().await;
    server.kill();
    let err = svc.clone().oneshot(msg("m")).await.unwrap_err();
    assert!(later(&err).is_some(), "fail closed: {err}");
    // Longer than a lease without a renewal: the handler is told.
    tokio::time::sleep(600 * MS).await;
    go.notify_one();
    assert_eq!(first.await.unwrap().unwrap(), Inboxed::Ran(()));
    assert_eq!(
        held_at_end.load(SeqCst),
        0,
        "the handler saw its lease lost"
    );
    assert_eq!(effects.load(SeqCst), 1);
    server.restart();
    // The caveat, stated: the restarted, empty Redis runs the message again.
    go.notify_one();
    let mut again = None;
    for _ in 0..40 {
        match svc.clone().oneshot(msg("m")).await {
            Err(e) if later(&e).is_some() => tokio::time::sleep(50 * MS).await,
            r => {
                again = Some(r);
                break;
            }
        }
    }
    assert_eq!(again.unwrap().unwrap(), Inboxed::Ran(()));
    assert_eq!(effects.load(SeqCst), 2);
}
