//! The inbox service: BEGIN, record the key, run the handler in the same transaction, COMMIT.

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use sqlx::{Postgres, Row, Transaction};
use tower_service::Service;

use super::{
    PgInboxError, ResponseFuture,
    layer::{MAX_KEY_LEN, Shared},
    table::storable,
};
use crate::{
    BoxError,
    message::{
        Message, Poison,
        consumer::{KeyReused, RedeliverLater},
        inbox::{Inboxed, fingerprint},
    },
};

/// The transaction a handler receives with its message (and hands back).
///
/// ```
/// use tower_rampart::message::postgres::PgTx;
///
/// async fn record(tx: &mut PgTx, id: &str) -> Result<(), sqlx::Error> {
///     sqlx::query("INSERT INTO seen (id) VALUES ($1)").bind(id).execute(&mut **tx).await?;
///     Ok(())
/// }
/// ```
pub type PgTx = Transaction<'static, Postgres>;

/// What the inbox hands its handler: the message, and the open transaction that already holds
/// the message's inbox row. Write the effect through `tx` (`.execute(&mut *tx)`) and answer
/// `Ok((tx, response))`: the inbox commits. Never commit or roll back `tx` yourself.
///
/// Use `sqlx::query` (or `tx.execute("...")`) in handlers: a `sqlx::raw_sql` future borrowing
/// the transaction is not provably `Send` (a rustc limitation), and the inbox needs `Send`
/// handler futures.
///
/// ```
/// use tower::service_fn;
/// use tower_rampart::{BoxError, message::postgres::TxMessage};
///
/// let handler = service_fn(|TxMessage { message, mut tx }| async move {
///     sqlx::query("INSERT INTO orders (id, body) VALUES ($1, $2)")
///         .bind(message.id())
///         .bind(message.payload().as_ref())
///         .execute(&mut *tx)
///         .await?;
///     Ok::<_, BoxError>((tx, ()))
/// });
/// # let _ = handler;
/// ```
#[derive(Debug)]
pub struct TxMessage {
    /// The message.
    pub message: Message,
    /// The inbox's transaction: the effect goes through it.
    pub tx: PgTx,
}

/// The inbox around a handler, made by [`PgInboxLayer`](super::PgInboxLayer): a
/// `Service<Message>` a consumer drives.
///
/// The handler is a `Service<TxMessage, Response = (PgTx, R)>`. Its errors pass through
/// unchanged (boxed); the inbox's own are [`PgInboxError`].
///
/// ```
/// use sqlx::postgres::PgPoolOptions;
/// use tower::{Layer, service_fn};
/// use tower_rampart::{BoxError, message::postgres::{PgInboxLayer, TxMessage}};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let pool = PgPoolOptions::new().connect_lazy("postgres://localhost/app").unwrap();
/// let inbox = PgInboxLayer::new(pool).layer(service_fn(|m: TxMessage| async move {
///     Ok::<_, BoxError>((m.tx, ()))
/// }));
/// # let _ = inbox;
/// # }
/// ```
#[derive(Clone)]
pub struct PgInbox<S> {
    shared: Arc<Shared>,
    inner: S,
}

impl<S: fmt::Debug> fmt::Debug for PgInbox<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgInbox")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> PgInbox<S> {
    pub(crate) fn new(shared: Arc<Shared>, inner: S) -> Self {
        PgInbox { shared, inner }
    }

    /// The handler.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, R> Service<Message> for PgInbox<S>
where
    S: Service<TxMessage, Response = (PgTx, R)> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    R: Send + 'static,
{
    type Response = Inboxed<R>;
    type Error = BoxError;
    type Future = ResponseFuture<R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, message: Message) -> ResponseFuture<R> {
        // The ready handler goes into the future; a clone stays for the next call.
        let clone = self.inner.clone();
        let handler = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::new(Box::pin(run(self.shared.clone(), handler, message)))
    }
}

async fn run<S, R>(
    shared: Arc<Shared>,
    mut handler: S,
    message: Message,
) -> Result<Inboxed<R>, BoxError>
where
    S: Service<TxMessage, Response = (PgTx, R)>,
    S::Error: Into<BoxError>,
{
    let key = (shared.key)(&message);
    if key.is_empty() || key.len() > MAX_KEY_LEN || key.contains('\0') {
        return Err(Poison::new(format!(
            "inbox key must be 1 to {MAX_KEY_LEN} bytes without NUL, got {} bytes",
            key.len()
        ))
        .into());
    }
    let print = fingerprint(&message);
    let print = print.as_bytes();
    // The store failing is not the message's fault: "not now", not an attempt.
    let later = |e: PgInboxError| -> BoxError {
        RedeliverLater::new(shared.store_error_delay)
            .because(e)
            .into()
    };
    let store = |e| later(PgInboxError::Store(e));

    let mut tx = shared.pool.begin().await.map_err(store)?;
    // Blocks while another delivery holds this key uncommitted, then sees its outcome.
    let inserted = sqlx::query(&shared.insert)
        .bind(&key)
        .bind(storable(message.id()))
        .bind(storable(message.kind()))
        .bind(&print[..])
        .fetch_optional(&mut *tx)
        .await
        .map_err(store)?;
    let Some(row) = inserted else {
        if shared.verify_payload {
            let first: Option<Vec<u8>> = sqlx::query_scalar(&shared.fingerprint)
                .bind(&key)
                .fetch_optional(&mut *tx)
                .await
                .map_err(store)?;
            if first.is_some_and(|f| f[..] != print[..]) {
                return Err(KeyReused::new(key).into());
            }
        }
        drop(tx); // rolled back: nothing written
        return Ok(Inboxed::Duplicate);
    };
    let xid: i64 = row.try_get(0).map_err(store)?;

    let (mut tx, response) = handler
        .call(TxMessage { message, tx })
        .await
        .map_err(Into::into)?;

    // Past the handler, PostgreSQL refusing (rather than not answering) is the effect's
    // failure: an attempt of the message, not "not now".
    let refused_or_later = |e: sqlx::Error, wrap: fn(sqlx::Error) -> PgInboxError| match e {
        sqlx::Error::Database(_) => PgInboxError::Rejected(e).into(),
        e => later(wrap(e)),
    };
    // The handler must hand back the same, still open transaction. This also catches a
    // transaction a failed statement aborted: its COMMIT would roll back without an error.
    let now: Option<i64> = sqlx::query_scalar("SELECT txid_current_if_assigned()")
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| refused_or_later(e, PgInboxError::Store))?;
    if now != Some(xid) {
        return Err(PgInboxError::TransactionEnded.into());
    }
    tx.commit()
        .await
        .map_err(|e| refused_or_later(e, PgInboxError::Commit))?;
    Ok(Inboxed::Ran(response))
}
