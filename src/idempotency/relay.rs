//! The handler's response body, read by the key's owner task: kept whole for the store when it
//! is ready at once (then answered, as before), else streamed to the first caller frame by
//! frame as the handler produces it, while a copy is kept for the store up to the replay limit.
//!
//! - The key completes when the body ends: with the whole response (trailers included), or as
//!   not replayable once the copy passes the limit, the body outlasts the body timeout, or it
//!   fails.
//! - The end of a kept stream (its last data frame, its trailers or its end) is held back until
//!   the first attempt to store the completion returns: a client that read the whole body and
//!   retries at once gets the replay.
//! - A caller that goes away does not stop the owner: until the key is completed it drains the
//!   body (within the body timeout) to keep it; after that it stops reading, as a server stops
//!   a response nobody reads.

use std::{
    fmt,
    future::poll_fn,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Response, StatusCode, response};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tokio::{sync::mpsc, time::Instant};

use super::{
    Completion, EventKind, Store, StoredResponse,
    instrument::outcome,
    outage::later,
    owner::{Owned, Reply, attempt, keep, reply, settle},
    problem::{problem, problem_types as kind},
    replayed::replayable,
};
use crate::{BoxError, replay::Buffered};

/// Frames in flight between the owner and a slow first caller (their bytes count apart from
/// the copy kept for the store, which the replay limit bounds).
const IN_FLIGHT_FRAMES: usize = 16;

type Item<E> = Result<Frame<Bytes>, E>;

/// The first caller's end of a relayed body.
struct Receiver<E>(mpsc::Receiver<Item<E>>);

impl<E> fmt::Debug for Receiver<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Relayed")
    }
}

impl<B> crate::replay::Relay<B> for Receiver<B::Error>
where
    B: Body,
    B::Error: Send,
{
    fn poll_relay(&mut self, cx: &mut Context<'_>) -> Poll<Option<Item<B::Error>>> {
        self.0.poll_recv(cx)
    }
}

/// Answers the first caller with `body` of a response to keep, and completes the key.
pub(super) async fn respond<St, ResB, E>(
    owned: &Owned<St>,
    parts: response::Parts,
    mut body: ResB,
    answer: &mut Option<Reply<ResB, E>>,
) where
    St: Store,
    ResB: Body<Data = Bytes> + Unpin + Send + 'static,
    ResB::Error: Into<BoxError> + Send,
{
    let st = &*owned.settings;
    let limit = st.max_response_body;
    let not_replayable = Completion::NotReplayable {
        status: parts.status,
    };
    if body.size_hint().lower() > limit as u64 {
        let res = Response::from_parts(parts, Buffered::streaming(None, body));
        return keep(owned, not_replayable, || reply(answer, Ok(res))).await;
    }
    // The frames ready at once: a body in memory is kept whole before the caller is answered.
    let mut copy = BytesMut::new();
    loop {
        let frame = poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await;
        let frame = match frame {
            Poll::Pending => break,
            Poll::Ready(None) => return whole(owned, parts, copy.freeze(), None, answer).await,
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(_))) => {
                let msg = "the handler's response body failed after the handler ran; the request will not run again";
                let status = StatusCode::INTERNAL_SERVER_ERROR;
                let res = problem(status, kind::HANDLER_FAILED, msg, None);
                return keep(owned, Completion::NotReplayable { status }, || {
                    reply(answer, Ok(res))
                })
                .await;
            }
        };
        match frame.into_data() {
            Ok(data) => {
                copy.extend_from_slice(&data);
                if copy.len() > limit {
                    // Too large to keep: the first caller gets it all, later ones learn that
                    // it ran. The key is never released once the handler has answered.
                    let body = Buffered::streaming(Some(copy.freeze()), body);
                    let res = Response::from_parts(parts, body);
                    return keep(owned, not_replayable, || reply(answer, Ok(res))).await;
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    return whole(owned, parts, copy.freeze(), Some(trailers), answer).await;
                }
            }
        }
    }
    // The body streams: the headers (and what was read) go now, each frame as it comes.
    let (tx, rx) = mpsc::channel(IN_FLIGHT_FRAMES);
    if !copy.is_empty() {
        let _ = tx.try_send(Ok(Frame::data(Bytes::copy_from_slice(&copy))));
    }
    let (status, headers) = (parts.status, replayable(&parts.headers));
    let relayed = Buffered::relayed(Box::new(Receiver(rx)));
    reply(answer, Ok(Response::from_parts(parts, relayed)));
    let mut relay = Relaying {
        owned,
        status,
        headers,
        tx: Some(tx),
        copy: Some(copy),
        deadline: later(Instant::now(), st.response_body_timeout),
        settled: false,
        pending: None,
    };
    relay.stream(&mut body).await;
    if let Some(completion) = relay.pending.take() {
        settle(owned, &completion, Err(())).await;
    }
}

