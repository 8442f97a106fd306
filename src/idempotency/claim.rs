//! The claim phase: claim the key (waiting for a running duplicate if asked), free a claim
//! whose answer was lost, and answer every claim that is not ours to run.

use std::{sync::Arc, time::Duration};

use http::{Response, StatusCode};
use tokio::time::Instant;

use super::{
    Claim, Completion, EventKind, Fingerprint, OwnerToken, Store, StoreError, StoreErrorKind,
    instrument::{Op, outcome, within},
    layer::{OnStoreError, Settings},
    outage::{Outage, later},
    problem::{problem, problem_types as kind},
    replayed::replay,
};
use crate::replay::Buffered;

/// A claim's answer, with the token it was made with.
pub(crate) struct Claimed<St: Store> {
    pub(crate) answer: Result<Claim, StoreError>,
    pub(crate) token: OwnerToken,
    /// When the claim was sent: a new owner's lease runs from there.
    pub(crate) at: Instant,
    /// With `New`: frees the key if dropped before the owner task takes it over.
    pub(crate) handoff: Option<Handoff<St>>,
}

/// Frees a claim that nobody answered for: armed while the claim is in flight, so that a caller
/// that gives up meanwhile (client gone, an outer timeout) does not leave a claim that lands
/// afterwards blocking the key for a whole lease.
struct InFlight<'a, St: Store> {
    settings: &'a Arc<Settings<St>>,
    key: &'a Arc<str>,
    token: OwnerToken,
    armed: bool,
}

impl<St: Store> Drop for InFlight<'_, St> {
    fn drop(&mut self) {
        if self.armed {
            forget_claim(self.settings, self.key, self.token);
        }
    }
}

/// A key claimed `New`, on its way to its owner task: freed if dropped before
/// [`Handoff::taken`] (a panic before the owner task is spawned).
pub(crate) struct Handoff<St: Store> {
    settings: Arc<Settings<St>>,
    key: Arc<str>,
    token: OwnerToken,
    armed: bool,
}

impl<St: Store> Handoff<St> {
    /// The owner task has the key now: it releases or completes it.
    pub(crate) fn taken(mut self) {
        self.armed = false;
    }
}

impl<St: Store> Drop for Handoff<St> {
    fn drop(&mut self) {
        if self.armed {
            forget_claim(&self.settings, &self.key, self.token);
        }
    }
}

/// Claims the key; with `wait_for_in_flight`, a duplicate polls until the first completes.
pub(crate) async fn claim_key<St: Store>(
    settings: &Arc<Settings<St>>,
    key: &Arc<str>,
    fingerprint: &Fingerprint,
) -> Claimed<St> {
    let mut claimed = claim_once(settings, key, fingerprint).await;
    let Some(wait) = settings.wait_for_in_flight else {
        return claimed;
    };
    let deadline = later(Instant::now(), wait);
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

/// One claim with a fresh token; on a lost answer, or when the caller gives up before the
/// answer, frees the claim it may have made.
async fn claim_once<St: Store>(
    settings: &Arc<Settings<St>>,
    key: &Arc<str>,
    fingerprint: &Fingerprint,
) -> Claimed<St> {
    let (token, at) = (OwnerToken::new(), Instant::now());
    let mut in_flight = InFlight {
        settings,
        key,
        token,
        armed: true,
    };
    let claim = settings
        .store
        .claim(key, fingerprint, token, settings.lease);
    let answer = within(&settings.meters, Op::Claim, settings.store_timeout, claim).await;
    // A lost answer stays armed: the claim may have landed, or land later.
    in_flight.armed = matches!(&answer, Err(e) if e.kind() == StoreErrorKind::Unavailable);
    drop(in_flight);
    let handoff = matches!(answer, Ok(Claim::New)).then(|| Handoff {
        settings: settings.clone(),
        key: key.clone(),
        token,
        armed: true,
    });
    Claimed {
        answer,
        token,
        at,
        handoff,
    }
}

/// A claim whose answer was lost may still have landed, or land later (a slow store): free it
/// with its token, in the background, until a release takes or the lease would have ended, so
/// the key is not answered 409 for a whole lease while nothing runs. Releasing with this
/// token can only free this claim, so a late release is always safe.
///
/// At most [`MAX_BACKGROUND_RELEASES`](super::outage::MAX_BACKGROUND_RELEASES) run at once per
/// layer, backing off together while the store fails; more are shed with an event (the lease
/// frees those keys).
fn forget_claim<St: Store>(settings: &Arc<Settings<St>>, key: &Arc<str>, token: OwnerToken) {
    // Dropped outside a runtime (it is shutting down): the lease frees the key.
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let Some(slot) = Outage::release_slot(settings) else {
        // A listener that panics while a panic unwinds would abort the process.
        if !std::thread::panicking() {
            outcome(settings, Some(key), EventKind::ReleaseShed);
        }
        return;
    };
    let key = key.clone();
    runtime.spawn(async move {
        let settings = slot.owner();
        let end = later(Instant::now(), settings.lease);
        let (mut wait, cap) = (settings.store_timeout / 4, settings.lease / 4);
        while Instant::now() < end {
            let release = settings.store.release(&key, token);
            match within(
                &settings.meters,
                Op::Release,
                settings.store_timeout,
                release,
            )
            .await
            {
                Ok(true) => return settings.outage.answered(),
                Ok(false) => settings.outage.answered(),
                Err(_) => settings.outage.failed(),
            }
            tokio::time::sleep(settings.outage.pause(wait, cap)).await;
            wait = wait.saturating_mul(2).min(cap);
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
        Claim::Completed(Completion::OutcomeUnknown { status }) => {
            outcome(EventKind::OutcomeUnknown);
            let msg = format!(
                "a request with this key started but was cut off part-way (its caller got status {}): it may or may not have taken effect, and it was not run again; check the resource, and use a new key to send it again",
                status.as_u16()
            );
            problem(StatusCode::CONFLICT, kind::OUTCOME_UNKNOWN, &msg, None)
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
            // The store knows when room frees up (the memory store: when its oldest record
            // passes the retention floor, or the soonest lease ends).
            let wait = e.retry_after().or(one_second);
            problem(status, kind::STORE_FULL, &msg, wait)
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
