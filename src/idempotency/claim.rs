//! The claim phase: claim the key (waiting for a running duplicate if asked), free a claim
//! whose answer was lost, and answer every claim that is not ours to run.

use std::{sync::Arc, time::Duration};

use http::{Response, StatusCode};
use tokio::time::Instant;

use super::{
    Claim, Completion, EventKind, Fingerprint, OwnerToken, Store, StoreError, StoreErrorKind,
    instrument::{outcome, within},
    layer::{OnStoreError, Settings},
    owner::replay,
    problem::{problem, problem_types as kind},
};
use crate::replay::Buffered;

/// A claim's answer, with the token it was made with.
pub(crate) struct Claimed {
    pub(crate) answer: Result<Claim, StoreError>,
    pub(crate) token: OwnerToken,
    /// When the claim was sent: a new owner's lease runs from there.
    pub(crate) at: Instant,
}

/// Claims the key; with `wait_for_in_flight`, a duplicate polls until the first completes.
pub(crate) async fn claim_key<St: Store>(
    settings: &Arc<Settings<St>>,
    key: &Arc<str>,
    fingerprint: &Fingerprint,
) -> Claimed {
    let mut claimed = claim_once(settings, key, fingerprint).await;
    let Some(wait) = settings.wait_for_in_flight else {
        return claimed;
    };
    let deadline = Instant::now() + wait;
    while let Ok(Claim::InFlight { .. }) = claimed.answer {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        tokio::time::sleep((deadline - now).min(Duration::from_millis(25))).await;
        claimed = claim_once(settings, key, fingerprint).await;
    }
    claimed
}

/// One claim with a fresh token; on a lost answer, frees the claim it may have made.
async fn claim_once<St: Store>(
    settings: &Arc<Settings<St>>,
    key: &Arc<str>,
    fingerprint: &Fingerprint,
) -> Claimed {
    let (token, at) = (OwnerToken::new(), Instant::now());
    let claim = settings
        .store
        .claim(key, fingerprint, token, settings.lease);
    let answer = within("claim", settings.store_timeout, claim).await;
    if let Err(e) = &answer
        && e.kind() == StoreErrorKind::Unavailable
    {
        forget_claim(settings, key, token);
    }
    Claimed { answer, token, at }
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

/// The answer to a claim that found the key taken: a replay, 409 or 422.
pub(crate) fn taken<St, ResB>(
    claim: Claim,
    key: &str,
    settings: &Settings<St>,
) -> Response<Buffered<ResB>> {
    let outcome = |kind| outcome(settings, Some(key), kind);
    match claim {
        Claim::Completed(Completion::Response(stored)) => {
            outcome(EventKind::Replayed);
            replay(stored)
        }
        Claim::Completed(Completion::NotReplayable { status }) => {
            outcome(EventKind::NotReplayable);
            let msg = format!(
                "a request with this key already completed with status {}, but its response could not be kept; it was not run again",
                status.as_u16()
            );
            problem(StatusCode::CONFLICT, kind::NOT_REPLAYABLE, &msg, None)
        }
        Claim::InFlight { lease_left } => {
            outcome(EventKind::Conflict);
            let msg = "a request with this key is still being processed";
            // A short hint (capped by the lease): most handlers finish long before it ends.
            let hint = settings.in_flight_retry_after.min(lease_left);
            problem(StatusCode::CONFLICT, kind::IN_FLIGHT, msg, Some(hint))
        }
        Claim::Mismatch => {
            outcome(EventKind::Mismatch);
            let msg = "this key was used for a different request";
            problem(StatusCode::UNPROCESSABLE_ENTITY, kind::MISMATCH, msg, None)
        }
        Claim::New => unreachable!("a new claim is run, not answered"),
    }
}

/// The answer to a failed store: each kind of failure has its own; `None` means run the
/// request unprotected (only an unavailable store, and only when failing open).
pub(crate) fn store_failed<St, ResB>(
    e: &StoreError,
    key: &str,
    settings: &Settings<St>,
) -> Option<Response<Buffered<ResB>>> {
    let outcome = |kind| outcome(settings, Some(key), kind);
    let msg = format!("the request was not run: {e}");
    let one_second = Some(Duration::from_secs(1));
    Some(match (e.kind(), settings.on_store_error) {
        (StoreErrorKind::Full, _) => {
            outcome(EventKind::StoreFull);
            let status = StatusCode::SERVICE_UNAVAILABLE;
            problem(status, kind::STORE_FULL, &msg, one_second)
        }
        (StoreErrorKind::Unreadable, _) => {
            outcome(EventKind::UnreadableRecord);
            #[cfg(feature = "tracing")]
            tracing::error!(error = %e, "idempotency record unreadable: the request was not run");
            let status = StatusCode::INTERNAL_SERVER_ERROR;
            problem(status, kind::UNREADABLE_RECORD, &msg, None)
        }
        (_, OnStoreError::FailOpen) => {
            outcome(EventKind::FailOpen);
            #[cfg(feature = "tracing")]
            tracing::warn!(error = %e, "idempotency store down: running the handler unprotected");
            return None;
        }
        (_, OnStoreError::FailClosed) => {
            outcome(EventKind::StoreError);
            let status = StatusCode::SERVICE_UNAVAILABLE;
            problem(status, kind::STORE_UNAVAILABLE, &msg, one_second)
        }
    })
}
