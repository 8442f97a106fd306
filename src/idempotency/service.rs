//! The Idempotency-Key service: claim, then replay, refuse, or run the handler detached.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tokio::{sync::oneshot, time::Instant};
use tower_service::Service;

use super::{
    Claim, Completion, Fingerprint, IdempotencyKey, OwnerToken, Store, StoreError, StoreErrorKind,
    layer::{OnStoreError, Scope, Settings},
    lease::{Lease, lease},
    owner::{self, Owned, replay},
    problem::{problem, problem_types as kind},
};
use crate::{BoxError, retry::Buffered};

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

/// In the request's extensions while the handler runs: the scoped key, the owner token, and
/// the lease, so the handler can fence its own writes and learn if it lost the key.
///
/// With axum, take it as an extractor argument: `Extension(ctx): Extension<IdempotencyContext>`.
#[derive(Debug, Clone)]
pub struct IdempotencyContext {
    /// The key as stored (scope, then the client's key).
    pub key: Arc<str>,
    /// This execution's owner token: a fencing token for the handler's own writes (store it
    /// with the side effect under a unique constraint on the key, or make writes conditional
    /// on it), so that a stale owner's write is refused.
    pub token: OwnerToken,
    lease: Lease,
}

impl IdempotencyContext {
    /// Whether this execution still owns the key.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }
}

/// Put in a response's extensions by a handler: do not keep this response (the key is released
/// and a retry runs again).
#[derive(Debug, Clone, Copy, Default)]
pub struct DoNotStore;

/// The header that marks a replayed response.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The inner service gets the request's body as a [`Buffered`]: in memory when the layer read it
/// (to fingerprint it), streaming otherwise. axum's `Router` and `Route` and tonic's `Routes`
/// accept any body, so the layer fits them whatever body type the server hands it.
impl<S, St, B, ResB> Service<Request<B>> for Idempotency<S, St>
where
    S: Service<Request<Buffered<B>>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    St: Store,
    B: Body<Data = Bytes> + Unpin + Send + 'static,
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

