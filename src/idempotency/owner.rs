//! The owner of a claimed key: runs the handler detached from the client, holds the lease from
//! the claim until the completion is stored, and stores it (retrying while the lease holds).

use std::{any::Any, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body;
use tokio::{sync::oneshot, time::Instant};
use tower_service::Service;

use super::{
    Completion, DoNotStore, EventKind, Fingerprint, IdempotencyContext, OwnerToken, Store,
    claim::Handoff,
    detach::{Owning, Task},
    instrument::{Op, outcome, within},
    layer::Settings,
    lease::{LeaseSender, lease},
    outage::later,
    problem::{problem, problem_types as kind},
    relay,
    renew::{Renewals, renew},
    request::Keyed,
};
use crate::{
    BoxError, catch::CatchUnwind, circuit_breaker::CircuitOpen, replay::Buffered, timeout::Elapsed,
};

pub(crate) type Answer<ResB, E> = Result<Response<Buffered<ResB>>, E>;

/// One claimed key and what its owner needs.
pub(super) struct Owned<St> {
    pub(super) settings: Arc<Settings<St>>,
    pub(super) key: Arc<str>,
    fingerprint: Fingerprint,
    token: OwnerToken,
    lease: LeaseSender,
    /// When the claim was sent: the lease runs from there.
    claimed_at: Instant,
    /// Stopped once the completion is stored: a stream relayed after that needs no lease.
    renewals: Renewals,
}

pub(super) type Reply<ResB, E> = oneshot::Sender<Answer<ResB, E>>;

/// Runs the handler for a key just claimed with `token`, detached: a client that disconnects
/// does not cancel it half-way (see `detach`). Answers with the handler's response.
pub(crate) async fn start<S, St, B, ResB>(
    settings: Arc<Settings<St>>,
    service: S,
    keyed: Keyed,
    token: OwnerToken,
    claimed_at: Instant,
    handoff: Handoff<St>,
) -> Answer<ResB, S::Error>
where
    S: Service<Request<Buffered<B>>, Response = Response<ResB>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    St: Store,
    B: Send + 'static,
    ResB: Body<Data = Bytes> + Unpin + Send + 'static,
    ResB::Error: Into<BoxError> + Send,
{
    outcome(&settings, Some(&keyed.key), EventKind::New);
    let (lease_tx, lease_rx) = lease();
    let Keyed {
        mut parts,
        body,
        key,
        fingerprint,
    } = keyed;
    parts.extensions.insert(IdempotencyContext {
        key: key.clone(),
        token,
        lease: lease_rx,
    });
    let req = Request::from_parts(parts, Buffered::<B>::full(body));
    let lease = settings.lease;
    let (renewals, displaced) = renew(&settings, key.clone(), token, lease_tx.clone(), claimed_at);
    let owned = Owned {
        settings,
        key,
        fingerprint,
        token,
        lease: lease_tx,
        claimed_at,
        renewals,
    };
    let (tx, rx) = oneshot::channel();
    // Written straight into its box: built on the stack first, this future (about 4 KiB)
    // would be copied there whole.
    let task = Box::write(Box::new_uninit(), run(owned, service, req, tx));
    let task: Task = Box::into_pin(task);
    let mut owning = Owning::new(task, rx);
    handoff.taken();
    if displaced {
        // The renewals' task was just scheduled on this worker, in its slot that other
        // workers cannot take from: a handler that blocked this worker would keep it there.
        // Spawning the owner moves it to the queue they take from.
        owning.detach();
    }
    match owning.await {
        Ok(answer) => answer,
        // The owner task itself was cancelled (runtime shutdown): nothing to replay.
        Err(_) => Ok(problem(
            StatusCode::SERVICE_UNAVAILABLE,
            kind::HANDLER_FAILED,
            "the server is shutting down; the request may not have completed",
            Some(lease),
        )),
    }
}

/// Runs the handler as the key's owner and answers the waiting request through `answer` (which
/// may be gone: the client disconnected, the run goes on). The lease is renewed until this
/// task ends.
///
/// A panic before the handler returned frees the key (the request may be retried). A panic
/// after it returned (its response body, a `keep_response_if` function, a listener, the store)
/// completes the key as "ran, not replayable": the handler ran, so it must not run again.
async fn run<S, St, B, ResB>(
    owned: Owned<St>,
    mut service: S,
    req: Request<B>,
    answer: Reply<ResB, S::Error>,
) where
    S: Service<Request<B>, Response = Response<ResB>>,
    S::Error: 'static,
    St: Store,
    ResB: Body<Data = Bytes> + Unpin + Send + 'static,
    ResB::Error: Into<BoxError> + Send,
{
    let mut answer = Some(answer);
    // The handler's status once it returned: from then on the key is never freed.
    let mut ran = None;
    // A panic becomes an `Err`, so that the owner settles its key (frees it, or keeps it as
    // not replayable) whatever panics, even if the client is gone.
    let owning = CatchUnwind::new(own(&owned, &mut service, req, &mut answer, &mut ran));
    let owned_ok = owning.await.is_ok();
    if owned_ok {
        return;
    }
    let after = CatchUnwind::new(panicked(&owned, ran, answer.take()));
    if after.await.is_err() {
        #[cfg(feature = "tracing")]
        tracing::error!(
            key = %super::redact::ShownKey::new(&owned.settings, &owned.key),
            "idempotency owner panicked twice: the key is freed when its lease ends"
        );
    }
}

/// The owner's work: run the handler, then keep or free the key.
///
/// The crate's own answers are never kept as the handler's: a breaker's refusal (the handler
/// never ran) frees the key; a timeout's (the handler was cancelled part-way) completes it as
/// "outcome unknown".
async fn own<S, St, B, ResB>(
    owned: &Owned<St>,
    service: &mut S,
    req: Request<B>,
    answer: &mut Option<Reply<ResB, S::Error>>,
    ran: &mut Option<StatusCode>,
) where
    S: Service<Request<B>, Response = Response<ResB>>,
    S::Error: 'static,
    St: Store,
    ResB: Body<Data = Bytes> + Unpin + Send + 'static,
    ResB::Error: Into<BoxError> + Send,
{
    let st = &*owned.settings;
    let release = || {
        within(
            &st.meters,
            Op::Release,
            st.store_timeout,
            st.store.release(&owned.key, owned.token),
        )
    };
    let event = |kind| outcome(st, Some(&owned.key), kind);
    let (parts, body) = match service.call(req).await {
        Ok(res) => res.into_parts(),
        Err(e) if marked::<Elapsed, _>(&e) => {
            *ran = Some(StatusCode::GATEWAY_TIMEOUT);
            event(EventKind::CutOff);
            let completion = Completion::OutcomeUnknown {
                status: StatusCode::GATEWAY_TIMEOUT,
            };
            return keep(owned, completion, || reply(answer, Err(e))).await;
        }
        Err(e) => {
            if marked::<CircuitOpen, _>(&e) {
                event(EventKind::Refused);
            }
            let _ = release().await;
            return reply(answer, Err(e));
        }
    };
    *ran = Some(parts.status);
    let passed = |parts, body| Response::from_parts(parts, Buffered::streaming(None, body));
    if parts.extensions.get::<CircuitOpen>().is_some() {
        // Refused before the handler ran: a retry may run it.
        *ran = None;
        event(EventKind::Refused);
        let _ = release().await;
        return reply(answer, Ok(passed(parts, body)));
    }
    if parts.extensions.get::<Elapsed>().is_some() {
        event(EventKind::CutOff);
        let status = parts.status;
        let res = passed(parts, body);
        let completion = Completion::OutcomeUnknown { status };
        return keep(owned, completion, || reply(answer, Ok(res))).await;
    }
    let kept = parts.extensions.get::<DoNotStore>().is_none()
        && st.keep.as_ref().is_none_or(|k| k(&parts));
    if !kept {
        // The handler asked for its key to be freed: a panic from here on frees it too.
        *ran = None;
        let _ = release().await;
        return reply(answer, Ok(passed(parts, body)));
    }
    relay::respond(owned, parts, body, answer).await;
}

/// Whether a service error is the crate's own `M` (a timeout's `Elapsed`, a breaker's
/// `CircuitOpen`), as such or boxed, as the layers in error mode return them.
fn marked<M: std::error::Error + 'static, E: 'static>(e: &E) -> bool {
    let e: &dyn Any = e;
    e.is::<M>() || e.downcast_ref::<BoxError>().is_some_and(|e| e.is::<M>())
}

pub(super) fn reply<T>(answer: &mut Option<oneshot::Sender<T>>, value: T) {
    if let Some(tx) = answer.take() {
        let _ = tx.send(value);
    }
}

/// After a panic in the owner task: free the key if the handler had not returned, else
/// complete it as not replayable. The first caller, if still unanswered, gets a 500.
async fn panicked<St, ResB, E>(
    owned: &Owned<St>,
    ran: Option<StatusCode>,
    mut answer: Option<Reply<ResB, E>>,
) where
    St: Store,
{
    let st = &*owned.settings;
    let failed = |msg| {
        problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            kind::HANDLER_FAILED,
            msg,
            None,
        )
    };
    let Some(status) = ran else {
        let release = st.store.release(&owned.key, owned.token);
        let _ = within(&st.meters, Op::Release, st.store_timeout, release).await;
        let msg = "the handler failed; the key was released, so the request may be retried";
        reply(&mut answer, Ok(failed(msg)));
        outcome(st, Some(&owned.key), EventKind::HandlerPanicked);
        return;
    };
    // What the first caller got: its response, or the 500 below.
    let status = match answer {
        Some(_) => StatusCode::INTERNAL_SERVER_ERROR,
        None => status,
    };
    let completion = Completion::NotReplayable { status };
    let msg = "the handler's response failed after the handler ran; the request will not run again";
    keep(owned, completion, || reply(&mut answer, Ok(failed(msg)))).await;
    outcome(st, Some(&owned.key), EventKind::OwnerPanicked);
    #[cfg(feature = "tracing")]
    tracing::error!(key = %super::redact::ShownKey::new(&owned.settings, &owned.key), "idempotency owner panicked after the handler ran: kept as not replayable");
}

