//! One outcome vocabulary for every layer: was a call a success, a failure, or neither?
//!
//! The circuit breaker, retry and fallback layers ask a [`Classify`] implementation what a
//! finished call meant, and the retry layer also asks it whether the call was a circuit
//! breaker's refusal ([`Classify::is_refused`]), whichever way the breaker answered: a
//! [`CircuitOpen`](crate::circuit_breaker::CircuitOpen) error, or the 503 response of a breaker
//! in `respond_http` mode, which carries the `CircuitOpen` in its extensions
//! ([`breaker_refusal`]). Ready-made classifiers cover the common cases:
//!
//! | classifier | for | failures by default |
//! |---|---|---|
//! | [`AnyError`] | any service | every `Err` |
//! | [`HttpStatus`] | `http::Response<B>` | every `Err`, 5xx, 408, 429 |
//! | [`GrpcResponse`] | gRPC over `http::Response<B>` | every `Err`, `grpc-status` in [`GrpcCodes::default`] |
//! | `TonicStatus` (feature `tonic`) | `Result<T, tonic::Status>` | codes in [`GrpcCodes::default`] |
//! | [`ClassifyFn`] | your own rule | whatever the closure says |
//! | [`ByName`] | any of the above, narrowed | the base's failures, narrowed by error names ([`ErrorNames`]): only those listed, never those listed |
//!
//! ```
//! use tower_rampart::classify::{Classify, HttpStatus, Outcome};
//!
//! let classifier = HttpStatus::default();
//! let ok = http::Response::builder().status(404).body(()).unwrap();
//! let busy = http::Response::builder().status(503).header("retry-after", "7").body(()).unwrap();
//! assert_eq!(classifier.classify(Ok::<_, &()>(&ok)), Outcome::Success);
//! assert_eq!(
//!     classifier.classify(Ok::<_, &()>(&busy)),
//!     Outcome::failure_with_retry_after(std::time::Duration::from_secs(7)),
//! );
//! ```

/// `Classify<http::Response<B>, E>` for `$classifier`, whose inherent method `$head(status,
/// headers)` classifies a response head: every `Err` is a failure, and refusals are
/// [`http_refused`]'s. The end of the body is judged by the inherent methods
/// `waits_for_end(head, status, headers)` and `end_outcome(head, end)`.
macro_rules! classify_http_response {
    ($classifier:ty, $head:ident) => {
        impl<B, E> super::Classify<http::Response<B>, E> for $classifier {
            #[inline]
            fn classify(&self, result: Result<&http::Response<B>, &E>) -> super::Outcome {
                match result {
                    Ok(res) => self.$head(res.status(), res.headers()),
                    Err(_) => super::Outcome::FAILURE,
                }
            }

            /// The answer's `grpc-status` if its head has one, else its HTTP status.
            fn error_type(
                &self,
                result: Result<&http::Response<B>, &E>,
            ) -> Option<std::borrow::Cow<'static, str>> {
                let res = result.ok()?;
                Some(super::error_type_of(res.status(), res.headers()))
            }

            #[inline]
            fn follows_body(&self, head: &super::Outcome, res: &http::Response<B>) -> bool {
                self.waits_for_end(head, res.status(), res.headers())
            }

            #[inline]
            fn classify_end(
                &self,
                head: super::Outcome,
                end: super::BodyEnd<'_>,
            ) -> super::Outcome {
                self.end_outcome(head, end)
            }

            /// A breaker's `CircuitOpen` error, or its 503 response (marked in the extensions).
            #[inline]
            fn is_refused(&self, result: Result<&http::Response<B>, &E>) -> bool
            where
                E: 'static,
            {
                super::http_refused(self, result)
            }
        }
    };
}

mod grpc;
mod http_status;
pub(crate) mod names;
mod retry_after;

use std::time::Duration;

#[cfg(feature = "tonic")]
pub use grpc::TonicStatus;
pub use grpc::{GrpcCode, GrpcCodes, GrpcResponse};
pub use http_status::{HttpStatus, StatusSet};
pub use names::{ByName, ErrorNames, InspectResponse, LiveNames, NameSet, NamedError, UnknownName};
pub use retry_after::{parse_grpc_pushback, parse_retry_after};