pub(crate) fn outcome(label: &'static str) {
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
    S: Service<Request<Buffered<B>>, Response = Response<ResB>>,
{
    Ok(service
        .call(req.map(|b| Buffered::streaming(None, b)))
        .await?
        .map(|b| Buffered::streaming(None, b)))
}

/// One store call, bounded by the store timeout, its latency recorded.
pub(crate) async fn within<T>(
    op: &'static str,
    limit: Duration,
    f: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    #[cfg(feature = "metrics")]
    let start = tokio::time::Instant::now();
    let out = tokio::time::timeout(limit, f).await;
    #[cfg(feature = "metrics")]
    metrics::histogram!("rampart_idempotency_store_seconds", "op" => op)
        .record(start.elapsed().as_secs_f64());
    let _ = op;
    match out {
        Ok(r) => r,
        Err(_) => Err(StoreError::new(
            "the idempotency store did not answer in time",
        )),
    }
}

/// A claim whose answer was lost may still have landed, or land later (a slow store): free it
/// with its token, in the background, until a release takes or the lease would have ended, so
/// the key is not answered 409 for a whole lease while nothing runs. Releasing with this
/// token can only free this claim, so a late release is always safe.
fn forget_claim<St: Store>(settings: &Arc<Settings<St>>, key: &Arc<str>, token: OwnerToken) {
    let (settings, key) = (settings.clone(), key.clone());
    tokio::spawn(async move {
        let end = Instant::now() + settings.lease;
        let mut wait = settings.store_timeout / 4;
        while Instant::now() < end {
            let release = settings.store.release(&key, token);
            if let Ok(true) = within("release", settings.store_timeout, release).await {
                return;
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(settings.lease / 4);
        }
    });
}

/// Claims the key; on a lost answer, frees the claim it may have made.
async fn claim<St: Store>(
    settings: &Arc<Settings<St>>,
    key: &Arc<str>,
    fingerprint: &Fingerprint,
    token: OwnerToken,
) -> Result<Claim, StoreError> {
    let claim = settings
        .store
        .claim(key, fingerprint, token, settings.lease);
    let answer = within("claim", settings.store_timeout, claim).await;
    if let Err(e) = &answer
        && e.kind() == StoreErrorKind::Unavailable
    {
        forget_claim(settings, key, token);
    }
    answer
}

async fn handle<S, St, B, ResB>(
    settings: Arc<Settings<St>>,
    service: S,
    req: Request<B>,
) -> Result<Response<Buffered<ResB>>, S::Error>
where
    S: Service<Request<Buffered<B>>, Response = Response<ResB>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    St: Store,
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
    ResB: Body<Data = Bytes> + Unpin + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    if !settings.methods.contains(req.method()) {
        return pass(service, req).await;
    }
    let key = match IdempotencyKey::from_headers(req.headers()) {
        Ok(Some(k)) => k,
        Ok(None) if settings.required => {
            outcome("missing_key");
            let msg = "this request needs an Idempotency-Key header";
            return Ok(problem(
                StatusCode::BAD_REQUEST,
                kind::MISSING_KEY,
                msg,
                None,
            ));
        }
        Ok(None) => return pass(service, req).await,
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
    };

    let (mut parts, body) = req.into_parts();
    // The scope is length-prefixed so that no scope and key pair can imitate another.
    let scope = match &settings.scope {
        Scope::Global | Scope::Unset => String::new(),
        Scope::By(f) => match f(&parts) {
            Some(scope) => scope,
            None => {
                outcome("no_principal");
                let msg = "this request has no principal to scope its Idempotency-Key to";
                return Ok(problem(
                    StatusCode::BAD_REQUEST,
                    kind::NO_PRINCIPAL,
                    msg,
                    None,
                ));
            }
        },
    };
    let scoped: Arc<str> = Arc::from(format!("{}:{scope}:{key}", scope.len()));

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

    let mut token = OwnerToken::new();
    let mut claimed_at = Instant::now();
    let mut answer = claim(&settings, &scoped, &fingerprint, token).await;
    // With a bounded wait configured, a duplicate polls until the first request completes.
    if let (Ok(Claim::InFlight { .. }), Some(wait)) = (&answer, settings.wait_for_in_flight) {
        let deadline = Instant::now() + wait;
        while let Ok(Claim::InFlight { .. }) = answer {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            tokio::time::sleep((deadline - now).min(Duration::from_millis(25))).await;
            (token, claimed_at) = (OwnerToken::new(), Instant::now());
            answer = claim(&settings, &scoped, &fingerprint, token).await;
        }
    }

    let claim = match answer {
        Ok(c) => c,
        Err(e) => return store_failed(e, &settings, service, parts, bytes).await,
    };
    match claim {
        Claim::Completed(Completion::Response(stored)) => {
            outcome("replayed");
            Ok(replay(stored))
        }
        Claim::Completed(Completion::NotReplayable { status }) => {
            outcome("not_replayable");
            let msg = format!(
                "a request with this key already completed with status {}, but its response could not be kept; it was not run again",
                status.as_u16()
            );
            Ok(problem(
                StatusCode::CONFLICT,
                kind::NOT_REPLAYABLE,
                &msg,
                None,
            ))
        }
        Claim::InFlight { lease_left } => {
            outcome("conflict");
            let msg = "a request with this key is still being processed";
            Ok(problem(
                StatusCode::CONFLICT,
                kind::IN_FLIGHT,
                msg,
                Some(lease_left),
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
        Claim::New => {
            outcome("new");
            let (lease_tx, lease_rx) = lease();
            parts.extensions.insert(IdempotencyContext {
                key: scoped.clone(),
                token,
                lease: lease_rx,
            });
            let req = Request::from_parts(parts, Buffered::<B>::full(bytes));
            let owned = Owned {
                settings: settings.clone(),
                key: scoped,
                fingerprint,
                token,
                lease: lease_tx,
                claimed_at,
            };
            // Detached: a client that disconnects does not cancel the handler half-way.
            let (tx, rx) = oneshot::channel();
            tokio::spawn(owner::run(owned, service, req, tx));
            match rx.await {
                Ok(answer) => answer,
                // The owner task itself was cancelled (runtime shutdown): nothing to replay.
                Err(_) => Ok(problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    kind::HANDLER_FAILED,
                    "the server is shutting down; the request may not have completed",
                    Some(settings.lease),
                )),
            }
        }
    }
}

/// The store failed: each kind of failure has its own answer; only an unavailable store may
/// fail open.
async fn store_failed<S, St, B, ResB>(
    e: StoreError,
    settings: &Settings<St>,
    mut service: S,
    parts: http::request::Parts,
    bytes: Bytes,
) -> Result<Response<Buffered<ResB>>, S::Error>
where
    S: Service<Request<Buffered<B>>, Response = Response<ResB>>,
{
    let msg = format!("the request was not run: {e}");
    match (e.kind(), settings.on_store_error) {
        (StoreErrorKind::Full, _) => {
            outcome("store_full");
            Ok(problem(
                StatusCode::SERVICE_UNAVAILABLE,
                kind::STORE_FULL,
                &msg,
                Some(Duration::from_secs(1)),
            ))
        }
        (StoreErrorKind::Unreadable, _) => {
            outcome("unreadable_record");
            #[cfg(feature = "tracing")]
            tracing::error!(error = %e, "idempotency record unreadable: the request was not run");
            Ok(problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                kind::UNREADABLE_RECORD,
                &msg,
                None,
            ))
        }
        (_, OnStoreError::FailOpen) => {
            outcome("fail_open");
            #[cfg(feature = "tracing")]
            tracing::warn!(error = %e, "idempotency store down: running the handler unprotected");
            let req = Request::from_parts(parts, Buffered::<B>::full(bytes));
            Ok(service
                .call(req)
                .await?
                .map(|b| Buffered::streaming(None, b)))
        }
        (_, OnStoreError::FailClosed) => {
            outcome("store_error");
            Ok(problem(
                StatusCode::SERVICE_UNAVAILABLE,
                kind::STORE_UNAVAILABLE,
                &msg,
                Some(Duration::from_secs(1)),
            ))
        }
    }
}
