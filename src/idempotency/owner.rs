//! The owner of a claimed key: runs the handler detached from the client, holds the lease from
//! the claim until the completion is stored, and stores it (retrying while the lease holds).

use std::{
    any::Any,
    future::Future,
    panic::{AssertUnwindSafe, catch_unwind},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use pin_project_lite::pin_project;
use tokio::{sync::oneshot, time::Instant};
use tower_service::Service;

use super::{
    Completion, DoNotStore, EventKind, Fingerprint, IdempotencyContext, OwnerToken, Store,
    StoredResponse,
    claim::Handoff,
    instrument::{outcome, within},
    layer::Settings,
    lease::{LeaseSender, lease},
    outage::later,
    problem::{problem, problem_types as kind},
    renew::{Renewals, renew},
    replayed::replayable,
    request::Keyed,
};
use crate::{BoxError, replay::Buffered};

pub(crate) type Answer<ResB, E> = Result<Response<Buffered<ResB>>, E>;

/// One claimed key and what its owner needs.
struct Owned<St> {
    settings: Arc<Settings<St>>,
    key: Arc<str>,
    fingerprint: Fingerprint,
    token: OwnerToken,
    lease: LeaseSender,
    /// When the claim was sent: the lease runs from there.
    claimed_at: Instant,
}

/// What the handler's run leaves to do with the key.
#[allow(clippy::large_enum_variant)] // one per owned request, moved once
enum Done<ResB> {
    /// Keep this completion; answer the first caller with the response.
    Keep(Response<Buffered<ResB>>, Completion),
    /// The response is not to be kept: free the key.
    Release(Response<Buffered<ResB>>),
}

type Reply<ResB, E> = oneshot::Sender<Answer<ResB, E>>;

/// Runs the handler for a key just claimed with `token`, detached: a client that disconnects
/// does not cancel it half-way. Answers with the handler's response.
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
    ResB::Error: Into<BoxError>,
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
    // Renewals before the owner task: see `renew`.
    let renewals = renew(
        settings.clone(),
        key.clone(),
        token,
        lease_tx.clone(),
        claimed_at,
    );
    let owned = Owned {
        settings,
        key,
        fingerprint,
        token,
        lease: lease_tx,
        claimed_at,
    };
    let (tx, rx) = oneshot::channel();
    tokio::spawn(run(owned, renewals, service, req, tx));
    handoff.taken();
    match rx.await {
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
    renewals: Renewals,
    mut service: S,
    req: Request<B>,
    answer: Reply<ResB, S::Error>,
) where
    S: Service<Request<B>, Response = Response<ResB>>,
    St: Store,
    ResB: Body<Data = Bytes> + Unpin,
    ResB::Error: Into<BoxError>,
{
    let _renewals = renewals;
    let mut answer = Some(answer);
    // The handler's status once it returned: from then on the key is never freed.
    let mut ran = None;
    let owning = CatchUnwind {
        inner: own(&owned, &mut service, req, &mut answer, &mut ran),
    };
    let owned_ok = owning.await.is_ok();
    if owned_ok {
        return;
    }
    let after = CatchUnwind {
        inner: panicked(&owned, ran, answer.take()),
    };
    if after.await.is_err() {
        #[cfg(feature = "tracing")]
        tracing::error!(
            key = %owned.key,
            "idempotency owner panicked twice: the key is freed when its lease ends"
        );
    }
}

/// The owner's work: run the handler, then keep or free the key.
async fn own<S, St, B, ResB>(
    owned: &Owned<St>,
    service: &mut S,
    req: Request<B>,
    answer: &mut Option<Reply<ResB, S::Error>>,
    ran: &mut Option<StatusCode>,
) where
    S: Service<Request<B>, Response = Response<ResB>>,
    St: Store,
    ResB: Body<Data = Bytes> + Unpin,
    ResB::Error: Into<BoxError>,
{
    let st = &*owned.settings;
    let release = || {
        within(
            "release",
            st.store_timeout,
            st.store.release(&owned.key, owned.token),
        )
    };
    match serve(st, service, req, ran).await {
        Ok(Done::Keep(res, completion)) => {
            keep(owned, &completion, || reply(answer, Ok(res))).await;
        }
        Ok(Done::Release(res)) => {
            // The handler asked for its key to be freed: a panic from here on frees it too.
            *ran = None;
            let _ = release().await;
            reply(answer, Ok(res));
        }
        Err(e) => {
            let _ = release().await;
            reply(answer, Err(e));
        }
    }
}

fn reply<T>(answer: &mut Option<oneshot::Sender<T>>, value: T) {
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
        let _ = within("release", st.store_timeout, release).await;
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
    keep(owned, &completion, || reply(&mut answer, Ok(failed(msg)))).await;
    outcome(st, Some(&owned.key), EventKind::OwnerPanicked);
    #[cfg(feature = "tracing")]
    tracing::error!(key = %owned.key, "idempotency owner panicked after the handler ran: kept as not replayable");
}

/// Stores `completion`, retrying (with backoff, the lease still renewed) until it is stored,
/// another owner is found, or the TTL passes. The first caller is answered after the first
/// attempt, so that its own quick retry is replayed.
async fn keep<St: Store>(owned: &Owned<St>, completion: &Completion, answer: impl FnOnce()) {
    let st = &*owned.settings;
    let store = || {
        within(
            "complete",
            st.store_timeout,
            st.store.complete(
                &owned.key,
                &owned.fingerprint,
                owned.token,
                completion,
                st.ttl,
            ),
        )
    };
    let first = store().await;
    answer();
    match first {
        Ok(true) => return,
        Ok(false) => return lost_completion(owned),
        Err(_) => st.outage.failed(),
    }
    let give_up = later(owned.claimed_at, st.ttl);
    let cap = st.lease / 3;
    let mut delay = Duration::from_millis(50);
    loop {
        tokio::time::sleep(st.outage.pause(delay, cap)).await;
        match store().await {
            Ok(true) => return st.outage.answered(),
            Ok(false) => {
                st.outage.answered();
                return lost_completion(owned);
            }
            Err(_) if Instant::now() >= give_up => {
                st.outage.failed();
                outcome(st, Some(&owned.key), EventKind::CompleteAbandoned);
                #[cfg(feature = "tracing")]
                tracing::error!(
                    key = %owned.key,
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
    tracing::warn!(key = %owned.key, "idempotency lease lost before the response was stored");
}

/// The handler's run: its response, and what to keep of it.
async fn serve<St, S, B, ResB>(
    st: &Settings<St>,
    service: &mut S,
    req: Request<B>,
    ran: &mut Option<StatusCode>,
) -> Result<Done<ResB>, S::Error>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    ResB: Body<Data = Bytes> + Unpin,
    ResB::Error: Into<BoxError>,
{
    let (parts, body) = service.call(req).await?.into_parts();
    *ran = Some(parts.status);
    let keep = parts.extensions.get::<DoNotStore>().is_none()
        && st.keep.as_ref().is_none_or(|k| k(&parts));
    if !keep {
        return Ok(Done::Release(Response::from_parts(
            parts,
            Buffered::streaming(None, body),
        )));
    }
    let deadline = later(Instant::now(), st.response_body_timeout);
    Ok(match read_up_to(st, body, deadline).await {
        Read::Whole(data, trailers) => {
            let completion = Completion::Response(StoredResponse {
                status: parts.status,
                headers: replayable(&parts.headers),
                body: data.clone(),
                trailers: trailers.as_ref().map(replayable),
            });
            let body = Buffered::full_with_trailers(data, trailers);
            Done::Keep(Response::from_parts(parts, body), completion)
        }
        Read::Partial(body) => {
            // Too large or too slow to keep: the first caller gets it all, later ones learn
            // that it ran. The key is never released once the handler has answered.
            let completion = Completion::NotReplayable {
                status: parts.status,
            };
            Done::Keep(Response::from_parts(parts, body), completion)
        }
        Read::Failed(status) => {
            let completion = Completion::NotReplayable { status };
            let msg = "the handler's response body failed after the handler ran; the request will not run again";
            Done::Keep(
                problem(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    kind::HANDLER_FAILED,
                    msg,
                    None,
                ),
                completion,
            )
        }
    })
}

enum Read<B> {
    Whole(Bytes, Option<HeaderMap>),
    /// What was read, then the rest, streaming.
    Partial(Buffered<B>),
    Failed(StatusCode),
}

/// Reads the whole body if it fits the response limit and ends before `deadline`.
async fn read_up_to<St, B>(st: &Settings<St>, mut body: B, deadline: Instant) -> Read<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let limit = st.max_response_body;
    if body.size_hint().lower() > limit as u64 {
        return Read::Partial(Buffered::streaming(None, body));
    }
    let mut read = BytesMut::new();
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(frame) => frame,
            Err(_) => {
                outcome(st, None, EventKind::ResponseBodyTimeout);
                let prefix = (!read.is_empty()).then(|| read.freeze());
                return Read::Partial(Buffered::streaming(prefix, body));
            }
        };
        let frame = match frame {
            None => return Read::Whole(read.freeze(), None),
            Some(Ok(frame)) => frame,
            Some(Err(_)) => return Read::Failed(StatusCode::INTERNAL_SERVER_ERROR),
        };
        match frame.into_data() {
            Ok(data) => {
                read.extend_from_slice(&data);
                if read.len() > limit {
                    return Read::Partial(Buffered::streaming(Some(read.freeze()), body));
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    return Read::Whole(read.freeze(), Some(trailers));
                }
            }
        }
    }
}

pin_project! {
    /// A future whose panic becomes an `Err`, so that the owner settles its key (frees it, or
    /// keeps it as not replayable) whatever panics, even if the client is gone.
    struct CatchUnwind<F> {
        #[pin]
        inner: F,
    }
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.project().inner;
        match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}
