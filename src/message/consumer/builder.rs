//! The consumer's settings, each checked when the consumer is built.

use std::{future::Future, sync::Arc, time::Duration};

use tower_service::Service;

use super::{Consumer, Shared, first_errors::FirstErrors, measures::Metrics};
use crate::{
    BoxError, ConfigError,
    backoff::Backoff,
    classify::{AnyError, Classify},
    message::{DeadLetter, DeadLetterSink, Message, SinkError, Source},
};

const LAYER: &str = "consumer";

/// The most concurrent handlers a consumer accepts.
pub const MAX_CONCURRENCY: usize = 10_000;
/// The most attempts per message a consumer accepts.
pub const MAX_ATTEMPTS: u32 = 1_000;

/// Where a consumer's dead letters go.
pub(crate) enum Route<K> {
    /// Sent to a sink; the original is acked once the sink took it.
    Sink(K),
    /// Rejected to the broker's own dead-lettering.
    Broker,
}

/// The sink type of a consumer whose dead letters go to the broker
/// ([`Builder::dead_letters_to_broker`]), or that has not chosen yet. It takes no letter.
///
/// ```
/// use tower_rampart::message::consumer::NoSink;
///
/// let _ = NoSink;
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSink;

impl DeadLetterSink for NoSink {
    fn send(&self, _: &DeadLetter) -> impl Future<Output = Result<(), SinkError>> + Send {
        std::future::ready(Err(SinkError::new("no dead-letter sink configured")))
    }
}

/// Builds a [`Consumer`]: see [`Consumer::builder`].
///
/// ```
/// use tower_rampart::message::{consumer::Consumer, memory, Message};
///
/// let (_publisher, source) = memory::channel(8);
/// let err = Consumer::builder()
///     .build(source, tower::service_fn(|_: Message| async { Ok::<_, std::io::Error>(()) }))
///     .unwrap_err();
/// assert_eq!(err.setting(), Some("dead_letters"));
/// ```
#[must_use]
pub struct Builder<C = AnyError, K = NoSink> {
    name: Arc<str>,
    concurrency: usize,
    max_attempts: u32,
    shutdown_grace: Duration,
    backoff: Backoff,
    sink_failure_delay: Duration,
    classifier: C,
    route: Option<Route<K>>,
}

impl<C, K> std::fmt::Debug for Builder<C, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("name", &self.name)
            .field("concurrency", &self.concurrency)
            .field("max_attempts", &self.max_attempts)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("backoff", &self.backoff)
            .finish_non_exhaustive()
    }
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            name: Arc::from("consumer"),
            concurrency: 16,
            max_attempts: 5,
            shutdown_grace: Duration::from_secs(30),
            backoff: Backoff::exponential(Duration::from_secs(1))
                .max_delay(Duration::from_secs(300)),
            sink_failure_delay: Duration::from_secs(5),
            classifier: AnyError,
            route: None,
        }
    }
}

impl<C, K> Builder<C, K> {
    /// The consumer's name, the `consumer` label of its metrics (default `consumer`).
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// How many messages are handled at once, 1 to 10,000 (default 16). A source should fetch
    /// as many ahead (its prefetch): the consumer asks for a message only when a slot is free.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// Deliveries per message, as the broker counts them, before a failing message is
    /// dead-lettered, 1 to 1,000 (default 5).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// How long [`Consumer::run_until`] waits, once told to stop, for messages in flight to
    /// settle (default 30 s). Those still running after it are left unsettled: the broker
    /// redelivers them.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// The delay before each redelivery of a failed message when the failure gave no hint of
    /// its own (default exponential from 1 s, doubling, at most 5 min, full jitter). The
    /// `n`th redelivery waits the backoff's `n`th delay.
    pub fn redelivery_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// How long to wait before redelivering a message whose dead letter the sink refused
    /// (default 5 s). The message is never acked until a sink took its letter.
    pub fn sink_failure_delay(mut self, delay: Duration) -> Self {
        self.sink_failure_delay = delay;
        self
    }

    /// What a handler's answer means (default [`AnyError`]: every `Err` a failure). Its
    /// [`Outcome::Ignore`](crate::classify::Outcome::Ignore) dead-letters the message as not
    /// retryable; a failure is redelivered until the last attempt.
    pub fn classifier<C2>(self, classifier: C2) -> Builder<C2, K> {
        Builder {
            name: self.name,
            concurrency: self.concurrency,
            max_attempts: self.max_attempts,
            shutdown_grace: self.shutdown_grace,
            backoff: self.backoff,
            sink_failure_delay: self.sink_failure_delay,
            classifier,
            route: self.route,
        }
    }

