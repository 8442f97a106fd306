//! What a replay carries: the stored response, marked as replayed, without the headers that
//! belong to one caller or one connection.

use http::{HeaderMap, Response, header};

use super::StoredResponse;
use crate::replay::Buffered;

/// Headers worth replaying: never per-caller ones (cookies, auth challenges and results),
/// hop-by-hop ones (including those the `Connection` header names), nor `Date`, which the
/// server sets afresh.
pub(crate) fn replayable(headers: &HeaderMap) -> HeaderMap {
    // One `match`: the compiler picks by length before comparing bytes.
    let never = |n: &str| {
        matches!(
            n,
            "set-cookie"
                | "www-authenticate"
                | "proxy-authenticate"
                | "authentication-info"
                | "proxy-authentication-info"
                | "connection"
                | "keep-alive"
                | "proxy-connection"
                | "te"
                | "trailer"
                | "transfer-encoding"
                | "upgrade"
                | "content-length"
                | "date"
        )
    };
    // Usually nothing goes (`connection` would): a copy as it is hashes no name again.
    if !headers.keys().any(|n| never(n.as_str())) {
        return headers.clone();
    }
    let named: Vec<&str> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut kept = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if !never(name.as_str()) && !named.iter().any(|c| c.eq_ignore_ascii_case(name.as_str())) {
            kept.append(name.clone(), value.clone());
        }
    }
    kept
}

/// A replay of a stored response, marked as such.
pub(crate) fn replay<ResB>(stored: StoredResponse) -> Response<Buffered<ResB>> {
    let mut parts = Response::new(()).into_parts().0;
    parts.status = stored.status;
    parts.headers = stored.headers;
    parts.headers.insert(
        super::IDEMPOTENT_REPLAYED,
        http::HeaderValue::from_static("true"),
    );
    Response::from_parts(
        parts,
        Buffered::full_with_trailers(stored.body, stored.trailers),
    )
}

#[cfg(test)]
mod tests {
    use http::{HeaderMap, HeaderValue};

    use super::replayable;

    #[test]
    fn replays_no_per_caller_or_hop_by_hop_header() {
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("content-type", "application/json"),
            ("x-request-cost", "3"),
            ("x-hop", "1"),
            ("connection", "keep-alive, X-Hop"),
            ("set-cookie", "s=1"),
            ("authentication-info", "nextnonce=\"x\""),
            ("proxy-authentication-info", "a"),
            ("date", "Wed, 02 Dec 2026 07:00:00 GMT"),
            ("www-authenticate", "Bearer"),
            ("transfer-encoding", "chunked"),
            ("content-length", "12"),
        ] {
            h.append(n, HeaderValue::from_static(v));
        }
        let kept = replayable(&h);
        let names: Vec<_> = kept.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-type", "x-request-cost"]);
    }

    #[test]
    fn keeps_every_value_in_order_when_nothing_goes() {
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("content-type", "text/plain"),
            ("x-a", "1"),
            ("x-a", "2"),
            ("link", "<a>"),
        ] {
            h.append(n, HeaderValue::from_static(v));
        }
        let kept = replayable(&h);
        assert_eq!(kept, h);
        let values: Vec<_> = kept.get_all("x-a").iter().collect();
        assert_eq!(values, ["1", "2"]);
        // A `Connection` header alone is enough to filter: it names what else goes.
        h.append("connection", HeaderValue::from_static("x-a"));
        let kept = replayable(&h);
        let names: Vec<_> = kept.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-type", "link"]);
    }
}
