//! Between AMQP deliveries and [`Message`]s: properties, header tables rendered as text, and the
//! delivery count.

use std::fmt::Write as _;

use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable, LongString, ShortString},
};

use super::{DELIVERIES_HEADER, QUORUM_DELIVERY_COUNT};
use crate::message::{Headers, MAX_ID_LEN, Message};

/// Nested tables deeper than this are cut (rendered as `"..."`): a hostile header cannot
/// overflow our stack.
const MAX_DEPTH: usize = 16;

/// The message a delivery carries, or why it cannot be read as one (with a placeholder id).
pub(crate) fn to_message(
    routing_key: &str,
    redelivered: bool,
    props: &BasicProperties,
    payload: bytes::Bytes,
) -> (Message, Option<String>) {
    let table = props.headers().as_ref();
    let headers = table.map(render_table).unwrap_or_default();
    let kind = match props.kind() {
        Some(k) if !k.as_str().is_empty() => k.as_str().to_owned(),
        _ => routing_key.to_owned(),
    };
    let (id, poison) = match props.message_id() {
        Some(id) if id.as_str().len() > MAX_ID_LEN => (
            placeholder(),
            Some(format!("message id longer than {MAX_ID_LEN} bytes")),
        ),
        Some(id) if !id.as_str().is_empty() => (id.as_str().to_owned(), None),
        Some(_) => (placeholder(), Some("empty message_id property".to_owned())),
        None => (placeholder(), Some("no message_id property".to_owned())),
    };
    let mut msg = Message::new(id, kind, payload)
        .with_headers(headers)
        .with_deliveries(deliveries(table, redelivered));
    if let Some(c) = props.correlation_id() {
        msg = msg.with_correlation_id(c.as_str());
    }
    (msg, poison)
}

/// An id for a message that has none, unique so that two of them never share an inbox key.
fn placeholder() -> String {
    format!("unreadable-{}", uuid::Uuid::new_v4())
}

/// Which delivery this is: ours (`x-rampart-deliveries`, set when we republished it for a
/// delayed redelivery, else 1) plus the broker's redeliveries since (quorum queues count them in
/// `x-delivery-count`; classic queues only say "redelivered", counted as one).
pub(crate) fn deliveries(table: Option<&FieldTable>, redelivered: bool) -> u32 {
    let ours = table
        .and_then(|t| t.inner().get(DELIVERIES_HEADER))
        .and_then(as_count)
        .unwrap_or(1)
        .max(1);
    let broker = match table.and_then(|t| t.inner().get(QUORUM_DELIVERY_COUNT)) {
        Some(v) => as_count(v).unwrap_or(u32::from(redelivered)),
        None => u32::from(redelivered),
    };
    ours.saturating_add(broker)
}

/// A count header as a number, whichever integer type or text the writer used.
fn as_count(v: &AMQPValue) -> Option<u32> {
    let n: i128 = match v {
        AMQPValue::ShortShortInt(n) => (*n).into(),
        AMQPValue::ShortShortUInt(n) => (*n).into(),
        AMQPValue::ShortInt(n) => (*n).into(),
        AMQPValue::ShortUInt(n) => (*n).into(),
        AMQPValue::LongInt(n) => (*n).into(),
        AMQPValue::LongUInt(n) => (*n).into(),
        AMQPValue::LongLongInt(n) => (*n).into(),
        AMQPValue::ShortString(s) => s.as_str().trim().parse().ok()?,
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes())
            .ok()?
            .trim()
            .parse()
            .ok()?,
        _ => return None,
    };
    Some(u32::try_from(n.max(0)).unwrap_or(u32::MAX))
}

/// An AMQP header table as text headers: strings as they are, numbers and booleans as Rust
/// prints them, binary as lowercase hex, arrays and tables as JSON.
pub(crate) fn render_table(table: &FieldTable) -> Headers {
    table
        .inner()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), render(v)))
        .collect()
}

