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
        let mut h = Staged::default();
        let mut field = |bytes: &[u8]| {
            h.write(&(bytes.len() as u64).to_be_bytes());
            h.write(bytes);
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
        Fingerprint(*h.finish().finalize().as_bytes())
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

/// Small writes gathered into one buffer before they reach the hasher: the same bytes hashed,
/// in far fewer calls (each costs about as much as hashing a few dozen bytes).
struct Staged {
    hasher: blake3::Hasher,
    buf: [u8; 256],
    len: usize,
}

impl Default for Staged {
    fn default() -> Self {
        Staged {
            hasher: blake3::Hasher::new(),
            buf: [0; 256],
            len: 0,
        }
    }
}

impl Staged {
    fn write(&mut self, bytes: &[u8]) {
        if let Some(room) = self.buf.get_mut(self.len..self.len + bytes.len()) {
            room.copy_from_slice(bytes);
            self.len += bytes.len();
            return;
        }
        self.hasher.update(&self.buf[..self.len]);
        self.len = 0;
        if bytes.len() >= self.buf.len() {
            self.hasher.update(bytes);
        } else {
            self.buf[..bytes.len()].copy_from_slice(bytes);
            self.len = bytes.len();
        }
    }

    fn finish(mut self) -> blake3::Hasher {
        self.hasher.update(&self.buf[..self.len]);
        self.hasher
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

    /// Fingerprints are stored (Redis, PostgreSQL): the byte stream they hash must never change.
    /// Each field is its length (8 bytes, big-endian) and its bytes.
    #[test]
    fn the_hashed_stream_is_the_length_prefixed_fields() {
        let stream = |fields: &[&[u8]]| {
            let mut s = Vec::new();
            for f in fields {
                s.extend_from_slice(&(f.len() as u64).to_be_bytes());
                s.extend_from_slice(f);
            }
            Fingerprint(*blake3::hash(&s).as_bytes())
        };
        let mut headers = HeaderMap::new();
        headers.append("x-tenant", "acme".parse().unwrap());
        headers.append("x-tenant", "beta".parse().unwrap());
        let uri: Uri = "/payments/7?currency=EUR".parse().unwrap();
        // Bodies below, at and well above the staging buffer, and a long header value.
        for body in [
            vec![],
            vec![7u8; 40],
            vec![1u8; 255],
            vec![2u8; 256],
            vec![3u8; 5000],
        ] {
            let got = Fingerprint::of(
                &Method::POST,
                &uri,
                &headers,
                &[HeaderName::from_static("x-tenant")],
                &body,
            );
            let want = stream(&[
                b"POST",
                b"/payments/7",
                b"currency=EUR",
                b"x-tenant",
                &2u64.to_be_bytes(),
                b"acme",
                b"beta",
                &body,
            ]);
            assert_eq!(got, want, "body of {} bytes", body.len());
        }
        let long = "v".repeat(300);
        let mut headers = HeaderMap::new();
        headers.insert("x-long", long.parse().unwrap());
        let got = Fingerprint::of(
            &Method::PATCH,
            &"/a".parse().unwrap(),
            &headers,
            &[HeaderName::from_static("x-long")],
            b"{}",
        );
        let want = stream(&[
            b"PATCH",
            b"/a",
            b"",
            b"x-long",
            &1u64.to_be_bytes(),
            long.as_bytes(),
            b"{}",
        ]);
        assert_eq!(got, want);
    }

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
