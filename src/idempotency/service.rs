//! The Idempotency-Key service: claim, then replay, refuse, or run the handler detached.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tower_service::Service;

use super::{
    Claim, Completion, Fingerprint, IdempotencyKey, OwnerToken, Store, StoredResponse,
    layer::{OnStoreError, Settings},
    problem::{problem, problem_types as kind},
};
use crate::{BoxError, retry::Buffered, retry::IDEMPOTENCY_KEY};

/// The service of [`IdempotencyLayer`](super::IdempotencyLayer).
pub struct Idempotency<S, St> {
    pub(crate) inner: S,
    pub(crate) settings: Arc<Settings<St>>,
}

impl<S: Clone, St> Clone for Idempotency<S, St> {
    fn clone(&self) -> Self {
        Idempotency {
            inner: self.inner.clone(),
            settings: self.settings.clone(),
        }
    }
}

impl<S: std::fmt::Debug, St> std::fmt::Debug for Idempotency<S, St> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idempotency")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// In the request's extensions while the handler runs: the scoped key and the owner token, so
/// the handler can fence its own writes with them.
#[derive(Debug, Clone)]
pub struct IdempotencyContext {
    /// The key as stored (scope, then the client's key).
    pub key: Arc<str>,
    /// This execution's owner token.
    pub token: OwnerToken,
}

/// Put in a response's extensions by a handler: do not keep this response (the key is released
/// and a retry runs again).
#[derive(Debug, Clone, Copy, Default)]
pub struct DoNotStore;

/// The header that marks a replayed response.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, St, B, ResB> Service<Request<B>> for Idempotency<S, St>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    St: Store,
    B: Body<Data = Bytes> + From<Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    ResB: Body<Data = Bytes> + Unpin + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<Buffered<ResB>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The ready service goes with this request; a clone stays for the next.
        let clone = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, clone);
        Box::pin(handle(self.settings.clone(), service, req))
    }
}

fn outcome(label: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!("rampart_idempotency_requests_total", "outcome" => label).increment(1);
    #[cfg(feature = "tracing")]
    tracing::debug!(outcome = label, "idempotency");
    let _ = label;
}

async fn pass<S, B, ResB>(
    mut service: S,
    req: Request<B>,
) -> Result<Response<Buffered<ResB>>, S::Error>
where
    S: Service<Request<B>, Response = Response<ResB>>,
{
    Ok(service
        .call(req)
        .await?
        .map(|b| Buffered::streaming(None, b)))
}

/// One store call, bounded by the store timeout, its latency recorded.
async fn within<T>(
    op: &'static str,
    limit: Duration,
    f: impl Future<Output = Result<T, super::StoreError>>,
) -> Result<T, BoxError> {
    #[cfg(feature = "metrics")]
    let start = tokio::time::Instant::now();
    let out = tokio::time::timeout(limit, f).await;
    #[cfg(feature = "metrics")]
    metrics::histogram!("rampart_idempotency_store_seconds", "op" => op)
        .record(start.elapsed().as_secs_f64());
    let _ = op;
    match out {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err("the idempotency store did not answer in time".into()),
    }
}

