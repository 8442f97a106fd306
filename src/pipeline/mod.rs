//! Standard pipelines: the usual stack of layers in one line, every stage overridable.
//!
//! - [`StandardClientLayer`], for HTTP clients (reqwest, or any `http::Request` client such as
//!   hyper-util's), in the spirit of Microsoft's standard resilience handler, outermost first:
//!   total timeout > retry (with a budget) > circuit breaker per authority > attempt timeout.
//! - [`StandardServerLayer`], for axum routers, outermost first: fallback > circuit breaker
//!   (503; one for the router, or one per route) > timeout (504) > Idempotency-Key (optional),
//!   each answering proper HTTP responses so the router stays `Infallible`.
//!
//! Overrides change what they name and keep every other default. A stage's settings are
//! overridden with a function that receives the pipeline's own default builder for that stage
//! (`.retry(|defaults| defaults.max_attempts(5))`), so the budget, backoff and limits not
//! mentioned stay as the pipeline sets them. Each such stage can also be replaced whole
//! (`replace_retry`, `replace_circuit_breaker`), dropping the pipeline's defaults for it.

use std::fmt;

mod client;
mod server;

pub use client::{ClientBuilder, ClientReload, StandardClient, StandardClientLayer};
#[cfg(feature = "serde")]
pub(crate) use client::{ClientParts, default_breaker, default_retry};
#[cfg(feature = "axum")]
pub use server::PerRoute;
pub use server::{
    IdempotencyStage, IdempotencyStageFuture, IdempotencyStageService, NoFallback, ServerBuilder,
    ServerClassifier, StandardServer, StandardServerLayer,
};

/// A change to a stage builder's settings.
type Override<B> = Box<dyn FnOnce(B) -> B + Send + Sync>;

/// One stage's settings, as a builder call chain records them: an optional whole replacement of
/// the pipeline's defaults, then the overrides made since, applied in order.
struct Stage<B> {
    replaced: Option<B>,
    overrides: Vec<Override<B>>,
}

impl<B> Default for Stage<B> {
    fn default() -> Self {
        Stage {
            replaced: None,
            overrides: Vec::new(),
        }
    }
}

impl<B> Stage<B> {
    fn is_set(&self) -> bool {
        self.replaced.is_some() || !self.overrides.is_empty()
    }

    fn push(&mut self, f: impl FnOnce(B) -> B + Send + Sync + 'static) {
        self.overrides.push(Box::new(f));
    }

    /// Replaces the stage whole: earlier overrides go with the defaults they applied to.
    fn replace(&mut self, builder: B) {
        self.replaced = Some(builder);
        self.overrides.clear();
    }

    /// The replacement (passed through `adopt`) or the defaults, then every override in order.
    fn resolve(self, defaults: impl FnOnce() -> B, adopt: impl FnOnce(B) -> B) -> B {
        let base = match self.replaced {
            Some(b) => adopt(b),
            None => defaults(),
        };
        self.overrides.into_iter().fold(base, |b, f| f(b))
    }
}

impl<B> fmt::Debug for Stage<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let base = if self.replaced.is_some() {
            "replaced"
        } else {
            "defaults"
        };
        write!(f, "{base} + {} override(s)", self.overrides.len())
    }
}