/// One header value as text (top level: strings unquoted).
pub(crate) fn render(v: &AMQPValue) -> String {
    match v {
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::LongString(s) => match std::str::from_utf8(s.as_bytes()) {
            Ok(text) => text.to_owned(),
            Err(_) => hex(s.as_bytes()),
        },
        AMQPValue::ByteArray(b) => hex(b.as_slice()),
        AMQPValue::Void => String::new(),
        AMQPValue::Float(f) => f.to_string(),
        AMQPValue::Double(f) => f.to_string(),
        other => {
            let mut out = String::new();
            json(other, &mut out, 0);
            out
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// `v` as JSON into `out`.
fn json(v: &AMQPValue, out: &mut String, depth: usize) {
    if depth > MAX_DEPTH {
        out.push_str("\"...\"");
        return;
    }
    match v {
        AMQPValue::Boolean(b) => {
            let _ = write!(out, "{b}");
        }
        AMQPValue::ShortShortInt(n) => number(out, n),
        AMQPValue::ShortShortUInt(n) => number(out, n),
        AMQPValue::ShortInt(n) => number(out, n),
        AMQPValue::ShortUInt(n) => number(out, n),
        AMQPValue::LongInt(n) => number(out, n),
        AMQPValue::LongUInt(n) => number(out, n),
        AMQPValue::LongLongInt(n) => number(out, n),
        AMQPValue::Timestamp(n) => number(out, n),
        AMQPValue::Float(f) if f.is_finite() => number(out, f),
        AMQPValue::Double(f) if f.is_finite() => number(out, f),
        AMQPValue::Float(f) => string(out, &f.to_string()),
        AMQPValue::Double(f) => string(out, &f.to_string()),
        AMQPValue::DecimalValue(d) => out.push_str(&decimal(d.value, d.scale)),
        AMQPValue::ShortString(_) | AMQPValue::LongString(_) | AMQPValue::ByteArray(_) => {
            string(out, &render(v))
        }
        AMQPValue::Void => out.push_str("null"),
        AMQPValue::FieldArray(a) => {
            out.push('[');
            for (i, item) in a.as_slice().iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                json(item, out, depth + 1);
            }
            out.push(']');
        }
        AMQPValue::FieldTable(t) => {
            out.push('{');
            for (i, (k, item)) in t.inner().iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                string(out, k.as_str());
                out.push(':');
                json(item, out, depth + 1);
            }
            out.push('}');
        }
    }
}

fn number(out: &mut String, n: impl std::fmt::Display) {
    let _ = write!(out, "{n}");
}

/// A JSON string literal.
fn string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `value / 10^scale` in decimal notation, by moving the point (no arithmetic to overflow).
fn decimal(value: u32, scale: u8) -> String {
    let digits = value.to_string();
    let scale = usize::from(scale);
    if scale == 0 {
        return digits;
    }
    if digits.len() > scale {
        let (int, frac) = digits.split_at(digits.len() - scale);
        format!("{int}.{frac}")
    } else {
        format!("0.{}{digits}", "0".repeat(scale - digits.len()))
    }
}

/// A text value as an AMQP short string, or an error naming what it is (AMQP caps property
/// values and header names at 255 bytes).
pub(crate) fn short(what: &str, value: &str) -> Result<ShortString, String> {
    ShortString::try_new(value)
        .map_err(|_| format!("{what} is {} bytes, AMQP allows 255", value.len()))
}

/// The properties a message is published with: persistent, `message_id`, `type`,
/// `correlation_id`, headers as long strings, the time.
pub(crate) fn properties(msg: &Message, headers: &Headers) -> Result<BasicProperties, String> {
    let mut table = FieldTable::default();
    for (k, v) in headers {
        table.insert(
            short("header name", k)?,
            AMQPValue::LongString(LongString::from(v.as_bytes())),
        );
    }
    let mut props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(short("message id", msg.id())?)
        .with_type(short("message kind", msg.kind())?)
        .with_headers(table);
    if let Some(c) = msg.correlation_id() {
        props = props.with_correlation_id(short("correlation id", c)?);
    }
    if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        props = props.with_timestamp(now.as_secs());
    }
    Ok(props)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{ByteArray, DecimalValue, FieldArray};

    fn table(entries: Vec<(&str, AMQPValue)>) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in entries {
            t.insert(k.into(), v);
        }
        t
    }

    #[test]
    fn headers_render_as_text_nested_and_binary_included() {
        let death = table(vec![
            ("count", AMQPValue::LongLongInt(2)),
            ("queue", AMQPValue::LongString("q.retry".into())),
        ]);
        let t = table(vec![
            ("s", AMQPValue::LongString("acme".into())),
            (
                "bin",
                AMQPValue::ByteArray(ByteArray::from(vec![0u8, 0xff])),
            ),
            (
                "raw",
                AMQPValue::LongString(LongString::from(vec![0xffu8, 0x01])),
            ),
            ("b", AMQPValue::Boolean(true)),
            ("n", AMQPValue::LongInt(-3)),
            ("f", AMQPValue::Double(f64::NAN)),
            (
                "d",
                AMQPValue::DecimalValue(DecimalValue {
                    scale: 3,
                    value: 12,
                }),
            ),
            (
                "x-death",
                AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
            ),
            ("v", AMQPValue::Void),
        ]);
        let h = render_table(&t);
        assert_eq!(h["s"], "acme");
        assert_eq!(h["bin"], "00ff");
        assert_eq!(h["raw"], "ff01");
        assert_eq!(h["b"], "true");
        assert_eq!(h["n"], "-3");
        assert_eq!(h["f"], "NaN");
        assert_eq!(h["d"], "0.012");
        assert_eq!(h["x-death"], r#"[{"count":2,"queue":"q.retry"}]"#);
        assert_eq!(h["v"], "");
        assert_eq!(decimal(12345, 2), "123.45");
        assert_eq!(decimal(7, 255).len(), 257);
    }

    #[test]
    fn deep_nesting_is_cut_not_a_stack_overflow() {
        let mut v = AMQPValue::Void;
        for _ in 0..10_000 {
            v = AMQPValue::FieldArray(FieldArray::from(vec![v]));
        }
        let s = render(&v);
        assert!(s.contains("\"...\""));
        // Dropping 10,000 nested values recurses in their destructor: not ours to bound.
        std::mem::forget(v);
    }

    #[test]
    fn delivery_counts_combine_ours_and_the_brokers() {
        assert_eq!(deliveries(None, false), 1);
        assert_eq!(deliveries(None, true), 2);
        let quorum = table(vec![(QUORUM_DELIVERY_COUNT, AMQPValue::LongLongInt(2))]);
        assert_eq!(deliveries(Some(&quorum), true), 3);
        let ours = table(vec![(DELIVERIES_HEADER, AMQPValue::LongLongInt(3))]);
        assert_eq!(deliveries(Some(&ours), false), 3);
        assert_eq!(deliveries(Some(&ours), true), 4);
        let text = table(vec![(DELIVERIES_HEADER, AMQPValue::LongString("5".into()))]);
        assert_eq!(deliveries(Some(&text), false), 5);
        let junk = table(vec![(DELIVERIES_HEADER, AMQPValue::LongLongInt(-9))]);
        assert_eq!(deliveries(Some(&junk), false), 1);
        let huge = table(vec![
            (DELIVERIES_HEADER, AMQPValue::LongLongInt(i64::MAX)),
            (QUORUM_DELIVERY_COUNT, AMQPValue::LongLongInt(i64::MAX)),
        ]);
        assert_eq!(deliveries(Some(&huge), true), u32::MAX);
    }

    #[test]
    fn a_delivery_without_an_id_is_unreadable_with_a_placeholder() {
        let props = BasicProperties::default();
        let (msg, poison) = to_message("orders", false, &props, "x".into());
        assert!(poison.unwrap().contains("message_id"));
        assert!(msg.id().starts_with("unreadable-"));
        assert_eq!(msg.kind(), "orders");
        let props = BasicProperties::default()
            .with_message_id("m1".into())
            .with_type("order.placed".into())
            .with_correlation_id("c".into());
        let (msg, poison) = to_message("orders", false, &props, "x".into());
        assert!(poison.is_none());
        assert_eq!(
            (msg.id(), msg.kind(), msg.correlation_id()),
            ("m1", "order.placed", Some("c"))
        );
    }

    #[test]
    fn over_long_values_are_errors_not_panics() {
        let long = "k".repeat(256);
        let msg = Message::new(long.clone(), "k", "");
        assert!(
            properties(&msg, &Headers::new())
                .unwrap_err()
                .contains("message id")
        );
        let msg = Message::new("id", "k", "");
        let mut h = Headers::new();
        h.insert(long, "v".into());
        assert!(properties(&msg, &h).unwrap_err().contains("header name"));
    }
}
