//! The `Idempotency-Key` header: a Structured Field String, or the bare token most clients send.

use std::fmt;

use http::HeaderValue;

/// A validated idempotency key: 1..=255 visible ASCII characters.
///
/// `"8e03978e-40d5"` (a Structured Field String, as the IETF draft specifies) and `8e03978e-40d5`
/// (a bare token, as most clients send) name the same key.
///
/// ```
/// use http::HeaderValue;
/// use tower_rampart::idempotency::IdempotencyKey;
///
/// let quoted = IdempotencyKey::parse(&HeaderValue::from_static("\"8e03978e-40d5\"")).unwrap();
/// let bare = IdempotencyKey::parse(&HeaderValue::from_static("8e03978e-40d5")).unwrap();
/// assert_eq!(quoted, bare);
/// assert!(IdempotencyKey::parse(&HeaderValue::from_static("\"\"")).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(Box<str>);

/// Why a key was refused (answered with 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    /// Empty, or an empty string.
    Empty,
    /// Longer than 255 characters.
    TooLong,
    /// A character outside visible ASCII, a space in a bare key, or a bad escape.
    InvalidCharacter,
    /// A quoted key with no closing quote, or text after it.
    Malformed,
    /// More than one `Idempotency-Key` header: which one the client meant is a guess.
    Repeated,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyError::Empty => "the Idempotency-Key is empty",
            KeyError::TooLong => "the Idempotency-Key is longer than 255 characters",
            KeyError::InvalidCharacter => {
                "the Idempotency-Key must be visible ASCII (a quoted key may hold spaces)"
            }
            KeyError::Malformed => "the Idempotency-Key is not a valid structured field string",
            KeyError::Repeated => "the request has more than one Idempotency-Key header",
        })
    }
}

impl std::error::Error for KeyError {}

/// The header name of the IETF Idempotency-Key draft.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The longest key accepted.
pub const MAX_KEY_LEN: usize = 255;

impl IdempotencyKey {
    /// Parses a header value.
    ///
    /// # Errors
    ///
    /// A [`KeyError`] when the value is empty, too long ([`MAX_KEY_LEN`]) or not a valid key.
    pub fn parse(value: &HeaderValue) -> Result<Self, KeyError> {
        // Structured-field parsing drops surrounding spaces.
        let raw = value.as_bytes().trim_ascii();
        let key = match raw.first() {
            None => return Err(KeyError::Empty),
            Some(b'"') => parse_sf_string(&raw[1..])?,
            Some(_) => {
                if !raw.iter().all(|b| (0x21..=0x7e).contains(b) && *b != b'"') {
                    return Err(KeyError::InvalidCharacter);
                }
                String::from_utf8(raw.to_vec()).map_err(|_| KeyError::InvalidCharacter)?
            }
        };
        match key.len() {
            0 => Err(KeyError::Empty),
            n if n > MAX_KEY_LEN => Err(KeyError::TooLong),
            _ => Ok(IdempotencyKey(key.into_boxed_str())),
        }
    }

    /// The request's key: exactly one `Idempotency-Key` header, parsed. `Ok(None)` when there is
    /// none.
    ///
    /// # Errors
    ///
    /// [`KeyError::Repeated`] for more than one header, or the header's own [`parse`](Self::parse)
    /// error.
    ///
    /// ```
    /// use tower_rampart::idempotency::{IdempotencyKey, KeyError};
    ///
    /// let mut headers = http::HeaderMap::new();
    /// headers.append("idempotency-key", "a".parse().unwrap());
    /// assert_eq!(IdempotencyKey::from_headers(&headers).unwrap().unwrap().as_str(), "a");
    /// headers.append("idempotency-key", "b".parse().unwrap());
    /// assert_eq!(IdempotencyKey::from_headers(&headers), Err(KeyError::Repeated));
    /// ```
    pub fn from_headers(headers: &http::HeaderMap) -> Result<Option<Self>, KeyError> {
        // A name made once: looking up by `&str` would parse it on every request.
        static NAME: http::HeaderName = http::HeaderName::from_static(IDEMPOTENCY_KEY);
        let mut all = headers.get_all(&NAME).iter();
        match (all.next(), all.next()) {
            (None, _) => Ok(None),
            (Some(v), None) => Self::parse(v).map(Some),
            (Some(_), Some(_)) => Err(KeyError::Repeated),
        }
    }

    /// The key's text (without quotes).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The rest of an sf-string after its opening quote (RFC 8941 section 4.2.5).
fn parse_sf_string(rest: &[u8]) -> Result<String, KeyError> {
    let mut out = String::with_capacity(rest.len());
    let mut bytes = rest.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'\\' => match bytes.next() {
                Some(&c @ (b'"' | b'\\')) => out.push(char::from(c)),
                _ => return Err(KeyError::InvalidCharacter),
            },
            b'"' => {
                return if bytes.next().is_none() {
                    Ok(out)
                } else {
                    Err(KeyError::Malformed)
                };
            }
            0x20..=0x7e => out.push(char::from(b)),
            _ => return Err(KeyError::InvalidCharacter),
        }
        if out.len() > MAX_KEY_LEN {
            return Err(KeyError::TooLong);
        }
    }
    Err(KeyError::Malformed)
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &[u8]) -> Result<String, KeyError> {
        IdempotencyKey::parse(&HeaderValue::from_bytes(s).unwrap()).map(|k| k.as_str().to_owned())
    }

    #[test]
    fn forms() {
        assert_eq!(parse(b"abc").unwrap(), "abc");
        assert_eq!(parse(b"\"abc\"").unwrap(), "abc");
        assert_eq!(
            parse(b"  \"a b\"  ").unwrap(),
            "a b",
            "spaces inside quotes, trimmed outside"
        );
        assert_eq!(parse(b"\"a\\\"b\\\\c\"").unwrap(), "a\"b\\c");
        assert_eq!(parse(b"\"\""), Err(KeyError::Empty));
        assert_eq!(parse(b""), Err(KeyError::Empty));
        assert_eq!(parse(b"a b"), Err(KeyError::InvalidCharacter));
        assert_eq!(parse(b"\"abc"), Err(KeyError::Malformed));
        assert_eq!(parse(b"\"abc\";p=1"), Err(KeyError::Malformed));
        assert_eq!(parse(b"\"a\\nb\""), Err(KeyError::InvalidCharacter));
        assert_eq!(parse(b"ab\"c"), Err(KeyError::InvalidCharacter));
        assert_eq!(parse(b"caf\xc3\xa9"), Err(KeyError::InvalidCharacter));
        let long = vec![b'k'; 255];
        assert_eq!(parse(&long).unwrap().len(), 255);
        let too_long = vec![b'k'; 256];
        assert_eq!(parse(&too_long), Err(KeyError::TooLong));
        let mut quoted = vec![b'"'];
        quoted.extend(vec![b'k'; 256]);
        quoted.push(b'"');
        assert_eq!(parse(&quoted), Err(KeyError::TooLong));
    }
}
