//! Between NATS headers (multi-valued, restricted characters) and a message's text headers.

use std::str::FromStr;

use async_nats::{HeaderMap, HeaderName, HeaderValue};

use crate::message::Headers;

/// Every header as text; a name sent more than once is joined with ", " (as HTTP does).
pub(crate) fn from_nats(map: Option<&HeaderMap>) -> Headers {
    let mut out = Headers::new();
    for (name, values) in map.into_iter().flat_map(HeaderMap::iter) {
        let joined = values
            .iter()
            .map(HeaderValue::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        out.insert(name.to_string(), joined);
    }
    out
}

/// The headers as NATS headers, or the first one NATS cannot carry (an empty name, a name with
/// spaces, ':' or non-ASCII, a value with a line break).
pub(crate) fn to_nats_strict<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let n = (!name.is_empty())
            .then(|| HeaderName::from_str(name).ok())
            .flatten()
            .ok_or_else(|| format!("header name {name:?} cannot be sent over NATS"))?;
        let v = HeaderValue::from_str(value)
            .map_err(|_| format!("header {name:?} has a line break, which NATS cannot carry"))?;
        map.insert(n, v);
    }
    Ok(map)
}

/// The headers as NATS headers, mending what NATS cannot carry rather than failing: a dead
/// letter must go out even when an error message has a line break. Names: characters other
/// than visible ASCII (and ':') become '_'; values: line breaks become spaces.
pub(crate) fn to_nats_lossy<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let name: String = if name.is_empty() {
            "_".into()
        } else {
            name.chars()
                .map(|c| {
                    if c.is_ascii_graphic() && c != ':' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect()
        };
        let value = value.replace(['\r', '\n'], " ");
        if let (Ok(n), Ok(v)) = (HeaderName::from_str(&name), HeaderValue::from_str(&value)) {
            map.insert(n, v);
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_valued_headers_are_joined() {
        let mut m = HeaderMap::new();
        m.append("tag", "a");
        m.append("tag", "b");
        assert_eq!(from_nats(Some(&m))["tag"], "a, b");
        assert!(from_nats(None).is_empty());
    }

    #[test]
    fn strict_refuses_and_lossy_mends() {
        assert!(to_nats_strict([("ok", "fine")]).is_ok());
        assert!(to_nats_strict([("bad name", "v")]).is_err());
        assert!(to_nats_strict([("", "v")]).is_err());
        assert!(to_nats_strict([("n", "two\nlines")]).is_err());
        let m = to_nats_lossy([("bad name", "two\r\nlines"), ("é", "v")]);
        assert_eq!(m.get("bad_name").unwrap().as_str(), "two  lines");
        assert_eq!(m.get("_").unwrap().as_str(), "v");
    }
}