    /// Dead letters go to `sink`; the original is acked only once the sink took the letter.
    pub fn dead_letters<K2: DeadLetterSink>(self, sink: K2) -> Builder<C, K2> {
        Builder {
            name: self.name,
            concurrency: self.concurrency,
            max_attempts: self.max_attempts,
            shutdown_grace: self.shutdown_grace,
            backoff: self.backoff,
            sink_failure_delay: self.sink_failure_delay,
            classifier: self.classifier,
            route: Some(Route::Sink(sink)),
        }
    }

    /// Dead letters are rejected to the broker's own dead-lettering ([`Acker::reject`]: a
    /// RabbitMQ queue's `x-dead-letter-exchange`, a NATS `Term`). The letter's reason and
    /// errors are not carried then: prefer a sink where they matter.
    ///
    /// [`Acker::reject`]: crate::message::Acker::reject
    pub fn dead_letters_to_broker(mut self) -> Self {
        self.route = Some(Route::Broker);
        self
    }

    /// The consumer of `source`'s messages, handled by `service`.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the setting: `dead_letters` when no destination was chosen
    /// (messages are never dropped by default), `concurrency` or `max_attempts` out of range,
    /// `shutdown_grace` or `sink_failure_delay` above a year, `name` empty, or the backoff's
    /// own settings ([`Backoff::validate`]).
    pub fn build<Src, S>(
        self,
        source: Src,
        service: S,
    ) -> Result<Consumer<Src, S, C, K>, ConfigError>
    where
        Src: Source,
        S: Service<Message>,
        S::Error: Into<BoxError>,
        C: Classify<S::Response, BoxError>,
        K: DeadLetterSink,
    {
        let field = |f, m: String| Err(ConfigError::field(LAYER, f, m));
        if self.name.is_empty() {
            return field("name", "must not be empty".into());
        }
        if !(1..=MAX_CONCURRENCY).contains(&self.concurrency) {
            return field(
                "concurrency",
                format!(
                    "must be between 1 and {MAX_CONCURRENCY}, got {}",
                    self.concurrency
                ),
            );
        }
        if !(1..=MAX_ATTEMPTS).contains(&self.max_attempts) {
            return field(
                "max_attempts",
                format!(
                    "must be between 1 and {MAX_ATTEMPTS}, got {}",
                    self.max_attempts
                ),
            );
        }
        ConfigError::check_duration(LAYER, "shutdown_grace", self.shutdown_grace)?;
        ConfigError::check_duration(LAYER, "sink_failure_delay", self.sink_failure_delay)?;
        self.backoff.validate()?;
        let Some(route) = self.route else {
            return field(
                "dead_letters",
                "must be chosen: `.dead_letters(sink)` or `.dead_letters_to_broker()` \
                 (a message is never dropped by default)"
                    .into(),
            );
        };
        Ok(Consumer {
            source,
            service,
            shared: Arc::new(Shared {
                metrics: Metrics::new(self.name.clone()),
                name: self.name,
                concurrency: self.concurrency,
                max_attempts: self.max_attempts,
                shutdown_grace: self.shutdown_grace,
                backoff: self.backoff,
                sink_failure_delay: self.sink_failure_delay,
                classifier: self.classifier,
                route,
                first_errors: FirstErrors::default(),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::memory;

    fn svc() -> impl Service<
        Message,
        Response = (),
        Error = BoxError,
        Future = std::future::Ready<Result<(), BoxError>>,
    > {
        struct S;
        impl Service<Message> for S {
            type Response = ();
            type Error = BoxError;
            type Future = std::future::Ready<Result<(), BoxError>>;
            fn poll_ready(
                &mut self,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Result<(), BoxError>> {
                std::task::Poll::Ready(Ok(()))
            }
            fn call(&mut self, _: Message) -> Self::Future {
                std::future::ready(Ok(()))
            }
        }
        S
    }

    fn refused(b: Builder) -> Option<&'static str> {
        let (_p, s) = memory::channel(1);
        b.build(s, svc()).err().and_then(|e| e.setting())
    }

    #[test]
    fn every_number_is_checked() {
        let b = || Builder::default().dead_letters_to_broker();
        assert_eq!(refused(Builder::default()), Some("dead_letters"));
        assert_eq!(refused(b()), None);
        assert_eq!(refused(b().concurrency(0)), Some("concurrency"));
        assert_eq!(refused(b().concurrency(10_001)), Some("concurrency"));
        assert_eq!(refused(b().concurrency(10_000)), None);
        assert_eq!(refused(b().max_attempts(0)), Some("max_attempts"));
        assert_eq!(refused(b().max_attempts(1_001)), Some("max_attempts"));
        assert_eq!(
            refused(b().shutdown_grace(Duration::MAX)),
            Some("shutdown_grace")
        );
        assert_eq!(
            refused(b().sink_failure_delay(Duration::MAX)),
            Some("sink_failure_delay")
        );
        assert_eq!(refused(b().name("")), Some("name"));
        assert_eq!(
            refused(b().redelivery_backoff(Backoff::exponential(Duration::ZERO))),
            Some("initial_delay")
        );
    }
}
