//! Keys as events and logs show them: redacted by default, since a scoped key carries the
//! caller's principal (a tenant, a user) and the client's key is a bearer of its request.

use std::fmt;

use super::layer::Options;

const PREFIX: &str = "blake3:";
/// 12 hex digits (48 bits) of the hash: enough to tell keys apart in a log, not to read them.
const DIGITS: usize = 12;
const LEN: usize = PREFIX.len() + DIGITS;

/// A key as shown: `blake3:` and the first 12 hex digits of its BLAKE3 hash, or the key itself
/// when the layer logs raw keys. Built on the stack: nothing allocated.
pub(crate) struct ShownKey<'a> {
    raw: Option<&'a str>,
    hashed: [u8; LEN],
}

impl<'a> ShownKey<'a> {
    pub(crate) fn new(options: &Options, key: &'a str) -> Self {
        if options.log_raw_keys {
            ShownKey {
                raw: Some(key),
                hashed: [0; LEN],
            }
        } else {
            ShownKey {
                raw: None,
                hashed: hashed(key),
            }
        }
    }

    /// The key, redacted whatever the layer's choice (for the store's own logs).
    #[cfg_attr(not(feature = "tracing"), allow(dead_code))]
    pub(crate) fn redacted(key: &str) -> ShownKey<'static> {
        ShownKey {
            raw: None,
            hashed: hashed(key),
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        match self.raw {
            Some(raw) => raw,
            // Only ASCII is written into `hashed`.
            None => std::str::from_utf8(&self.hashed).unwrap_or(PREFIX),
        }
    }
}

fn hashed(key: &str) -> [u8; LEN] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let hash = blake3::hash(key.as_bytes());
    let mut out = [0u8; LEN];
    out[..PREFIX.len()].copy_from_slice(PREFIX.as_bytes());
    for (i, b) in hash.as_bytes()[..DIGITS / 2].iter().enumerate() {
        out[PREFIX.len() + 2 * i] = HEX[(b >> 4) as usize];
        out[PREFIX.len() + 2 * i + 1] = HEX[(b & 15) as usize];
    }
    out
}

impl fmt::Display for ShownKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted_keys_are_short_stable_hashes() {
        let a = ShownKey::redacted("5:alice:order-1");
        let text = a.as_str().to_owned();
        assert!(text.starts_with("blake3:") && text.len() == LEN, "{text}");
        assert!(!text.contains("alice"));
        let hex = &blake3::hash(b"5:alice:order-1").to_hex()[..DIGITS];
        assert_eq!(&text[PREFIX.len()..], hex);
        assert_ne!(ShownKey::redacted("5:alice:order-2").as_str(), text);
    }
}
