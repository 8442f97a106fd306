//! Error types shared by every layer: the boxed error of error mode, and builders' refusals.

use std::{any::Any, fmt, time::Duration};

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
    /// The setting at fault, under its name in configuration files (`minimum_calls`), when one is.
    field: Option<&'static str>,
    /// What is wrong with it, read after the field's name ("must be at least 1").
    message: String,
}

impl ConfigError {
    pub(crate) fn new(layer: &'static str, message: impl Into<String>) -> Self {
        ConfigError {
            layer,
            field: None,
            message: message.into(),
        }
    }

    /// A refusal of one setting: `field` is its name in configuration files (and usually the
    /// builder method's), `message` what is wrong with it, worded to follow the name.
    pub(crate) fn field(
        layer: &'static str,
        field: &'static str,
        message: impl Into<String>,
    ) -> Self {
        ConfigError {
            layer,
            field: Some(field),
            message: message.into(),
        }
    }

    /// Refuses a duration above [`MAX_DURATION`] (one year): `Duration::MAX` meant as "forever"
    /// would overflow the `Instant` arithmetic of a running layer, so it is refused while
    /// building, never met later. Zero is for each caller to judge.
    pub(crate) fn check_duration(
        layer: &'static str,
        field: &'static str,
        value: Duration,
    ) -> Result<Duration, ConfigError> {
        if value > MAX_DURATION {
            return Err(ConfigError::field(
                layer,
                field,
                format!(
                    "must be at most one year (365 days), got {}",
                    describe(value)
                ),
            ));
        }
        Ok(value)
    }

    /// The setting at fault, by its name in configuration files, when the error is about one.
    ///
    /// ```
    /// use tower_rampart::circuit_breaker::Config;
    ///
    /// let err = Config::builder().minimum_calls(0).build().unwrap_err();
    /// assert_eq!(err.setting(), Some("minimum_calls"));
    /// assert_eq!(err.reason(), "must be at least 1");
    /// ```
    pub fn setting(&self) -> Option<&'static str> {
        self.field
    }

    /// What is wrong, without the layer's name nor the setting's.
    pub fn reason(&self) -> &str {
        &self.message
    }

    /// What was wrong, without the layer's name: the setting's name followed by the reason.
    pub fn message(&self) -> String {
        match self.field {
            Some(field) => format!("{field} {}", self.message),
            None => self.message.clone(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {} configuration: ", self.layer)?;
        if let Some(field) = self.field {
            write!(f, "{field} ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// The longest duration any setting of any layer accepts: one year. Builders and configuration
/// files refuse longer ones with a [`ConfigError`] naming the setting.
///
/// ```
/// use std::time::Duration;
/// use tower_rampart::{MAX_DURATION, idempotency::IdempotencyLayer};
///
/// assert_eq!(MAX_DURATION, Duration::from_secs(365 * 24 * 3600));
/// let err = IdempotencyLayer::builder().global_keys().ttl(Duration::MAX).build().unwrap_err();
/// assert_eq!(err.setting(), Some("ttl"));
/// ```
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// A duration as an operator reads it: whole days or seconds when it is one, else as Rust
/// prints it.
fn describe(d: Duration) -> String {
    const DAY: u64 = 24 * 3600;
    match (d.as_secs(), d.subsec_nanos()) {
        (s, 0) if s % DAY == 0 => format!("{} days", s / DAY),
        (s, 0) => format!("{s} seconds"),
        _ => format!("{d:?}"),
    }
}

/// Finds an error of type `T` in `e`: `e` itself, or the error inside a `BoxError` (how layers
/// in error mode pass on a breaker's refusal or a timeout).
pub(crate) fn find_error<T: std::error::Error + 'static, E: 'static>(e: &E) -> Option<&T> {
    let any = e as &dyn Any;
    any.downcast_ref::<T>().or_else(|| {
        any.downcast_ref::<BoxError>()
            .and_then(|b| b.downcast_ref::<T>())
    })
}