/// Stores the whole response, then answers the first caller with it (as before streaming).
async fn whole<St: Store, ResB, E>(
    owned: &Owned<St>,
    parts: response::Parts,
    data: Bytes,
    trailers: Option<HeaderMap>,
    answer: &mut Option<Reply<ResB, E>>,
) {
    let completion = Completion::Response(StoredResponse {
        status: parts.status,
        headers: replayable(&parts.headers),
        body: data.clone(),
        trailers: trailers.as_ref().map(replayable),
    });
    let body = Buffered::full_with_trailers(data, trailers);
    let res = Response::from_parts(parts, body);
    keep(owned, completion, || reply(answer, Ok(res))).await;
}

/// A body being streamed to the first caller by the key's owner.
struct Relaying<'a, St, E> {
    owned: &'a Owned<St>,
    status: StatusCode,
    headers: HeaderMap,
    /// `None` once the caller went away.
    tx: Option<mpsc::Sender<Item<E>>>,
    /// What the store will get; `None` once the response is not replayable.
    copy: Option<BytesMut>,
    /// Until the key is settled, reading and relaying end here.
    deadline: Instant,
    /// The key has its completion (or another owner has it): no hurry, no copy.
    settled: bool,
    /// A completion whose first attempt failed: retried once the body is done with.
    pending: Option<std::sync::Arc<Completion>>,
}

impl<St: Store, E> Relaying<'_, St, E> {
    async fn stream<B>(&mut self, body: &mut B)
    where
        B: Body<Data = Bytes, Error = E> + Unpin,
    {
        loop {
            let frame = if self.settled {
                body.frame().await
            } else {
                match tokio::time::timeout_at(self.deadline, body.frame()).await {
                    Ok(frame) => frame,
                    Err(_) => {
                        self.too_slow().await;
                        if self.tx.is_none() {
                            return;
                        }
                        continue;
                    }
                }
            };
            let frame = match frame {
                None => return self.end(None, None).await,
                Some(Err(e)) => {
                    if !self.settled {
                        self.copy = None;
                        self.not_replayable().await;
                    }
                    return self.send(Err(e)).await;
                }
                Some(Ok(frame)) => frame,
            };
            if let Some(data) = frame.data_ref() {
                let limit = self.owned.settings.max_response_body;
                if let Some(copy) = &mut self.copy {
                    copy.extend_from_slice(data);
                    if copy.len() > limit {
                        self.copy = None;
                        self.not_replayable().await;
                    }
                }
                if self.copy.is_some() && body.is_end_stream() {
                    return self.end(Some(frame), None).await;
                }
            } else if frame.is_trailers() && self.copy.is_some() {
                let trailers = frame.trailers_ref().cloned();
                return self.end(Some(frame), trailers).await;
            }
            self.send(Ok(frame)).await;
            if self.tx.is_none() && self.settled {
                // Completed, and nobody listens: stop reading, as for any response.
                return;
            }
        }
    }

    /// Passes `item` to the caller, waiting for room within the deadline while unsettled.
    async fn send(&mut self, item: Item<E>) {
        // A clone (a reference count), so that `self` stays free while waiting for room.
        let Some(tx) = self.tx.clone() else { return };
        let permit = if self.settled {
            tx.reserve().await
        } else {
            match tokio::time::timeout_at(self.deadline, tx.reserve()).await {
                Ok(permit) => permit,
                Err(_) => {
                    // The caller reads too slowly to keep the response in time.
                    self.too_slow().await;
                    tx.reserve().await
                }
            }
        };
        match permit {
            Ok(permit) => permit.send(item),
            Err(_) => self.tx = None,
        }
    }

    /// The body ended (with `last`, its last frame, when given): complete the key with what
    /// was kept, then let the caller see the end.
    async fn end(&mut self, last: Option<Frame<Bytes>>, trailers: Option<HeaderMap>) {
        if let Some(copy) = self.copy.take() {
            let completion = Completion::Response(StoredResponse {
                status: self.status,
                headers: std::mem::take(&mut self.headers),
                body: copy.freeze(),
                trailers: trailers.as_ref().map(replayable),
            });
            self.complete(completion).await;
        }
        if let Some(frame) = last {
            self.send(Ok(frame)).await;
        }
        // Dropping the sender ends the caller's body.
        self.tx = None;
    }

    async fn too_slow(&mut self) {
        outcome(
            &self.owned.settings,
            Some(&self.owned.key),
            EventKind::ResponseBodyTimeout,
        );
        self.copy = None;
        self.not_replayable().await;
    }

    async fn not_replayable(&mut self) {
        let status = self.status;
        self.complete(Completion::NotReplayable { status }).await;
    }

    /// One attempt now; a failed one is retried after the body is done with, so a store
    /// outage does not stall the stream.
    async fn complete(&mut self, completion: Completion) {
        if self.settled {
            return;
        }
        self.settled = true;
        let completion = std::sync::Arc::new(completion);
        if attempt(self.owned, &completion).await.is_err() {
            self.pending = Some(completion);
        }
    }
}
