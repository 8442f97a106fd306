use std::time::Duration;

use crate::ConfigError;

const LAYER: &str = "NATS JetStream source";

/// The most pull requests one source keeps waiting at the server: JetStream's default
/// `max_waiting` for a pull consumer is 512, and the server refuses requests beyond it.
pub const MAX_CONCURRENCY: usize = 512;

/// How a [`JetStreamSource`](super::JetStreamSource) binds its durable pull consumer and pulls
/// from it. Built by [`JetStreamConfig::builder`], which checks every setting.
///
/// ```
/// use std::time::Duration;
/// use tower_rampart::message::nats::JetStreamConfig;
///
/// let config = JetStreamConfig::builder("ORDERS", "billing")
///     .filter_subject("orders.>")
///     .ack_wait(Duration::from_secs(30))
///     .max_deliver(20)
///     .concurrency(8)
///     .build()
///     .unwrap();
/// assert_eq!(config.concurrency(), 8);
///
/// let err = JetStreamConfig::builder("ORDERS", "billing").concurrency(0).build().unwrap_err();
/// assert_eq!(err.setting(), Some("concurrency"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JetStreamConfig {
    pub(crate) stream: String,
    pub(crate) durable: String,
    pub(crate) filter_subject: Option<String>,
    pub(crate) ack_wait: Duration,
    pub(crate) max_deliver: Option<u32>,
    pub(crate) concurrency: usize,
    pub(crate) pull_expires: Duration,
    pub(crate) api_prefix: String,
}

impl JetStreamConfig {
    /// Settings for the durable consumer `durable` on the existing stream `stream`: AckWait 30 s,
    /// no MaxDeliver limit, concurrency 1, pull requests that wait 30 s.
    pub fn builder(
        stream: impl Into<String>,
        durable: impl Into<String>,
    ) -> JetStreamConfigBuilder {
        JetStreamConfigBuilder {
            config: JetStreamConfig {
                stream: stream.into(),
                durable: durable.into(),
                filter_subject: None,
                ack_wait: Duration::from_secs(30),
                max_deliver: None,
                concurrency: 1,
                pull_expires: Duration::from_secs(30),
                api_prefix: "$JS.API".into(),
            },
        }
    }

    /// The stream's name.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The durable consumer's name.
    pub fn durable(&self) -> &str {
        &self.durable
    }

    /// How long the server waits for a settlement before delivering again.
    pub fn ack_wait(&self) -> Duration {
        self.ack_wait
    }

    /// The most deliveries of one message, if limited.
    pub fn max_deliver(&self) -> Option<u32> {
        self.max_deliver
    }

    /// The most messages delivered and not yet settled through this source.
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }
}

/// Builds a [`JetStreamConfig`], checking each setting in [`build`](Self::build).
#[derive(Debug, Clone)]
pub struct JetStreamConfigBuilder {
    config: JetStreamConfig,
}

impl JetStreamConfigBuilder {
    /// Only messages on these subjects (wildcards allowed); by default every subject of the
    /// stream.
    pub fn filter_subject(mut self, subject: impl Into<String>) -> Self {
        self.config.filter_subject = Some(subject.into());
        self
    }

    /// How long the server waits for an ack, nak or term before it delivers the message again
    /// (default 30 s). Longer than your handler's slowest run, or a slow message is processed
    /// twice at once.
    pub fn ack_wait(mut self, wait: Duration) -> Self {
        self.config.ack_wait = wait;
        self
    }

    /// The most times the server delivers one message (default: no limit). Past it the server
    /// drops the message to an advisory, without a dead letter: keep it above the consumer's
    /// attempt limit so that the consumer dead-letters first.
    pub fn max_deliver(mut self, n: u32) -> Self {
        self.config.max_deliver = Some(n);
        self
    }

    /// The most messages this source has delivered and not yet settled, pull requests
    /// included (default 1): set it to the consumer's concurrency. At most
    /// [`MAX_CONCURRENCY`].
    pub fn concurrency(mut self, n: usize) -> Self {
        self.config.concurrency = n;
        self
    }