/// What a finished call meant to a resilience layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The call worked.
    Success,
    /// The call failed. `retry_after` carries the downstream's own hint (an HTTP `Retry-After`, a
    /// gRPC push-back) when it gave one.
    Failure {
        /// How long the downstream asked callers to wait, if it said.
        retry_after: Option<Duration>,
    },
    /// The call counts as neither (e.g. a client error that says nothing about the downstream's
    /// health).
    Ignore,
}

impl Outcome {
    /// A failure with no hint.
    pub const FAILURE: Outcome = Outcome::Failure { retry_after: None };

    /// A failure carrying the downstream's retry-after hint.
    pub const fn failure_with_retry_after(retry_after: Duration) -> Self {
        Outcome::Failure {
            retry_after: Some(retry_after),
        }
    }

    /// True for [`Outcome::Failure`].
    pub const fn is_failure(&self) -> bool {
        matches!(self, Outcome::Failure { .. })
    }

    /// The failure's retry-after hint, if any.
    pub const fn retry_after(&self) -> Option<Duration> {
        match self {
            Outcome::Failure { retry_after } => *retry_after,
            _ => None,
        }
    }
}

/// Decides what a finished call meant.
///
/// Implementations are cloned into every response future, so keep them cheap to clone (a unit
/// struct, a few words, or an `Arc`).
///
/// ```
/// use tower_rampart::classify::{Classify, Outcome};
///
/// #[derive(Clone)]
/// struct NegativeIsFailure;
///
/// impl Classify<i32, std::io::Error> for NegativeIsFailure {
///     fn classify(&self, result: Result<&i32, &std::io::Error>) -> Outcome {
///         match result {
///             Ok(n) if *n >= 0 => Outcome::Success,
///             _ => Outcome::FAILURE,
///         }
///     }
/// }
///
/// assert_eq!(NegativeIsFailure.classify(Ok(&-1)), Outcome::FAILURE);
/// ```
pub trait Classify<Res, Err> {
    /// Classifies one finished call.
    fn classify(&self, result: Result<&Res, &Err>) -> Outcome;

