use std::fmt;

use crate::BoxError;

/// A message that can never be processed (its payload cannot be decoded, it names something
/// that does not exist): return it, or any error with it as a source, from a handler and the
/// consumer dead-letters the message at once instead of redelivering it.
///
/// ```
/// use tower_rampart::message::{Message, Poison};
///
/// fn decode(msg: &Message) -> Result<u64, Poison> {
///     std::str::from_utf8(msg.payload())
///         .ok()
///         .and_then(|s| s.parse().ok())
///         .ok_or_else(|| Poison::new("payload is not a number"))
/// }
/// let err = decode(&Message::new("m1", "count", "twelve")).unwrap_err();
/// assert_eq!(err.to_string(), "poison message: payload is not a number");
/// ```
#[derive(Debug)]
pub struct Poison {
    reason: BoxError,
}

impl Poison {
    /// A poison message, and why.
    pub fn new(reason: impl Into<BoxError>) -> Self {
        Poison {
            reason: reason.into(),
        }
    }

    /// Whether `e` is a `Poison` or has one among its sources.
    pub fn is_in(e: &(dyn std::error::Error + 'static)) -> bool {
        let mut cur = Some(e);
        while let Some(err) = cur {
            if err.is::<Poison>() {
                return true;
            }
            cur = err.source();
        }
        false
    }
}

impl fmt::Display for Poison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "poison message: {}", self.reason)
    }
}

impl std::error::Error for Poison {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapper(Poison);
    impl fmt::Display for Wrapper {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("handler failed")
        }
    }
    impl std::error::Error for Wrapper {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn found_as_a_source() {
        let e: BoxError = Box::new(Wrapper(Poison::new("bad json")));
        assert!(Poison::is_in(&*e));
        let other: BoxError = "timeout".into();
        assert!(!Poison::is_in(&*other));
    }
}
