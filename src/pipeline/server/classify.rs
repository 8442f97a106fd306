//! How the server pipeline's breaker judges a response.

use http::HeaderName;

use crate::{
    classify::{Classify, HttpStatus, Outcome, http_refused},
    idempotency::IDEMPOTENT_REPLAYED,
};

/// The server pipeline's breaker classifier: [`HttpStatus`]'s defaults (5xx are failures), and,
/// once the pipeline has an [Idempotency-Key stage](super::ServerBuilder::idempotency), a
/// replayed response (marked `Idempotent-Replayed`) is ignored: the store answered it, not the
/// handler, so it says nothing of the handler's health. Without the stage no response is
/// ignored for that header.
///
/// ```
/// use tower_rampart::{
///     classify::{Classify, Outcome},
///     pipeline::ServerClassifier,
/// };
///
/// let replayed = http::Response::builder()
///     .status(500)
///     .header("idempotent-replayed", "true")
///     .body(())
///     .unwrap();
/// let judge = |c: ServerClassifier| c.classify(Ok::<_, &()>(&replayed));
/// assert_eq!(judge(ServerClassifier::default()), Outcome::FAILURE);
/// assert_eq!(judge(ServerClassifier::default().ignore_replays()), Outcome::Ignore);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerClassifier {
    status: HttpStatus,
    ignore_replays: bool,
}

impl ServerClassifier {
    /// Ignore responses marked `Idempotent-Replayed` (what the Idempotency-Key stage sets).
    pub fn ignore_replays(mut self) -> Self {
        self.ignore_replays = true;
        self
    }
}

const REPLAYED: HeaderName = HeaderName::from_static(IDEMPOTENT_REPLAYED);

impl<B, E> Classify<http::Response<B>, E> for ServerClassifier {
    #[inline]
    fn classify(&self, result: Result<&http::Response<B>, &E>) -> Outcome {
        match result {
            Ok(res) if self.ignore_replays && res.headers().contains_key(REPLAYED) => {
                Outcome::Ignore
            }
            Ok(res) => self.status.classify_status(res.status(), res.headers()),
            Err(_) => Outcome::FAILURE,
        }
    }

    /// A breaker's 503 response (marked in the extensions), as for [`HttpStatus`].
    #[inline]
    fn is_refused(&self, result: Result<&http::Response<B>, &E>) -> bool
    where
        E: 'static,
    {
        http_refused(self, result)
    }
}
