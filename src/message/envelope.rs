use std::collections::BTreeMap;

use bytes::Bytes;

/// A message's headers: names are case-sensitive (AMQP's `x-death`, NATS's `Nats-Msg-Id`), values
/// are text. Brokers' other value types are carried as their text form.
pub type Headers = BTreeMap<String, String>;

/// The longest message id a consumer accepts (a longer one is dead-lettered as poison): ids
/// become inbox keys, and keys are bounded.
pub const MAX_ID_LEN: usize = 255;

/// One message as a consumer hands it to its service.
///
/// ```
/// use tower_rampart::message::Message;
///
/// let msg = Message::new("order-42", "order.placed", r#"{"total":12}"#)
///     .with_header("tenant", "acme")
///     .with_correlation_id("checkout-7");
/// assert_eq!(msg.id(), "order-42");
/// assert_eq!(msg.deliveries(), 1);
/// assert_eq!(msg.headers()["tenant"], "acme");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    id: String,
    kind: String,
    payload: Bytes,
    headers: Headers,
    deliveries: u32,
    correlation_id: Option<String>,
}

impl Message {
    /// A message delivered for the first time.
    pub fn new(id: impl Into<String>, kind: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Message {
            id: id.into(),
            kind: kind.into(),
            payload: payload.into(),
            headers: Headers::new(),
            deliveries: 1,
            correlation_id: None,
        }
    }

    /// The same message with a header added (or replaced).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// The same message with its headers replaced.
    pub fn with_headers(mut self, headers: Headers) -> Self {
        self.headers = headers;
        self
    }

    /// The same message with a correlation id (the business flow it belongs to).
    pub fn with_correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    /// The same message as the broker reports its `n`th delivery (1 is the first; 0 is read
    /// as 1).
    pub fn with_deliveries(mut self, n: u32) -> Self {
        self.deliveries = n.max(1);
        self
    }

    /// The message's id, unique per message at its publisher (the inbox's default key).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// What kind of event or command this is (`order.placed`): the AMQP `type` property, a NATS
    /// subject, or a header of the publisher's choice.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The body, as published.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The headers, as published.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// Mutable access to the headers (a layer adding a trace context, say).
    pub fn headers_mut(&mut self) -> &mut Headers {
        &mut self.headers
    }

    /// Which delivery this is, as the broker counts it: 1 the first time, more after
    /// redeliveries.
    pub fn deliveries(&self) -> u32 {
        self.deliveries
    }

    /// The business flow this message belongs to, if the publisher said.
    pub fn correlation_id(&self) -> Option<&str> {
        self.correlation_id.as_deref()
    }

    /// The parts, to rebuild or republish the message.
    pub fn into_parts(self) -> (String, String, Bytes, Headers, Option<String>) {
        (
            self.id,
            self.kind,
            self.payload,
            self.headers,
            self.correlation_id,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_deliveries_reads_as_the_first() {
        assert_eq!(
            Message::new("a", "k", "").with_deliveries(0).deliveries(),
            1
        );
        assert_eq!(
            Message::new("a", "k", "").with_deliveries(3).deliveries(),
            3
        );
    }
}
