//! Error types shared by every layer: the boxed error of error mode, and builders' refusals.

use std::{any::Any, fmt};

/// The boxed error type layers return in error mode, as in tower.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A builder refused a value. The message names the setting and the value.
///
/// ```
/// use tower_rampart::circuit_breaker::Config;
///
/// let err = Config::builder().minimum_calls(0).build().unwrap_err();
/// assert_eq!(
///     err.to_string(),
///     "invalid circuit breaker configuration: minimum_calls must be at least 1",
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    layer: &'static str,
    message: String,
}

impl ConfigError {
    pub(crate) fn new(layer: &'static str, message: impl Into<String>) -> Self {
        ConfigError {
            layer,
            message: message.into(),
        }
    }

    /// What was wrong, without the layer's name.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {} configuration: {}", self.layer, self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Finds an error of type `T` in `e`: `e` itself, or the error inside a `BoxError` (how layers
/// in error mode pass on a breaker's refusal or a timeout).
pub(crate) fn find_error<T: std::error::Error + 'static, E: 'static>(e: &E) -> Option<&T> {
    let any = e as &dyn Any;
    any.downcast_ref::<T>().or_else(|| {
        any.downcast_ref::<BoxError>()
            .and_then(|b| b.downcast_ref::<T>())
    })
}
