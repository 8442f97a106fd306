//! One message through the inbox: claim, run, complete (or release).

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use tower_service::Service;

use super::{Inboxed, context, fingerprint, layer::Settings};
use crate::{
    BoxError,
    idempotency::{Claim, Completion, OwnerToken, Store, StoreErrorKind, StoredResponse},
    message::{
        Message, Poison,
        consumer::{KeyReused, RedeliverLater},
    },
};

/// The shortest "redeliver later" for a key in flight elsewhere: never a busy loop.
const MIN_LATER: Duration = Duration::from_millis(50);

/// What a completed key holds: "applied", nothing to replay.
fn applied() -> Completion {
    Completion::Response(StoredResponse {
        status: http::StatusCode::OK,
        headers: http::HeaderMap::new(),
        body: Bytes::from_static(b"applied"),
        trailers: None,
    })
}

pub(crate) async fn run<S, St>(
    st: Arc<Settings<St>>,
    mut inner: S,
    message: Message,
) -> Result<Inboxed<S::Response>, BoxError>
where
    S: Service<Message> + Send,
    S::Error: Into<BoxError>,
    St: Store,
{
    let own = (st.key)(&message);
    if own.is_empty() || own.len() > 512 {
        return Err(Poison::new(format!(
            "inbox key must be 1 to 512 bytes, got {}",
            own.len()
        ))
        .into());
    }
    let key: Arc<str> = format!("{}{own}", st.prefix).into();
    let fp = fingerprint(&message);
    let token = OwnerToken::new();
    let claimed =
        tokio::time::timeout(st.store_timeout, st.store.claim(&key, &fp, token, st.lease)).await;
    let claim = match claimed {
        Ok(Ok(claim)) => claim,
        Ok(Err(e)) => {
            if st.fail_open && e.kind() == StoreErrorKind::Unavailable {
                return unprotected(inner, message).await;
            }
            // A claim whose answer was lost may have taken the key: give it back.
            release_later(&st, &key, token);
            let after = e.retry_after().unwrap_or(st.store_error_delay);
            return Err(RedeliverLater::new(after).because(e).into());
        }
        Err(_) => {
            release_later(&st, &key, token);
            if st.fail_open {
                return unprotected(inner, message).await;
            }
            return Err(RedeliverLater::new(st.store_error_delay)
                .because("the inbox store did not answer in time")
                .into());
        }
    };
    match claim {
        Claim::New => {}
        Claim::Completed(_) => return Ok(Inboxed::Duplicate),
        Claim::InFlight { lease_left } => {
            return Err(
                RedeliverLater::new(lease_left.min(st.in_flight_delay).max(MIN_LATER))
                    .because("the message is being handled by another consumer")
                    .into(),
            );
        }
        Claim::Mismatch => return Err(KeyReused::new(&*key).into()),
    }
    // Owned from here: a panic or cancellation gives the key back (the guard), so that a
    // redelivery does not wait for the lease to run out.
    let mut owned = Owned {
        st: st.clone(),
        key: key.clone(),
        token,
        settled: false,
    };
    let (ctx, renewals) = context::start(st.clone(), key.clone(), token);
    let answer = ctx
        .scope(inner.call(message))
        .await
        .map_err(Into::<BoxError>::into);
    match answer {
        Ok(res) => {
            complete(&st, &key, &fp, token).await;
            drop(renewals);
            owned.settled = true;
            Ok(Inboxed::Ran(res))
        }
        Err(e) => {
            drop(renewals);
            owned.settled = true;
            let _ = tokio::time::timeout(st.store_timeout, st.store.release(&key, token)).await;
            Err(e)
        }
    }
}

/// The handler without the inbox (fail open).
async fn unprotected<S>(mut inner: S, message: Message) -> Result<Inboxed<S::Response>, BoxError>
where
    S: Service<Message>,
    S::Error: Into<BoxError>,
{
    #[cfg(feature = "tracing")]
    tracing::warn!("inbox store unavailable: handling the message unprotected (fail open)");
    inner
        .call(message)
        .await
        .map(Inboxed::Ran)
        .map_err(Into::into)
}

/// Stores "applied", retrying while the lease lasts: a key left in flight would run again
/// once its lease ends. Gives up after one lease (the message is acked anyway: its effect
/// happened; only a duplicate published later could run again).
async fn complete<St: Store>(
    st: &Settings<St>,
    key: &str,
    fp: &crate::idempotency::Fingerprint,
    token: OwnerToken,
) {
    let give_up = tokio::time::Instant::now() + st.lease;
    let mut pause = Duration::from_millis(50);
    let completion = applied();
    loop {
        let done = tokio::time::timeout(
            st.store_timeout,
            st.store.complete(key, fp, token, &completion, st.ttl),
        )
        .await;
        match done {
            // `false`: another owner took the key meanwhile (the lease was lost); nothing to do.
            Ok(Ok(_)) => return,
            Ok(Err(_)) | Err(_) => {
                if tokio::time::Instant::now() + pause >= give_up {
                    #[cfg(feature = "tracing")]
                    tracing::warn!(
                        "inbox could not record a handled message: a redelivery may run it again"
                    );
                    return;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Releases `key` in the background (best effort), if a runtime is there to run it.
fn release_later<St: Store>(st: &Arc<Settings<St>>, key: &Arc<str>, token: OwnerToken) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let (st, key) = (st.clone(), key.clone());
    rt.spawn(async move {
        let _ = tokio::time::timeout(st.store_timeout, st.store.release(&key, token)).await;
    });
}

/// Gives the key back if the handler never settled (it panicked, or was cancelled).
struct Owned<St: Store> {
    st: Arc<Settings<St>>,
    key: Arc<str>,
    token: OwnerToken,
    settled: bool,
}

impl<St: Store> Drop for Owned<St> {
    fn drop(&mut self) {
        if !self.settled {
            release_later(&self.st, &self.key, self.token);
        }
    }
}
