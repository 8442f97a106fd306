//! Table names: validated once, then quoted into every statement (never user text in SQL).

use std::fmt;

use crate::ConfigError;

/// The longest table name part: the index names add a suffix of up to 13 bytes, and
/// PostgreSQL cuts identifiers at 63 bytes (two tables could then share an index name).
const MAX_NAME: usize = 48;
/// PostgreSQL's identifier limit, for the schema part.
const MAX_SCHEMA: usize = 63;

/// The most rows one `purge` call deletes (each call is one statement, one transaction).
const MAX_PURGE_LIMIT: u32 = 1_000_000;

/// A purge's arguments, checked for `layer`: `older_than` at most a year (as microseconds,
/// far inside `i64`), `limit` within 1..=1,000,000.
pub(crate) fn purge_args(
    layer: &'static str,
    older_than: std::time::Duration,
    limit: u32,
) -> Result<(i64, i64), ConfigError> {
    ConfigError::check_duration(layer, "older_than", older_than)?;
    if !(1..=MAX_PURGE_LIMIT).contains(&limit) {
        return Err(ConfigError::field(
            layer,
            "limit",
            format!("must be within 1..={MAX_PURGE_LIMIT}, got {limit}"),
        ));
    }
    let micros = i64::try_from(older_than.as_micros()).unwrap_or(i64::MAX);
    Ok((micros, i64::from(limit)))
}

/// A validated `name` or `schema.name`: lowercase ASCII letters, digits and `_`, not starting
/// with a digit. Always written quoted, so reserved words (`order`) are fine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Table {
    schema: Option<String>,
    name: String,
}

impl Table {
    /// Parses `text`, refusing it with a [`ConfigError`] for `layer`'s `table` setting.
    pub(crate) fn parse(layer: &'static str, text: &str) -> Result<Table, ConfigError> {
        let err = |m: String| ConfigError::field(layer, "table", m);
        let (schema, name) = match text.split_once('.') {
            Some((s, n)) => (Some(s), n),
            None => (None, text),
        };
        if let Some(s) = schema {
            check_part(s, MAX_SCHEMA).map_err(|why| err(format!("schema {why}, got {text:?}")))?;
        }
        check_part(name, MAX_NAME).map_err(|why| err(format!("name {why}, got {text:?}")))?;
        Ok(Table {
            schema: schema.map(str::to_owned),
            name: name.to_owned(),
        })
    }

    /// The quoted, qualified name for statements: `"app"."inbox"`.
    pub(crate) fn quoted(&self) -> String {
        match &self.schema {
            Some(s) => format!("\"{s}\".\"{}\"", self.name),
            None => format!("\"{}\"", self.name),
        }
    }

    /// The quoted name of an index of this table (created in the table's schema).
    pub(crate) fn index(&self, suffix: &str) -> String {
        format!("\"{}_{suffix}\"", self.name)
    }

    /// `CREATE SCHEMA IF NOT EXISTS ...;` when the name has a schema.
    pub(crate) fn create_schema(&self) -> String {
        match &self.schema {
            Some(s) => format!("CREATE SCHEMA IF NOT EXISTS \"{s}\";\n"),
            None => String::new(),
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(s) = &self.schema {
            write!(f, "{s}.")?;
        }
        f.write_str(&self.name)
    }
}

fn check_part(part: &str, max: usize) -> Result<(), String> {
    if part.is_empty() {
        return Err("must not be empty".into());
    }
    if part.len() > max {
        return Err(format!("must be at most {max} bytes"));
    }
    let mut chars = part.chars();
    let first = chars.next().unwrap_or('0');
    if !(first.is_ascii_lowercase() || first == '_') {
        return Err("must start with a lowercase ASCII letter or `_`".into());
    }
    if !part
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err("may hold only lowercase ASCII letters, digits and `_`".into());
    }
    Ok(())
}

/// Text PostgreSQL can store: `text` and `jsonb` refuse the NUL character, so a broker's
/// message carrying one would fail its insert forever; it becomes U+FFFD instead.
pub(crate) fn storable(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains('\0') {
        s.replace('\0', "\u{FFFD}").into()
    } else {
        s.into()
    }
}

/// A message stored as columns (the dead letters' table and the outbox): `message_id`, `kind`,
/// `payload`, its headers as the arrays `names` and `vals`, and `correlation_id`.
pub(crate) fn read_message(
    row: &sqlx::postgres::PgRow,
) -> Result<crate::message::Message, sqlx::Error> {
    use sqlx::Row;
    let names: Vec<String> = row.try_get("names")?;
    let values: Vec<String> = row.try_get("vals")?;
    let payload: Vec<u8> = row.try_get("payload")?;
    let mut m = crate::message::Message::new(
        row.try_get::<String, _>("message_id")?,
        row.try_get::<String, _>("kind")?,
        payload,
    )
    .with_headers(names.into_iter().zip(values).collect());
    if let Some(c) = row.try_get::<Option<String>, _>("correlation_id")? {
        m = m.with_correlation_id(c);
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_quoted() {
        let t = Table::parse("inbox", "app.order").unwrap();
        assert_eq!(t.quoted(), "\"app\".\"order\"");
        assert_eq!(t.index("at"), "\"order_at\"");
        assert_eq!(t.to_string(), "app.order");
        for bad in [
            "", ".x", "x.", "a.b.c", "Inbox", "1x", "x-y", "x;drop", "x\"y", "é",
        ] {
            assert!(Table::parse("inbox", bad).is_err(), "{bad:?}");
        }
        assert!(Table::parse("inbox", &"x".repeat(48)).is_ok());
        assert!(Table::parse("inbox", &"x".repeat(49)).is_err());
    }

    #[test]
    fn nul_is_replaced() {
        assert_eq!(storable("a\0b"), "a\u{FFFD}b");
        assert!(matches!(storable("ab"), std::borrow::Cow::Borrowed(_)));
    }
}