    /// What a failed call was, for traces (OpenTelemetry's `error.type`): the HTTP status of a
    /// response (`"503"`), the `grpc-status` of a gRPC answer (`"14"`). Asked only when a layer
    /// records a failure in a span. `None`, the default, leaves it to the layer: the error's
    /// type name, `circuit_open` for a refusal, `_OTHER` for a response.
    ///
    /// ```
    /// use tower_rampart::classify::{Classify, HttpStatus};
    ///
    /// let busy = http::Response::builder().status(503).body(()).unwrap();
    /// let named = HttpStatus::default().error_type(Ok::<_, &()>(&busy));
    /// assert_eq!(named.as_deref(), Some("503"));
    /// ```
    fn error_type(&self, result: Result<&Res, &Err>) -> Option<std::borrow::Cow<'static, str>> {
        let _ = result;
        None
    }

    /// The classifier one call uses from its start to its end. A layer that judges several
    /// outcomes of one call (the retry layer, one per attempt) takes it when the call starts,
    /// so that every attempt is judged by the same rules, as it follows one retry policy.
    ///
    /// By default a clone. A classifier whose rules may change while it runs returns one that
    /// keeps the rules current now: [`ByName::live`] keeps the error names it has when the call
    /// starts, whatever a reload sets meanwhile.
    ///
    /// ```
    /// use tower_rampart::classify::{ByName, Classify, ErrorNames, HttpStatus, LiveNames, Outcome};
    ///
    /// let names = ErrorNames::default();
    /// let lists = LiveNames::new(Some(names.compile(&["503"]).unwrap()), None);
    /// let live = ByName::live(HttpStatus::default(), lists.clone());
    /// let one_call = Classify::<http::Response<()>, ()>::for_call(&live);
    /// lists.set(Some(names.compile(&["502"]).unwrap()), None);
    /// let res = http::Response::builder().status(503).body(()).unwrap();
    /// let k = |c: &ByName<HttpStatus>| c.classify(Ok::<_, &()>(&res));
    /// assert_eq!(k(&one_call), Outcome::FAILURE, "the names it started with");
    /// assert_eq!(k(&live), Outcome::Ignore, "the new names");
    /// ```
    #[inline]
    fn for_call(&self) -> Self
    where
        Self: Clone + Sized,
    {
        self.clone()
    }

    /// Whether the outcome of a call answered with `response` waits for the end of the
    /// response's body, `head` being what [`classify`](Self::classify) made of the head. A
    /// layer that follows bodies (a circuit breaker in `respond_http` mode, or switched with
    /// [`end_of_stream`](crate::circuit_breaker::CircuitBreakerLayer::end_of_stream)) then holds
    /// the call's permit until the body ends and asks [`classify_end`](Self::classify_end).
    ///
    /// By default `false`: the head decides, as for a classifier written before these methods.
    /// [`HttpStatus`] waits when the head is a success (a body that fails after a `200` is a
    /// failure), [`GrpcResponse`] when the head carries no `grpc-status` (the status comes in
    /// the trailers), and [`ByName`] asks its base.
    ///
    /// ```
    /// use tower_rampart::classify::{BodyEnd, Classify, GrpcResponse, Outcome};
    ///
    /// let c = GrpcResponse::default();
    /// let streaming = http::Response::new(());
    /// let head = c.classify(Ok::<_, &()>(&streaming));
    /// let follows = Classify::<http::Response<()>, ()>::follows_body(&c, &head, &streaming);
    /// assert!(follows, "the status is in the trailers");
    /// let mut trailers = http::HeaderMap::new();
    /// trailers.insert("grpc-status", "14".parse().unwrap());
    /// let end =
    ///     Classify::<http::Response<()>, ()>::classify_end(&c, head, BodyEnd::Trailers(&trailers));
    /// assert_eq!(end, Outcome::FAILURE);
    /// ```
    #[inline]
    fn follows_body(&self, head: &Outcome, response: &Res) -> bool {
        let _ = (head, response);
        false
    }

    /// The outcome of a call whose head was classified `head` (and for which
    /// [`follows_body`](Self::follows_body) held) once its body ended as `end`. Never called
    /// under a lock.
    ///
    /// By default a body error is a failure and a clean end (with or without trailers) keeps
    /// the head's outcome.
    #[inline]
    fn classify_end(&self, head: Outcome, end: BodyEnd<'_>) -> Outcome {
        match end {
            BodyEnd::Failed => Outcome::FAILURE,
            BodyEnd::Clean | BodyEnd::Trailers(_) => head,
        }
    }

    /// Whether `error` is a circuit breaker's refusal: "not now" rather than a failed call.
    ///
    /// By default, a [`CircuitOpen`](crate::circuit_breaker::CircuitOpen) error, by itself or
    /// inside a [`BoxError`](crate::BoxError) (how a breaker in error mode returns it).
    /// Override it to recognise the refusals of other breakers. Layers ask
    /// [`is_refused`](Self::is_refused), which calls this for errors.
    fn is_refusal(&self, error: &Err) -> bool
    where
        Err: 'static,
    {
        crate::error::find_error::<crate::circuit_breaker::CircuitOpen, Err>(error).is_some()
    }

    /// Whether a finished call is a circuit breaker's refusal, whatever mode the breaker answered
    /// in: the one question every layer asks. The retry layer never retries a refusal unless
    /// told to ([`retry_circuit_open`](crate::retry::Builder::retry_circuit_open)).
    ///
    /// By default, an error for which [`is_refusal`](Self::is_refusal) holds; a response is never
    /// a refusal. The HTTP and gRPC classifiers ([`HttpStatus`], [`GrpcResponse`]) also recognise
    /// the 503 a breaker in `respond_http` mode answers, by the
    /// [`CircuitOpen`](crate::circuit_breaker::CircuitOpen) in its extensions
    /// ([`breaker_refusal`]); a hand-written classifier of `http::Response`s does the same by
    /// overriding this method with `breaker_refusal`.
    ///
    /// ```
    /// use tower_rampart::{
    ///     circuit_breaker::{CircuitBreakerLayer, Config},
    ///     classify::{Classify, HttpStatus},
    /// };
    /// use tower::{Layer, Service, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let layer = CircuitBreakerLayer::new(Config::builder().build()?).respond_http();
    /// layer.handle().force_open();
    /// let mut svc = layer.layer(tower::service_fn(|_: ()| async {
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
    /// }));
    /// let refused = svc.ready().await?.call(()).await?;
    /// assert_eq!(refused.status(), 503);
    /// assert!(HttpStatus::default().is_refused(Ok::<_, &std::convert::Infallible>(&refused)));
    /// // An ordinary 503 is a failure, not a refusal.
    /// let busy = http::Response::builder().status(503).body(String::new())?;
    /// assert!(!HttpStatus::default().is_refused(Ok::<_, &std::convert::Infallible>(&busy)));
    /// # Ok(())
    /// # }
    /// ```
    #[inline]
    fn is_refused(&self, result: Result<&Res, &Err>) -> bool
    where
        Err: 'static,
    {
        match result {
            Ok(_) => false,
            Err(e) => self.is_refusal(e),
        }
    }
}

