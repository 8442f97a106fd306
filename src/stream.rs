//! Responses whose body a layer follows to its end.
//!
//! A response's head says little about a stream: a gRPC server stream reports its status in the
//! trailers, and an HTTP body can fail or stall after a `200`. Layers that follow the body (the
//! circuit breaker's end-of-stream outcome, body-inclusive timeouts) wrap it through
//! [`WrapBody`], which the crate implements for `http::Response<B>` and, with feature
//! `reqwest`, for `reqwest::Response` (which stays a `reqwest::Response`: its URL, extensions and
//! `content_length()` are kept).
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use tower_rampart::stream::WrapBody;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let res = http::Response::new(Full::new(Bytes::from_static(b"hello")));
//! // A layer wraps the body in its own type; here, one that counts the frames it passes on.
//! let wrapped = res.wrap_body(|body| body.map_frame(|frame| frame));
//! let bytes = wrapped.into_body().collect().await.unwrap().to_bytes();
//! assert_eq!(bytes, "hello");
//! # }
//! ```

/// A response with a body a layer can take out.
pub trait Streamed {
    /// The body as a layer receives it.
    type Body;
}

/// A response whose body can be replaced by a wrapper `W` made from it.
///
/// `http::Response<B>` becomes `http::Response<W>`; `reqwest::Response` (feature `reqwest`)
/// stays a `reqwest::Response` whose body is `W` (which must then be `Send + Sync + 'static`,
/// as `reqwest::Body::wrap` asks).
pub trait WrapBody<W>: Streamed + Sized {
    /// The response with its body wrapped.
    type Output;

    /// Replaces the body with `wrap(body)`; the head (status, headers, extensions) is kept.
    fn wrap_body(self, wrap: impl FnOnce(Self::Body) -> W) -> Self::Output;
}

impl<B> Streamed for http::Response<B> {
    type Body = B;
}

impl<B, W> WrapBody<W> for http::Response<B> {
    type Output = http::Response<W>;

    #[inline]
    fn wrap_body(self, wrap: impl FnOnce(B) -> W) -> http::Response<W> {
        self.map(wrap)
    }
}

#[cfg(feature = "reqwest")]
mod reqwest_response {
    use bytes::Bytes;

    use super::{Streamed, WrapBody};
    use crate::BoxError;

    impl Streamed for reqwest::Response {
        type Body = reqwest::Body;
    }

    impl<W> WrapBody<W> for reqwest::Response
    where
        W: http_body::Body + Send + Sync + 'static,
        W::Data: Into<Bytes>,
        W::Error: Into<BoxError>,
    {
        type Output = reqwest::Response;

        fn wrap_body(self, wrap: impl FnOnce(reqwest::Body) -> W) -> reqwest::Response {
            // The conversion to `http::Response` drops the URL: put it back where
            // `From<http::Response>` looks for it.
            let url = self.url().clone();
            let res: http::Response<reqwest::Body> = self.into();
            let (mut parts, body) = res.into_parts();
            let (with_url, ()) = reqwest::ResponseBuilderExt::url(http::Response::builder(), url)
                .body(())
                .map(http::Response::into_parts)
                .unwrap_or_else(|_| http::Response::new(()).into_parts());
            parts.extensions.extend(with_url.extensions);
            let body = reqwest::Body::wrap(wrap(body));
            reqwest::Response::from(http::Response::from_parts(parts, body))
        }
    }
}

#[cfg(all(test, feature = "reqwest"))]
mod tests {
    use super::WrapBody;

    #[tokio::test]
    async fn a_wrapped_reqwest_response_keeps_its_url_status_headers_and_length() {
        let http = http::Response::builder()
            .status(201)
            .header("x-a", "1")
            .header("content-length", "5")
            .body("hello")
            .unwrap();
        let (mut parts, body) = http.into_parts();
        let (with_url, ()) = reqwest::ResponseBuilderExt::url(
            http::Response::builder(),
            "http://example.test/a?b=1".parse().unwrap(),
        )
        .body(())
        .unwrap()
        .into_parts();
        parts.extensions.extend(with_url.extensions);
        let res = reqwest::Response::from(http::Response::from_parts(parts, body));
        let wrapped = res.wrap_body(|body| body);
        assert_eq!(wrapped.url().as_str(), "http://example.test/a?b=1");
        assert_eq!(wrapped.status(), 201);
        assert_eq!(wrapped.headers()["x-a"], "1");
        assert_eq!(wrapped.content_length(), Some(5));
        assert_eq!(wrapped.bytes().await.unwrap(), "hello");
    }

    #[test]
    fn a_wrapped_http_response_keeps_its_head() {
        let res = http::Response::builder()
            .status(503)
            .header("x-a", "1")
            .body(())
            .unwrap();
        let wrapped = res.wrap_body(|()| 7u8);
        assert_eq!(wrapped.status(), 503);
        assert_eq!(wrapped.headers()["x-a"], "1");
        assert_eq!(*wrapped.body(), 7);
    }
}
