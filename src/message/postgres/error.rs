//! What the PostgreSQL inbox answers when it could not settle a message.

use std::fmt;

use crate::ConfigError;

/// The inbox could not apply or skip a message. Every variant leaves the effect either
/// committed with its inbox row or not at all; the consumer redelivers the message, and the
/// redelivery runs it or finds it a duplicate.
///
/// [`Store`](Self::Store) and [`Commit`](Self::Commit) reach the consumer inside a
/// [`RedeliverLater`](crate::message::consumer::RedeliverLater) (the store failing is not an
/// attempt of the message); [`Rejected`](Self::Rejected) and
/// [`TransactionEnded`](Self::TransactionEnded) as they are (the message's failure). The handler's own errors are not wrapped: they reach the consumer
/// as the handler returned them (boxed), so its classifier and
/// [`Poison`](crate::message::Poison) see them unchanged.
///
/// ```
/// use tower_rampart::message::postgres::PgInboxError;
///
/// let e = PgInboxError::TransactionEnded;
/// assert!(e.to_string().starts_with("the handler ended the inbox transaction"));
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum PgInboxError {
    /// `BEGIN`, the inbox insert or a read failed (no connection, connection lost, the table
    /// missing): nothing was applied.
    Store(sqlx::Error),
    /// `COMMIT` got no answer (connection lost): the effect and the row are both committed or
    /// both not; the redelivery runs the message or finds it a duplicate.
    Commit(sqlx::Error),
    /// PostgreSQL refused the transaction after the handler answered `Ok`: a statement of the
    /// handler failed and it went on (the transaction is aborted, and its `COMMIT` would roll
    /// back silently), or a deferred constraint failed at `COMMIT`. Nothing is committed; a
    /// failure of the message (an attempt), not of the store.
    Rejected(sqlx::Error),
    /// The handler ended the inbox's transaction itself (`COMMIT` or `ROLLBACK` through it, or
    /// answered with another transaction): the inbox committed nothing. A handler bug.
    TransactionEnded,
    /// A purge setting was refused.
    Config(ConfigError),
}

impl fmt::Display for PgInboxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PgInboxError::Store(e) => write!(f, "inbox store error: {e}"),
            PgInboxError::Commit(e) => write!(f, "inbox commit failed (outcome unknown): {e}"),
            PgInboxError::Rejected(e) => {
                write!(f, "the handler's transaction was refused, nothing committed: {e}")
            }
            PgInboxError::TransactionEnded => f.write_str(
                "the handler ended the inbox transaction itself; nothing was committed by the inbox",
            ),
            PgInboxError::Config(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for PgInboxError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PgInboxError::Store(e) | PgInboxError::Commit(e) | PgInboxError::Rejected(e) => Some(e),
            PgInboxError::Config(e) => Some(e),
            PgInboxError::TransactionEnded => None,
        }
    }
}
