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
    let key: Arc<str> = Arc::from(format!("{}:{scope}:{key}", scope.len()));

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