async fn handle<S, St, B, ResB>(
    settings: Arc<Settings<St>>,
    service: S,
    req: Request<B>,
) -> Result<Response<Buffered<ResB>>, S::Error>
where
    S: Service<Request<B>, Response = Response<ResB>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    St: Store,
    B: Body<Data = Bytes> + From<Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    ResB: Body<Data = Bytes> + Unpin + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    if !settings.methods.contains(req.method()) {
        return pass(service, req).await;
    }
    let key = match req.headers().get(IDEMPOTENCY_KEY) {
        None if settings.required => {
            outcome("missing_key");
            let msg = "this request needs an Idempotency-Key header";
            return Ok(problem(
                StatusCode::BAD_REQUEST,
                kind::MISSING_KEY,
                msg,
                None,
            ));
        }
        None => return pass(service, req).await,
        Some(v) => match IdempotencyKey::parse(v) {
            Ok(k) => k,
            Err(e) => {
                outcome("invalid_key");
                let msg = e.to_string();
                return Ok(problem(
                    StatusCode::BAD_REQUEST,
                    kind::INVALID_KEY,
                    &msg,
                    None,
                ));
            }
        },
    };

    let (mut parts, body) = req.into_parts();
    let max = settings.max_request_body;
    let too_large = || {
        outcome("too_large");
        let msg = format!("the request body is larger than {max} bytes");
        problem(StatusCode::PAYLOAD_TOO_LARGE, kind::TOO_LARGE, &msg, None)
    };
    if body.size_hint().lower() > max as u64 {
        return Ok(too_large());
    }
    let bytes = match Limited::new(body, max).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return Ok(too_large()),
        Err(e) => {
            outcome("unreadable_body");
            let msg = format!("the request body could not be read: {e}");
            return Ok(problem(
                StatusCode::BAD_REQUEST,
                kind::UNREADABLE_BODY,
                &msg,
                None,
            ));
        }
    };

    let fingerprint = Fingerprint::of(
        &parts.method,
        &parts.uri,
        &parts.headers,
        &settings.fingerprint_headers,
        &bytes,
    );
    // The scope is length-prefixed so that no scope and key pair can imitate another.
    let scope = settings
        .scope
        .as_ref()
        .and_then(|f| f(&parts))
        .unwrap_or_default();
    let scoped: Arc<str> = Arc::from(format!("{}:{scope}:{key}", scope.len()));

    let claim = within(
        "claim",
        settings.store_timeout,
        settings.store.claim(&scoped, &fingerprint, settings.lease),
    )
    .await;
    let claim = match claim {
        Ok(c) => c,
        Err(e) => {
            return match settings.on_store_error {
                OnStoreError::FailClosed => {
                    outcome("store_error");
                    let msg = format!("the request was not run: {e}");
                    Ok(problem(
                        StatusCode::SERVICE_UNAVAILABLE,
                        kind::STORE_UNAVAILABLE,
                        &msg,
                        Some(Duration::from_secs(1)),
                    ))
                }
                OnStoreError::FailOpen => {
                    outcome("fail_open");
                    #[cfg(feature = "tracing")]
                    tracing::warn!(error = %e, "idempotency store down: running the handler unprotected");
                    pass(service, Request::from_parts(parts, B::from(bytes))).await
                }
            };
        }
    };

    let mut claim = claim;
    // With a bounded wait configured, a duplicate polls until the first request completes.
    if let (Claim::InFlight { .. }, Some(wait)) = (&claim, settings.wait_for_in_flight) {
        let deadline = tokio::time::Instant::now() + wait;
        while let Claim::InFlight { .. } = claim {
            let now = tokio::time::Instant::now();
            if now >= deadline {
                break;
            }
            tokio::time::sleep((deadline - now).min(Duration::from_millis(25))).await;
            let again = settings.store.claim(&scoped, &fingerprint, settings.lease);
            match within("claim", settings.store_timeout, again).await {
                Ok(next) => claim = next,
                Err(_) => break,
            }
        }
    }

    match claim {
        Claim::Completed(Completion::Response(stored)) => {
            outcome("replayed");
            Ok(replay(stored))
        }
        Claim::Completed(Completion::NotReplayable { status }) => {
            outcome("not_replayable");
            let msg = format!(
                "a request with this key already completed with status {}, but its response was too large to keep; it was not run again",
                status.as_u16()
            );
            Ok(problem(
                StatusCode::CONFLICT,
                kind::NOT_REPLAYABLE,
                &msg,
                None,
            ))
        }
        Claim::InFlight { retry_after } => {
            outcome("conflict");
            let msg = "a request with this key is still being processed";
            Ok(problem(
                StatusCode::CONFLICT,
                kind::IN_FLIGHT,
                msg,
                Some(retry_after),
            ))
        }
        Claim::Mismatch => {
            outcome("mismatch");
            let msg = "this key was used for a different request";
            Ok(problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                kind::MISMATCH,
                msg,
                None,
            ))
        }
        Claim::New(token) => {
            outcome("new");
            parts.extensions.insert(IdempotencyContext {
                key: scoped.clone(),
                token,
            });
            let req = Request::from_parts(parts, B::from(bytes));
            // Detached: a client that disconnects does not cancel the handler half-way.
            let task = tokio::spawn(run_owned(
                settings.clone(),
                service,
                req,
                scoped.clone(),
                token,
            ));
            match task.await {
                Ok(result) => result,
                Err(_) => {
                    let _ = within(
                        "release",
                        settings.store_timeout,
                        settings.store.release(&scoped, token),
                    )
                    .await;
                    let msg =
                        "the handler failed; the key was released, so the request may be retried";
                    Ok(problem(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        kind::HANDLER_FAILED,
                        msg,
                        None,
                    ))
                }
            }
        }
    }
}