    /// How long one pull request waits at the server for a message before it is renewed
    /// (default 30 s, at least 100 ms, at most one hour).
    pub fn pull_expires(mut self, expires: Duration) -> Self {
        self.config.pull_expires = expires;
        self
    }

    /// The JetStream API prefix, when the context uses a domain or an imported account
    /// (default `$JS.API`; domain `hub` is `$JS.hub.API`).
    pub fn api_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.config.api_prefix = prefix.into();
        self
    }

    /// The settings, or the first one that is out of range.
    pub fn build(self) -> Result<JetStreamConfig, ConfigError> {
        let c = self.config;
        name("stream", &c.stream)?;
        name("durable", &c.durable)?;
        if let Some(f) = c
            .filter_subject
            .as_ref()
            .filter(|f| f.is_empty() || f.contains(char::is_whitespace))
        {
            return Err(ConfigError::field(
                LAYER,
                "filter_subject",
                format!("must be a subject without spaces, got {f:?}"),
            ));
        }
        if c.ack_wait < Duration::from_millis(1) {
            return Err(ConfigError::field(
                LAYER,
                "ack_wait",
                "must be at least 1 ms",
            ));
        }
        ConfigError::check_duration(LAYER, "ack_wait", c.ack_wait)?;
        if c.max_deliver == Some(0) {
            return Err(ConfigError::field(
                LAYER,
                "max_deliver",
                "must be at least 1",
            ));
        }
        if c.concurrency == 0 || c.concurrency > MAX_CONCURRENCY {
            return Err(ConfigError::field(
                LAYER,
                "concurrency",
                format!(
                    "must be between 1 and {MAX_CONCURRENCY}, got {}",
                    c.concurrency
                ),
            ));
        }
        if c.pull_expires < Duration::from_millis(100) || c.pull_expires > Duration::from_secs(3600)
        {
            return Err(ConfigError::field(
                LAYER,
                "pull_expires",
                format!(
                    "must be between 100 ms and one hour, got {} ms",
                    c.pull_expires.as_millis()
                ),
            ));
        }
        if c.api_prefix.is_empty() || c.api_prefix.contains(char::is_whitespace) {
            return Err(ConfigError::field(
                LAYER,
                "api_prefix",
                format!(
                    "must be a subject prefix without spaces, got {:?}",
                    c.api_prefix
                ),
            ));
        }
        Ok(c)
    }
}

/// Stream and consumer names become subject tokens: no dots, wildcards or spaces.
fn name(field: &'static str, value: &str) -> Result<(), ConfigError> {
    if value.is_empty()
        || value.len() > 255
        || value.contains(|c: char| matches!(c, '.' | '*' | '>' | '/' | '\\') || c.is_whitespace())
    {
        return Err(ConfigError::field(
            LAYER,
            field,
            format!(
                "must be 1 to 255 characters without '.', '*', '>', slashes or spaces, got {value:?}"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setting(b: JetStreamConfigBuilder) -> Option<&'static str> {
        b.build().unwrap_err().setting()
    }

    #[test]
    fn every_setting_is_checked() {
        let b = || JetStreamConfig::builder("S", "d");
        assert!(b().build().is_ok());
        assert_eq!(
            setting(JetStreamConfig::builder("a.b", "d")),
            Some("stream")
        );
        assert_eq!(setting(JetStreamConfig::builder("S", "")), Some("durable"));
        assert_eq!(setting(b().filter_subject("a b")), Some("filter_subject"));
        assert_eq!(setting(b().ack_wait(Duration::ZERO)), Some("ack_wait"));
        assert_eq!(setting(b().ack_wait(Duration::MAX)), Some("ack_wait"));
        assert_eq!(setting(b().max_deliver(0)), Some("max_deliver"));
        assert_eq!(setting(b().concurrency(0)), Some("concurrency"));
        assert_eq!(
            setting(b().concurrency(MAX_CONCURRENCY + 1)),
            Some("concurrency")
        );
        assert_eq!(
            setting(b().pull_expires(Duration::from_millis(99))),
            Some("pull_expires")
        );
        assert_eq!(
            setting(b().pull_expires(Duration::MAX)),
            Some("pull_expires")
        );
        assert_eq!(setting(b().api_prefix("")), Some("api_prefix"));
    }
}
