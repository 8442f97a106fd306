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
use http::{HeaderMap, Request, Response, StatusCode, header};
use http_body::Body;
use http_body_util::BodyExt;
use pin_project_lite::pin_project;
use tokio::{sync::oneshot, time::Instant};
use tower_service::Service;

use super::{
    Completion, DoNotStore, EventKind, Fingerprint, IdempotencyContext, OwnerToken, Store,
    StoredResponse,
    instrument::{outcome, within},
    layer::Settings,
    lease::{LeaseSender, lease},
    problem::{problem, problem_types as kind},
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

/// Runs the handler for a key just claimed with `token`, detached: a client that disconnects
/// does not cancel it half-way. Answers with the handler's response.
pub(crate) async fn start<S, St, B, ResB>(
    settings: Arc<Settings<St>>,
    service: S,
    keyed: Keyed,
    token: OwnerToken,
    claimed_at: Instant,
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
    let owned = Owned {
        settings,
        key,
        fingerprint,
        token,
        lease: lease_tx,
        claimed_at,
    };
    let (tx, rx) = oneshot::channel();
    tokio::spawn(run(owned, service, req, tx));
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
/// may be gone: the client disconnected, the run goes on).
async fn run<S, St, B, ResB>(
    owned: Owned<St>,
    mut service: S,
    req: Request<B>,
    answer: oneshot::Sender<Answer<ResB, S::Error>>,
) where
    S: Service<Request<B>, Response = Response<ResB>>,
    St: Store,
    ResB: Body<Data = Bytes> + Unpin,
    ResB::Error: Into<BoxError>,
{
    let st = &*owned.settings;
    let heartbeat = heartbeat(&owned);
    tokio::pin!(heartbeat);
    // The call itself runs inside the catch too: a `call()` that panics frees the key.
    let work = CatchUnwind {
        inner: serve(st, &mut service, req),
    };
    let done = tokio::select! {
        done = work => done,
        never = &mut heartbeat => match never {},
    };
    let release = || {
        within(
            "release",
            st.store_timeout,
            st.store.release(&owned.key, owned.token),
        )
    };
    let (res, completion) = match done {
        Ok(Ok(Done::Keep(res, completion))) => (res, completion),
        Ok(Ok(Done::Release(res))) => {
            let _ = release().await;
            let _ = answer.send(Ok(res));
            return;
        }
        Ok(Err(e)) => {
            let _ = release().await;
            let _ = answer.send(Err(e));
            return;
        }
        Err(_panic) => {
            outcome(st, Some(&owned.key), EventKind::HandlerPanicked);
            let _ = release().await;
            let msg = "the handler failed; the key was released, so the request may be retried";
            let res = problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                kind::HANDLER_FAILED,
                msg,
                None,
            );
            let _ = answer.send(Ok(res));
            return;
        }
    };

    // The first caller waits for one attempt to store the completion (so that its own quick
    // retry is replayed); later attempts run after it has its answer, the lease still renewed.
    let store = || {
        within(
            "complete",
            st.store_timeout,
            st.store.complete(
                &owned.key,
                &owned.fingerprint,
                owned.token,
                &completion,
                st.ttl,
            ),
        )
    };
    let first = tokio::select! {
        r = store() => r,
        never = &mut heartbeat => match never {},
    };
    let _ = answer.send(Ok(res));
    match first {
        Ok(true) => return,
        Ok(false) => return lost_completion(&owned),
        Err(_) => {}
    }
    let retries = async {
        let give_up = owned.claimed_at + st.ttl;
        let mut delay = Duration::from_millis(50);
        loop {
            tokio::time::sleep(delay).await;
            match store().await {
                Ok(true) => return,
                Ok(false) => return lost_completion(&owned),
                Err(_) if Instant::now() >= give_up => {
                    outcome(st, Some(&owned.key), EventKind::CompleteAbandoned);
                    #[cfg(feature = "tracing")]
                    tracing::error!(
                        key = %owned.key,
                        "idempotency store never took the completion: the key may run again"
                    );
                    return;
                }
                Err(_) => delay = (delay * 2).min(st.lease / 3),
            }
        }
    };
    tokio::select! {
        () = retries => {}
        never = &mut heartbeat => match never {},
    }
}

fn lost_completion<St>(owned: &Owned<St>) {
    // Another owner claimed the key after this lease was lost: its execution stands.
    outcome(&owned.settings, Some(&owned.key), EventKind::CompleteLost);
    owned.lease.lose();
    #[cfg(feature = "tracing")]
    tracing::warn!(key = %owned.key, "idempotency lease lost before the response was stored");
}

/// Renews the lease every third of it, promptly again after a failure, and says when it is
/// lost. Runs until dropped (when the completion is stored or the key released).
async fn heartbeat<St: Store>(owned: &Owned<St>) -> std::convert::Infallible {
    let st = &*owned.settings;
    let every = st.lease / 3;
    let again = (st.lease / 10).min(Duration::from_millis(250));
    let mut held_since = owned.claimed_at;
    let mut next = held_since + every;
    loop {
        tokio::time::sleep_until(next).await;
        let sent = Instant::now();
        let renewed = within(
            "renew",
            st.store_timeout,
            st.store.renew(&owned.key, owned.token, st.lease),
        )
        .await;
        match renewed {
            Ok(true) => {
                held_since = sent;
                next = sent + every;
            }
            Ok(false) => {
                if owned.lease.is_held() {
                    outcome(st, Some(&owned.key), EventKind::LeaseLost);
                    #[cfg(feature = "tracing")]
                    tracing::warn!(key = %owned.key, "idempotency lease lost: another owner may run");
                }
                owned.lease.lose();
                return std::future::pending().await;
            }
            Err(_) => {
                let now = Instant::now();
                if now >= held_since + st.lease && owned.lease.is_held() {
                    // The store may have let the key go: the handler must not count on it.
                    outcome(st, Some(&owned.key), EventKind::LeaseLost);
                    owned.lease.lose();
                }
                next = now + again;
            }
        }
    }
}

/// The handler's run: its response, and what to keep of it.
async fn serve<St, S, B, ResB>(
    st: &Settings<St>,
    service: &mut S,
    req: Request<B>,
) -> Result<Done<ResB>, S::Error>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    ResB: Body<Data = Bytes> + Unpin,
    ResB::Error: Into<BoxError>,
{
    let (parts, body) = service.call(req).await?.into_parts();
    let keep = parts.extensions.get::<DoNotStore>().is_none()
        && st.keep.as_ref().is_none_or(|k| k(&parts));
    if !keep {
        return Ok(Done::Release(Response::from_parts(
            parts,
            Buffered::streaming(None, body),
        )));
    }
    let deadline = Instant::now() + st.response_body_timeout;
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

/// Headers worth replaying: never per-caller ones (cookies, auth challenges and results),
/// hop-by-hop ones (including those the `Connection` header names), nor `Date`, which the
/// server sets afresh.
pub(crate) fn replayable(headers: &HeaderMap) -> HeaderMap {
    const NEVER: [&str; 14] = [
        "set-cookie",
        "www-authenticate",
        "proxy-authenticate",
        "authentication-info",
        "proxy-authentication-info",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "date",
    ];
    let named: Vec<&str> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut kept = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let n = name.as_str();
        if !NEVER.contains(&n) && !named.iter().any(|c| c.eq_ignore_ascii_case(n)) {
            kept.append(name.clone(), value.clone());
        }
    }
    kept
}

/// A replay of a stored response, marked as such.
pub(crate) fn replay<ResB>(stored: StoredResponse) -> Response<Buffered<ResB>> {
    let mut parts = Response::new(()).into_parts().0;
    parts.status = stored.status;
    parts.headers = stored.headers;
    parts.headers.insert(
        super::IDEMPOTENT_REPLAYED,
        http::HeaderValue::from_static("true"),
    );
    Response::from_parts(
        parts,
        Buffered::full_with_trailers(stored.body, stored.trailers),
    )
}

pin_project! {
    /// A future whose panic becomes an `Err`, so that the owner frees its key when the handler
    /// panics, even if the client is gone.
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

#[cfg(test)]
mod tests {
    use http::{HeaderMap, HeaderValue};

    use super::replayable;

    #[test]
    fn replays_no_per_caller_or_hop_by_hop_header() {
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("content-type", "application/json"),
            ("x-request-cost", "3"),
            ("x-hop", "1"),
            ("connection", "keep-alive, X-Hop"),
            ("set-cookie", "s=1"),
            ("authentication-info", "nextnonce=\"x\""),
            ("proxy-authentication-info", "a"),
            ("date", "Wed, 02 Dec 2026 07:00:00 GMT"),
            ("www-authenticate", "Bearer"),
            ("transfer-encoding", "chunked"),
            ("content-length", "12"),
        ] {
            h.append(n, HeaderValue::from_static(v));
        }
        let kept = replayable(&h);
        let names: Vec<_> = kept.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-type", "x-request-cost"]);
    }
}
