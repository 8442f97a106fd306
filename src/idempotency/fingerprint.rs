//! What makes two requests "the same request": method, path, query, body and chosen headers.

use std::fmt;

use http::{HeaderMap, HeaderName, Method, Uri};
/// A BLAKE3 fingerprint of a request (256 bits: a collision would replay the wrong response, so
/// a cryptographic hash; BLAKE3 because it is several times faster than SHA-256 without SHA
/// instructions). A key reused with another fingerprint is answered 422.
///
/// ```
/// use tower_rampart::idempotency::Fingerprint;
///
/// let uri: http::Uri = "/payments?currency=EUR".parse().unwrap();
/// let headers = http::HeaderMap::new();
/// let a = Fingerprint::of(&http::Method::POST, &uri, &headers, &[], b"{\"amount\":10}");
/// let b = Fingerprint::of(&http::Method::POST, &uri, &headers, &[], b"{\"amount\":11}");
/// assert_ne!(a, b);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// Hashes the method, path, query, the values of `headers_to_include` (in the order given)
    /// and the body. Fields are length-prefixed, so no two requests share a byte stream.
    pub fn of(
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        headers_to_include: &[HeaderName],
        body: &[u8],
    ) -> Self {
        let mut h = blake3::Hasher::new();
        let mut field = |bytes: &[u8]| {
            h.update(&(bytes.len() as u64).to_be_bytes());
            h.update(bytes);
        };
        field(method.as_str().as_bytes());
        field(uri.path().as_bytes());
        field(uri.query().unwrap_or("").as_bytes());
        for name in headers_to_include {
            // The count of values keeps one header's values apart from the next header's name.
            let values = headers.get_all(name);
            field(name.as_str().as_bytes());
            field(&(values.iter().count() as u64).to_be_bytes());
            for value in values {
                field(value.as_bytes());
            }
        }
        field(body);
        Fingerprint(*h.finalize().as_bytes())
    }

    /// From stored bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Fingerprint(bytes)
    }

    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint(")?;
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_counts() {
        let h = HeaderMap::new();
        let u = |s: &str| s.parse::<Uri>().unwrap();
        let base = Fingerprint::of(&Method::POST, &u("/a?x=1"), &h, &[], b"{}");
        assert_eq!(
            base,
            Fingerprint::of(&Method::POST, &u("/a?x=1"), &h, &[], b"{}")
        );
        assert_ne!(
            base,
            Fingerprint::of(&Method::PATCH, &u("/a?x=1"), &h, &[], b"{}")
        );
        assert_ne!(
            base,
            Fingerprint::of(&Method::POST, &u("/b?x=1"), &h, &[], b"{}")
        );
        assert_ne!(
            base,
            Fingerprint::of(&Method::POST, &u("/a?x=2"), &h, &[], b"{}")
        );
        assert_ne!(
            base,
            Fingerprint::of(&Method::POST, &u("/a?x=1"), &h, &[], b"{ }")
        );
        // Length prefixes: moving a byte from path to query changes the fingerprint.
        assert_ne!(
            Fingerprint::of(&Method::POST, &u("/ab?c"), &h, &[], b""),
            Fingerprint::of(&Method::POST, &u("/a?bc"), &h, &[], b"")
        );
        let mut with = HeaderMap::new();
        with.insert("x-tenant", "t1".parse().unwrap());
        let name = HeaderName::from_static("x-tenant");
        assert_ne!(
            Fingerprint::of(
                &Method::POST,
                &u("/a"),
                &with,
                std::slice::from_ref(&name),
                b""
            ),
            Fingerprint::of(&Method::POST, &u("/a"), &h, &[name], b"")
        );
        // A value that spells the next header's name is not that header.
        let (a, b) = (
            HeaderName::from_static("x-a"),
            HeaderName::from_static("x-b"),
        );
        let mut one = HeaderMap::new();
        one.insert(&a, "x-b".parse().unwrap());
        let mut other = HeaderMap::new();
        other.insert(&b, "x-b".parse().unwrap());
        let names = [a, b];
        assert_ne!(
            Fingerprint::of(&Method::POST, &u("/a"), &one, &names, b""),
            Fingerprint::of(&Method::POST, &u("/a"), &other, &names, b"")
        );
    }
}