/// Stores `completion`, retrying (with backoff, the lease still renewed) until it is stored,
/// another owner is found, or the TTL passes. The first caller is answered after the first
/// attempt, so that its own quick retry is replayed.
pub(super) async fn keep<St: Store>(
    owned: &Owned<St>,
    completion: Completion,
    answer: impl FnOnce(),
) {
    // Shared with the store: a memory store keeps it without a copy.
    let completion = Arc::new(completion);
    let first = attempt(owned, &completion).await;
    answer();
    settle(owned, &completion, first).await;
}

/// One attempt to store `completion`: `Err` when the store failed (to be retried).
pub(super) async fn attempt<St: Store>(
    owned: &Owned<St>,
    completion: &Arc<Completion>,
) -> Result<(), ()> {
    let st = &*owned.settings;
    let stored = st.store.complete_shared(
        &owned.key,
        &owned.fingerprint,
        owned.token,
        completion,
        st.ttl,
    );
    match within(&st.meters, Op::Complete, st.store_timeout, stored).await {
        Ok(true) => owned.renewals.stop(),
        Ok(false) => lost_completion(owned),
        Err(_) => {
            st.outage.failed();
            return Err(());
        }
    }
    Ok(())
}

/// After a first attempt that failed, retries until stored, lost, or the TTL passes.
pub(super) async fn settle<St: Store>(
    owned: &Owned<St>,
    completion: &Arc<Completion>,
    first: Result<(), ()>,
) {
    if first.is_ok() {
        return;
    }
    let st = &*owned.settings;
    let give_up = later(owned.claimed_at, st.ttl);
    let cap = st.lease / 3;
    let mut delay = Duration::from_millis(50);
    loop {
        tokio::time::sleep(st.outage.pause(delay, cap)).await;
        let stored = st.store.complete_shared(
            &owned.key,
            &owned.fingerprint,
            owned.token,
            completion,
            st.ttl,
        );
        match within(&st.meters, Op::Complete, st.store_timeout, stored).await {
            Ok(true) => {
                owned.renewals.stop();
                return st.outage.answered();
            }
            Ok(false) => {
                st.outage.answered();
                return lost_completion(owned);
            }
            Err(_) if Instant::now() >= give_up => {
                st.outage.failed();
                outcome(st, Some(&owned.key), EventKind::CompleteAbandoned);
                #[cfg(feature = "tracing")]
                tracing::error!(
                    key = %super::redact::ShownKey::new(&owned.settings, &owned.key),
                    "idempotency store never took the completion: the key may run again"
                );
                return;
            }
            Err(_) => {
                st.outage.failed();
                delay = delay.saturating_mul(2).min(cap);
            }
        }
    }
}

fn lost_completion<St>(owned: &Owned<St>) {
    // Another owner claimed the key after this lease was lost: its execution stands.
    outcome(&owned.settings, Some(&owned.key), EventKind::CompleteLost);
    owned.lease.lose();
    #[cfg(feature = "tracing")]
    tracing::warn!(key = %super::redact::ShownKey::new(&owned.settings, &owned.key), "idempotency lease lost before the response was stored");
}