/// Runs the handler as the key's owner: renews the lease every third of it, then keeps the
/// response (or releases the key).
async fn run_owned<S, St, B, ResB>(
    settings: Arc<Settings<St>>,
    mut service: S,
    req: Request<B>,
    key: Arc<str>,
    token: OwnerToken,
) -> Result<Response<Buffered<ResB>>, S::Error>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    St: Store,
    ResB: Body<Data = Bytes> + Unpin,
    ResB::Error: Into<BoxError>,
{
    let st = &settings;
    let release = || within("release", st.store_timeout, st.store.release(&key, token));
    let call = service.call(req);
    tokio::pin!(call);
    let every = st.lease / 3;
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let result = loop {
        tokio::select! {
            r = &mut call => break r,
            _ = beat.tick() => {
                let _ = within("renew", st.store_timeout, st.store.renew(&key, token, st.lease)).await;
            }
        }
    };
    let res = match result {
        Ok(res) => res,
        Err(e) => {
            let _ = release().await;
            return Err(e);
        }
    };
    let (parts, body) = res.into_parts();
    let keep = parts.extensions.get::<DoNotStore>().is_none()
        && st.keep.as_ref().is_none_or(|k| k(&parts));
    if !keep {
        let _ = release().await;
        return Ok(Response::from_parts(parts, Buffered::streaming(None, body)));
    }
    let (delivered, kept) = match read_up_to(body, st.max_response_body).await {
        Ok(read) => read,
        Err(_) => {
            let _ = release().await;
            let msg = "the handler's response body failed; the key was released";
            return Ok(problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                kind::HANDLER_FAILED,
                msg,
                None,
            ));
        }
    };
    let completion = match kept {
        Some(body) => Completion::Response(StoredResponse {
            status: parts.status,
            headers: replayable_headers(&parts.headers),
            body,
        }),
        None => Completion::NotReplayable {
            status: parts.status,
        },
    };
    let _ = within(
        "complete",
        st.store_timeout,
        st.store.complete(&key, token, &completion, st.ttl),
    )
    .await;
    Ok(Response::from_parts(parts, delivered))
}

/// Reads up to `limit` bytes: the whole body (`Some` bytes to keep) or, past the limit, what was
/// read followed by the rest, streaming (`None`: not kept).
async fn read_up_to<B>(mut body: B, limit: usize) -> Result<(Buffered<B>, Option<Bytes>), BoxError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    if body.size_hint().lower() > limit as u64 {
        return Ok((Buffered::streaming(None, body), None));
    }
    let mut read = BytesMut::new();
    while let Some(frame) = body.frame().await {
        match frame.map_err(Into::into)?.into_data() {
            Ok(data) => {
                read.extend_from_slice(&data);
                if read.len() > limit {
                    return Ok((Buffered::streaming(Some(read.freeze()), body), None));
                }
            }
            // Trailers end a body; they are not kept.
            Err(_) => break,
        }
    }
    let bytes = read.freeze();
    Ok((Buffered::full(bytes.clone()), Some(bytes)))
}

/// Headers worth replaying: never per-caller ones (cookies, auth challenges) nor hop-by-hop.
fn replayable_headers(headers: &HeaderMap) -> HeaderMap {
    const NEVER: [header::HeaderName; 9] = [
        header::SET_COOKIE,
        header::WWW_AUTHENTICATE,
        header::PROXY_AUTHENTICATE,
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::CONTENT_LENGTH,
    ];
    let mut kept = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if !NEVER.contains(name) && name != "keep-alive" && name != "proxy-connection" {
            kept.append(name.clone(), value.clone());
        }
    }
    kept
}

fn replay<ResB>(stored: StoredResponse) -> Response<Buffered<ResB>> {
    let mut res = Response::new(Buffered::full(stored.body));
    *res.status_mut() = stored.status;
    *res.headers_mut() = stored.headers;
    res.headers_mut()
        .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    res
}
