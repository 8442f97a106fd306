//! The outbox's errors.

use std::fmt;

use crate::ConfigError;

/// What went wrong enqueueing, relaying or purging.
#[derive(Debug)]
#[non_exhaustive]
pub enum OutboxError {
    /// A setting or argument was refused.
    Config(ConfigError),
    /// The event cannot be stored (an empty or too long id or aggregate, a NUL character in a
    /// text field); nothing was written. The text says which field and why.
    InvalidEvent(String),
    /// An event with this message id is already in the outbox (ids must be unique: consumers
    /// dedupe on them).
    DuplicateId(String),
    /// PostgreSQL failed or did not answer.
    Database(sqlx::Error),
}

impl fmt::Display for OutboxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutboxError::Config(e) => e.fmt(f),
            OutboxError::InvalidEvent(why) => write!(f, "outbox event refused: {why}"),
            OutboxError::DuplicateId(id) => write!(
                f,
                "outbox event refused: message id {id:?} is already in the outbox"
            ),
            OutboxError::Database(e) => write!(f, "outbox: PostgreSQL failed: {e}"),
        }
    }
}

impl std::error::Error for OutboxError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OutboxError::Config(e) => Some(e),
            OutboxError::Database(e) => Some(e),
            _ => None,
        }
    }
}

impl From<ConfigError> for OutboxError {
    fn from(e: ConfigError) -> Self {
        OutboxError::Config(e)
    }
}

impl From<sqlx::Error> for OutboxError {
    fn from(e: sqlx::Error) -> Self {
        OutboxError::Database(e)
    }
}
