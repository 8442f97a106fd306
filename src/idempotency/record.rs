//! What a completed key holds, and its compact, versioned binary form (for stores that keep
//! bytes, such as Redis).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

/// The outcome stored for a completed key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    /// The response, replayed byte for byte to later requests with the same key.
    Response(StoredResponse),
    /// The handler ran, but its response could not be kept (too large, or streaming): later
    /// requests get an error, never a second execution.
    NotReplayable {
        /// The status the first caller got.
        status: StatusCode,
    },
}

/// A response as stored: status, the headers worth replaying, body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    /// The status.
    pub status: StatusCode,
    /// The headers (per-caller headers such as `Set-Cookie` are never stored).
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

/// A stored record that could not be read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeError(&'static str);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unreadable idempotency record: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

const VERSION: u8 = 1;
const RESPONSE: u8 = 1;
const NOT_REPLAYABLE: u8 = 2;

impl Completion {
    /// The binary form: version, kind, status, then (for a response) headers and body, each
    /// length-prefixed.
    ///
    /// ```
    /// use tower_rampart::idempotency::{Completion, StoredResponse};
    ///
    /// let c = Completion::Response(StoredResponse {
    ///     status: http::StatusCode::CREATED,
    ///     headers: http::HeaderMap::new(),
    ///     body: bytes::Bytes::from_static(b"{\"id\":\"p1\"}"),
    /// });
    /// assert_eq!(Completion::decode(&c.encode()).unwrap(), c);
    /// ```
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        out.put_u8(VERSION);
        match self {
            Completion::NotReplayable { status } => {
                out.put_u8(NOT_REPLAYABLE);
                out.put_u16(status.as_u16());
            }
            Completion::Response(r) => {
                out.put_u8(RESPONSE);
                out.put_u16(r.status.as_u16());
                out.put_u32(r.headers.len() as u32);
                for (name, value) in &r.headers {
                    out.put_u16(name.as_str().len() as u16);
                    out.put_slice(name.as_str().as_bytes());
                    out.put_u32(value.len() as u32);
                    out.put_slice(value.as_bytes());
                }
                out.put_u32(r.body.len() as u32);
                out.put_slice(&r.body);
            }
        }
        out.freeze()
    }

    /// Reads the binary form back.
    pub fn decode(mut bytes: &[u8]) -> Result<Self, DecodeError> {
        let need = |b: &[u8], n: usize| {
            if b.remaining() < n {
                Err(DecodeError("truncated"))
            } else {
                Ok(())
            }
        };
        need(bytes, 4)?;
        if bytes.get_u8() != VERSION {
            return Err(DecodeError("unknown version"));
        }
        let kind = bytes.get_u8();
        let status =
            StatusCode::from_u16(bytes.get_u16()).map_err(|_| DecodeError("bad status"))?;
        match kind {
            NOT_REPLAYABLE => Ok(Completion::NotReplayable { status }),
            RESPONSE => {
                need(bytes, 4)?;
                let count = bytes.get_u32() as usize;
                let mut headers = HeaderMap::with_capacity(count.min(256));
                for _ in 0..count {
                    need(bytes, 2)?;
                    let n = bytes.get_u16() as usize;
                    need(bytes, n)?;
                    let name = HeaderName::from_bytes(&bytes[..n])
                        .map_err(|_| DecodeError("bad header name"))?;
                    bytes.advance(n);
                    need(bytes, 4)?;
                    let v = bytes.get_u32() as usize;
                    need(bytes, v)?;
                    let value = HeaderValue::from_bytes(&bytes[..v])
                        .map_err(|_| DecodeError("bad header value"))?;
                    bytes.advance(v);
                    headers.append(name, value);
                }
                need(bytes, 4)?;
                let len = bytes.get_u32() as usize;
                need(bytes, len)?;
                let body = Bytes::copy_from_slice(&bytes[..len]);
                if bytes.len() != len {
                    return Err(DecodeError("trailing bytes"));
                }
                Ok(Completion::Response(StoredResponse {
                    status,
                    headers,
                    body,
                }))
            }
            _ => Err(DecodeError("unknown kind")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_garbage() {
        let mut headers = HeaderMap::new();
        headers.append("content-type", HeaderValue::from_static("application/json"));
        headers.append("x-multi", HeaderValue::from_static("a"));
        headers.append("x-multi", HeaderValue::from_static("b"));
        let c = Completion::Response(StoredResponse {
            status: StatusCode::CREATED,
            headers,
            body: Bytes::from_static(b"\x00\xffbinary"),
        });
        let bytes = c.encode();
        assert_eq!(Completion::decode(&bytes).unwrap(), c);
        let n = Completion::NotReplayable {
            status: StatusCode::OK,
        };
        assert_eq!(Completion::decode(&n.encode()).unwrap(), n);
        for cut in 0..bytes.len() {
            assert!(Completion::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut other = bytes.to_vec();
        other[0] = 9;
        assert_eq!(
            Completion::decode(&other),
            Err(DecodeError("unknown version"))
        );
    }
}
