//! What a completed key holds, and its compact, versioned binary form (for stores that keep
//! bytes, such as Redis).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

/// The outcome stored for a completed key.
#[allow(clippy::large_enum_variant)] // a record, not a hot-path value
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Completion {
    /// The response, replayed byte for byte to later requests with the same key.
    Response(StoredResponse),
    /// The handler ran, but its response could not be kept (too large, or streaming): later
    /// requests get an error, never a second execution.
    NotReplayable {
        /// The status the first caller got.
        status: StatusCode,
    },
    /// The handler started but was cut off part-way (the crate's own timeout inside the layer
    /// cancelled it): it may or may not have taken effect. Later requests get an error, never
    /// the timeout's answer replayed and never a second execution.
    OutcomeUnknown {
        /// The status the first caller got (the timeout's, e.g. 504).
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
    /// The trailers that ended the body, if any (gRPC puts its status there).
    pub trailers: Option<HeaderMap>,
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

/// The version this crate writes. Version 1 had no trailers; it is still read.
const VERSION: u8 = 2;
const RESPONSE: u8 = 1;
const NOT_REPLAYABLE: u8 = 2;
/// Added within version 2: a reader that predates it finds an unknown kind and reports the
/// record unreadable, so the handler still never runs for it.
const OUTCOME_UNKNOWN: u8 = 3;

fn put_headers(out: &mut BytesMut, headers: &HeaderMap) {
    out.put_u32(headers.len() as u32);
    for (name, value) in headers {
        out.put_u16(name.as_str().len() as u16);
        out.put_slice(name.as_str().as_bytes());
        out.put_u32(value.len() as u32);
        out.put_slice(value.as_bytes());
    }
}

/// Takes `n` bytes, or says the record is truncated.
fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Result<&'a [u8], DecodeError> {
    if bytes.len() < n {
        return Err(DecodeError("truncated"));
    }
    let (head, rest) = bytes.split_at(n);
    *bytes = rest;
    Ok(head)
}

fn get_u16(bytes: &mut &[u8]) -> Result<u16, DecodeError> {
    take(bytes, 2).map(|mut b| b.get_u16())
}

fn get_u32(bytes: &mut &[u8]) -> Result<usize, DecodeError> {
    take(bytes, 4).map(|mut b| b.get_u32() as usize)
}

fn get_headers(bytes: &mut &[u8]) -> Result<HeaderMap, DecodeError> {
    let count = get_u32(bytes)?;
    // Each header takes at least 6 bytes: a count beyond what is left is a lie, not a reason
    // to allocate.
    if count > bytes.len() / 6 {
        return Err(DecodeError("header count larger than the record"));
    }
    let mut headers = HeaderMap::with_capacity(count.min(256));
    for _ in 0..count {
        let n = get_u16(bytes)? as usize;
        let name =
            HeaderName::from_bytes(take(bytes, n)?).map_err(|_| DecodeError("bad header name"))?;
        let v = get_u32(bytes)?;
        let value = HeaderValue::from_bytes(take(bytes, v)?)
            .map_err(|_| DecodeError("bad header value"))?;
        headers
            .try_append(name, value)
            .map_err(|_| DecodeError("too many headers"))?;
    }
    Ok(headers)
}

impl Completion {
    /// The binary form: version, kind, status, then (for a response) headers, body and
    /// trailers, each length-prefixed.
    ///
    /// ```
    /// use tower_rampart::idempotency::{Completion, StoredResponse};
    ///
    /// let c = Completion::Response(StoredResponse {
    ///     status: http::StatusCode::CREATED,
    ///     headers: http::HeaderMap::new(),
    ///     body: bytes::Bytes::from_static(b"{\"id\":\"p1\"}"),
    ///     trailers: None,
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
            Completion::OutcomeUnknown { status } => {
                out.put_u8(OUTCOME_UNKNOWN);
                out.put_u16(status.as_u16());
            }
            Completion::Response(r) => {
                out.put_u8(RESPONSE);
                out.put_u16(r.status.as_u16());
                put_headers(&mut out, &r.headers);
                out.put_u32(r.body.len() as u32);
                out.put_slice(&r.body);
                match &r.trailers {
                    None => out.put_u8(0),
                    Some(t) => {
                        out.put_u8(1);
                        put_headers(&mut out, t);
                    }
                }
            }
        }
        out.freeze()
    }

    /// Reads the binary form back (this version's and every earlier one). Never panics: any
    /// input that is not a record is a [`DecodeError`].
    ///
    /// # Errors
    ///
    /// A [`DecodeError`] for input that is not a record this version can read.
    pub fn decode(mut bytes: &[u8]) -> Result<Self, DecodeError> {
        let bytes = &mut bytes;
        let head = take(bytes, 4)?;
        let version = head[0];
        if version == 0 || version > VERSION {
            return Err(DecodeError("unknown version"));
        }
        let kind = head[1];
        let status = StatusCode::from_u16(u16::from_be_bytes([head[2], head[3]]))
            .map_err(|_| DecodeError("bad status"))?;
        let completion = match kind {
            NOT_REPLAYABLE => Completion::NotReplayable { status },
            OUTCOME_UNKNOWN => Completion::OutcomeUnknown { status },
            RESPONSE => {
                let headers = get_headers(bytes)?;
                let len = get_u32(bytes)?;
                let body = Bytes::copy_from_slice(take(bytes, len)?);
                let trailers = match version {
                    1 => None,
                    _ => match take(bytes, 1)?[0] {
                        0 => None,
                        1 => Some(get_headers(bytes)?),
                        _ => return Err(DecodeError("bad trailers flag")),
                    },
                };
                Completion::Response(StoredResponse {
                    status,
                    headers,
                    body,
                    trailers,
                })
            }
            _ => return Err(DecodeError("unknown kind")),
        };
        if !bytes.is_empty() {
            return Err(DecodeError("trailing bytes"));
        }
        Ok(completion)
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
            trailers: Some(HeaderMap::from_iter([(
                HeaderName::from_static("grpc-status"),
                HeaderValue::from_static("0"),
            )])),
        });
        let bytes = c.encode();
        assert_eq!(Completion::decode(&bytes).unwrap(), c);
        let n = Completion::NotReplayable {
            status: StatusCode::OK,
        };
        assert_eq!(Completion::decode(&n.encode()).unwrap(), n);
        let u = Completion::OutcomeUnknown {
            status: StatusCode::GATEWAY_TIMEOUT,
        };
        assert_eq!(&u.encode()[..], &[VERSION, OUTCOME_UNKNOWN, 0x01, 0xf8]);
        assert_eq!(Completion::decode(&u.encode()).unwrap(), u);
        // The records of earlier writers keep their meaning.
        assert_eq!(Completion::decode(&[2, NOT_REPLAYABLE, 0, 200]).unwrap(), n);
        for cut in 0..bytes.len() {
            assert!(Completion::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut other = bytes.to_vec();
        other[0] = 9;
        assert_eq!(
            Completion::decode(&other),
            Err(DecodeError("unknown version"))
        );
        other[0] = 0;
        assert_eq!(
            Completion::decode(&other),
            Err(DecodeError("unknown version"))
        );
    }

    /// Records written by version 1 of the format (no trailers) are still read.
    #[test]
    fn reads_version_1() {
        let mut v1 = vec![1u8, RESPONSE, 0, 201];
        v1.extend_from_slice(&1u32.to_be_bytes());
        v1.extend_from_slice(&12u16.to_be_bytes());
        v1.extend_from_slice(b"content-type");
        v1.extend_from_slice(&4u32.to_be_bytes());
        v1.extend_from_slice(b"text");
        v1.extend_from_slice(&2u32.to_be_bytes());
        v1.extend_from_slice(b"ok");
        let Completion::Response(r) = Completion::decode(&v1).unwrap() else {
            panic!("a response")
        };
        assert_eq!(r.status, StatusCode::CREATED);
        assert_eq!(r.headers["content-type"], "text");
        assert_eq!(r.body, "ok");
        assert_eq!(r.trailers, None);
    }

    /// More headers than a `HeaderMap` can hold is an error, not a panic.
    #[test]
    fn too_many_headers_is_an_error() {
        let mut rec = vec![VERSION, RESPONSE, 0, 200];
        let n = 40_000u32;
        rec.extend_from_slice(&n.to_be_bytes());
        for i in 0..n {
            let name = format!("h{i}");
            rec.extend_from_slice(&(name.len() as u16).to_be_bytes());
            rec.extend_from_slice(name.as_bytes());
            rec.extend_from_slice(&0u32.to_be_bytes());
        }
        rec.extend_from_slice(&0u32.to_be_bytes());
        rec.push(0);
        assert_eq!(
            Completion::decode(&rec),
            Err(DecodeError("too many headers"))
        );
    }
}
