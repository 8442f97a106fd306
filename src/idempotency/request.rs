//! The request phase: which requests the layer takes, their key and scope, their body (read
//! up to a limit) and fingerprint. Nothing here touches the store.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode, request};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::{
    EventKind, Fingerprint, IdempotencyKey,
    instrument::outcome,
    layer::{Options, Scope},
    problem::{problem, problem_types as kind},
};
use crate::{BoxError, replay::Buffered};

/// A keyed request, read and fingerprinted.
pub(crate) struct Keyed {
    pub(crate) parts: request::Parts,
    pub(crate) body: Bytes,
    /// The key as stored: scope, then the client's key.
    pub(crate) key: Arc<str>,
    pub(crate) fingerprint: Fingerprint,
}

/// What the request phase decided.
pub(crate) enum Prepared<B, ResB> {
    /// Not the layer's business (another method, or no key where keys are optional).
    Pass(Request<B>),
    /// Refused before anything ran (400, 413).
    Answer(http::Response<Buffered<ResB>>),
    Keyed(Keyed),
}

/// `{scope length}:{scope}:{key}`, written without the formatting machinery and, for the
/// usual sizes, without a buffer on the heap: a new key's cost counts.
fn scoped(scope: &str, key: &str) -> Arc<str> {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = scope.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let parts = [&digits[at..], b":", scope.as_bytes(), b":", key.as_bytes()];
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut stack = [0u8; 256];
    let mut heap = Vec::new();
    let buf = if len <= stack.len() {
        &mut stack[..len]
    } else {
        heap.resize(len, 0);
        &mut heap[..]
    };
    let mut i = 0;
    for p in parts {
        buf[i..i + p.len()].copy_from_slice(p);
        i += p.len();
    }
    // ASCII digits and colons between two strings: UTF-8.
    Arc::from(std::str::from_utf8(buf).unwrap_or_default())
}

pub(crate) async fn prepare<B, ResB>(options: &Options, req: Request<B>) -> Prepared<B, ResB>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    if !options.methods.contains(req.method()) {
        return Prepared::Pass(req);
    }
    let refuse = |status, event, kind, msg: &str| {
        outcome(options, None, event);
        Prepared::Answer(problem(status, kind, msg, None))
    };
    let key = match IdempotencyKey::from_headers(req.headers()) {
        Ok(Some(k)) => k,
        Ok(None) if options.required => {
            let msg = "this request needs an Idempotency-Key header";
            return refuse(
                StatusCode::BAD_REQUEST,
                EventKind::MissingKey,
                kind::MISSING_KEY,
                msg,
            );
        }
        Ok(None) => return Prepared::Pass(req),
        Err(e) => {
            let msg = e.to_string();
            return refuse(
                StatusCode::BAD_REQUEST,
                EventKind::InvalidKey,
                kind::INVALID_KEY,
                &msg,
            );
        }
    };

    let (parts, body) = req.into_parts();
    let scope = match &options.scope {
        Scope::Global | Scope::Unset => String::new(),
        Scope::By(f) => match f(&parts) {
            Some(scope) => scope,
            None => {
                let msg = "this request has no principal to scope its Idempotency-Key to";
                return refuse(
                    StatusCode::BAD_REQUEST,
                    EventKind::NoPrincipal,
                    kind::NO_PRINCIPAL,
                    msg,
                );
            }
        },
    };
    // The scope is length-prefixed so that no scope and key pair can imitate another.
    let key = scoped(&scope, key.as_str());

    let max = options.max_request_body;
    let too_large = || {
        let msg = format!("the request body is larger than {max} bytes");
        refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            EventKind::TooLarge,
            kind::TOO_LARGE,
            &msg,
        )
    };
    if body.size_hint().lower() > max as u64 {
        return too_large();
    }
    let body = match Limited::new(body, max).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return too_large(),
        Err(e) => {
            let msg = format!("the request body could not be read: {e}");
            let kind = kind::UNREADABLE_BODY;
            return refuse(
                StatusCode::BAD_REQUEST,
                EventKind::UnreadableBody,
                kind,
                &msg,
            );
        }
    };

    let fingerprint = Fingerprint::of(
        &parts.method,
        &parts.uri,
        &parts.headers,
        &options.fingerprint_headers,
        &body,
    );
    Prepared::Keyed(Keyed {
        parts,
        body,
        key,
        fingerprint,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn scoped_keys_are_length_prefixed() {
        assert_eq!(&*super::scoped("", "k-1"), "0::k-1");
        assert_eq!(&*super::scoped("tenant-42", "k"), "9:tenant-42:k");
        let long = "s".repeat(300);
        assert_eq!(&*super::scoped(&long, "k"), format!("300:{long}:k"));
    }
}
