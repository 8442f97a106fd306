//! What a configuration error says: the path to the field at fault, and why.

use std::fmt;

use crate::ConfigError;

/// A configuration that could not be loaded or was refused: the path to the field at fault
/// (`policies.payment-gateway.circuit_breaker.minimum_calls`) and what is wrong with it.
///
/// ```
/// use tower_rampart::config::PolicySettings;
///
/// let file = serde_json::json!({"circuit_breaker": {"minimum_calls": 0}});
/// let err = PolicySettings::from_value(file).unwrap_err();
/// assert_eq!(err.path(), "circuit_breaker.minimum_calls");
/// assert_eq!(err.to_string(), "circuit_breaker.minimum_calls: must be at least 1");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    path: String,
    message: String,
}

impl Error {
    pub(crate) fn at(path: impl Into<String>, message: impl Into<String>) -> Self {
        Error {
            path: path.into(),
            message: message.into(),
        }
    }

    /// A builder's refusal of the settings under `section`: the path ends with the key the
    /// user wrote for the refused setting (`keys` maps the builder's setting names to it).
    pub(crate) fn refused(
        section: &str,
        error: &ConfigError,
        key: impl Fn(&str) -> String,
    ) -> Self {
        match error.setting() {
            Some(setting) => Error::at(join(section, &key(setting)), error.reason()),
            None => Error::at(section, error.message()),
        }
    }

    /// Dotted path to the field at fault; empty when the error is about the whole document
    /// (a syntax error).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// What is wrong.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// `a.b`, or whichever is not empty.
pub(crate) fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_owned(),
        (_, true) => a.to_owned(),
        _ => format!("{a}.{b}"),
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for Error {}