/// `error.type` of an HTTP or gRPC answer: its head's `grpc-status`, else its HTTP status.
fn error_type_of(
    status: http::StatusCode,
    headers: &http::HeaderMap,
) -> std::borrow::Cow<'static, str> {
    match headers.get("grpc-status").and_then(|v| v.to_str().ok()) {
        Some(code) => code.to_owned().into(),
        None => status.as_str().to_owned().into(),
    }
}

/// How a response body ended, for [`Classify::classify_end`].
///
/// ```
/// use tower_rampart::classify::BodyEnd;
///
/// let trailers = http::HeaderMap::new();
/// assert!(matches!(BodyEnd::Trailers(&trailers), BodyEnd::Trailers(t) if t.is_empty()));
/// ```
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum BodyEnd<'a> {
    /// The body ended without trailers.
    Clean,
    /// The body ended with these trailers (a gRPC stream's `grpc-status`).
    Trailers(&'a http::HeaderMap),
    /// The body failed: the stream was cut, reset, or its producer failed.
    Failed,
}

/// The breaker's refusal a response carries: a breaker in `respond_http` mode puts its
/// [`CircuitOpen`](crate::circuit_breaker::CircuitOpen) in the extensions of the 503 it answers,
/// so layers outside tell it from a 503 the downstream sent.
///
/// ```
/// use tower_rampart::classify::breaker_refusal;
///
/// let plain = http::Response::builder().status(503).body(()).unwrap();
/// assert!(breaker_refusal(&plain).is_none());
/// ```
#[inline]
pub fn breaker_refusal<B>(
    response: &http::Response<B>,
) -> Option<&crate::circuit_breaker::CircuitOpen> {
    response.extensions().get()
}

/// [`Classify::is_refused`] for `http::Response`s: the breaker's mark on a response, or
/// [`Classify::is_refusal`] on an error.
#[inline]
pub(crate) fn http_refused<C, B, E>(classifier: &C, result: Result<&http::Response<B>, &E>) -> bool
where
    C: Classify<http::Response<B>, E> + ?Sized,
    E: 'static,
{
    match result {
        Ok(res) => breaker_refusal(res).is_some(),
        Err(e) => classifier.is_refusal(e),
    }
}

/// Every `Err` is a failure, every `Ok` a success. The default for services that are not HTTP.
///
/// ```
/// use tower_rampart::classify::{AnyError, Classify, Outcome};
///
/// assert_eq!(AnyError.classify(Ok::<_, &&str>(&1)), Outcome::Success);
/// assert_eq!(AnyError.classify(Err::<&i32, _>(&"boom")), Outcome::FAILURE);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct AnyError;

impl<Res, Err> Classify<Res, Err> for AnyError {
    #[inline]
    fn classify(&self, result: Result<&Res, &Err>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::FAILURE,
        }
    }
}

/// A classifier made from a closure or function.
///
/// ```
/// use tower_rampart::classify::{Classify, ClassifyFn, Outcome};
///
/// let even_is_ok = ClassifyFn::new(|r: Result<&u32, &()>| match r {
///     Ok(n) if n % 2 == 0 => Outcome::Success,
///     Ok(_) => Outcome::Ignore,
///     Err(_) => Outcome::FAILURE,
/// });
/// assert_eq!(even_is_ok.classify(Ok(&3)), Outcome::Ignore);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct ClassifyFn<F>(F);

impl<F> ClassifyFn<F> {
    /// Wraps `f`.
    pub const fn new(f: F) -> Self {
        ClassifyFn(f)
    }
}

impl<F, Res, Err> Classify<Res, Err> for ClassifyFn<F>
where
    F: Fn(Result<&Res, &Err>) -> Outcome,
{
    #[inline]
    fn classify(&self, result: Result<&Res, &Err>) -> Outcome {
        (self.0)(result)
    }
}
