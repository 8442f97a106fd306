//! The table's name and the statements over it: one statement per store operation.

use crate::ConfigError;

/// The shipped migration, for the default table.
pub(super) const SCHEMA: &str = include_str!("schema.sql");

pub(super) const DEFAULT_TABLE: &str = "rampart_idempotency";

/// The store's name in its configuration errors.
pub(super) const LAYER: &str = "PostgreSQL store";

/// Longest table name: the index is named `<table>_expires_at`, and PostgreSQL truncates names
/// past 63 bytes.
const MAX_TABLE: usize = 63 - "_expires_at".len();
const MAX_SCHEMA: usize = 63;

/// Longest lease or TTL sent to the database (longer ones, from a store called directly past
/// the layer's bounds, are cut to it rather than overflow a timestamp).
pub(super) const MAX_MILLIS: i64 = crate::MAX_DURATION.as_secs() as i64 * 1000;

/// Checks one part of the name: lowercase ASCII letters, digits and underscores, not starting
/// with a digit. Uppercase is refused rather than quoted as is: PostgreSQL folds unquoted
/// names to lowercase, so `Idem` typed in psql would not be the table we made.
fn part(what: &str, s: &str, max: usize) -> Result<(), ConfigError> {
    let fail = |why: String| Err(ConfigError::field(LAYER, "table", why));
    if s.is_empty() {
        return fail(format!("needs a non-empty {what} name"));
    }
    if s.len() > max {
        return fail(format!("{what} name is longer than {max} bytes"));
    }
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        return fail(format!("{what} name must not start with a digit"));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return fail(format!(
            "{what} name may hold only lowercase ASCII letters, digits and underscores"
        ));
    }
    Ok(())
}

/// A validated `table` or `schema.table`, and its quoted forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TableName {
    /// As the user wrote it.
    pub(super) plain: String,
    /// Quoted, schema-qualified when a schema was given.
    pub(super) quoted: String,
    /// The index's quoted name (an index lives in its table's schema: never qualified).
    pub(super) index: String,
}

impl TableName {
    pub(super) fn parse(name: &str) -> Result<TableName, ConfigError> {
        let (schema, table) = match name.split_once('.') {
            Some((schema, table)) => (Some(schema), table),
            None => (None, name),
        };
        if let Some(schema) = schema {
            part("schema", schema, MAX_SCHEMA)?;
        }
        part("table", table, MAX_TABLE)?;
        // Validated: no quote can occur inside, so plain double quotes are enough.
        let quoted = match schema {
            Some(schema) => format!("\"{schema}\".\"{table}\""),
            None => format!("\"{table}\""),
        };
        Ok(TableName {
            plain: name.to_owned(),
            quoted,
            index: format!("\"{table}_expires_at\""),
        })
    }
}

/// Every statement, written for one table.
#[derive(Debug)]
pub(super) struct Statements {
    pub(super) name: TableName,
    pub(super) schema: String,
    pub(super) claim: String,
    pub(super) complete: String,
    pub(super) release: String,
    pub(super) renew: String,
    pub(super) purge: String,
    pub(super) ready: String,
}

impl Statements {
    pub(super) fn new(name: TableName) -> Statements {
        let t = &name.quoted;
        // The index first: its default name contains the default table's name.
        let schema = SCHEMA
            .replace("\"rampart_idempotency_expires_at\"", &name.index)
            .replace("\"rampart_idempotency\"", t);
        // A claim always takes the row lock and returns the row as it is after the statement:
        // a free (expired) row is taken over, a live one is written back unchanged. An INSERT
        // ... ON CONFLICT sees the newest committed row even when it is newer than the
        // statement's snapshot, so the answer is never stale (a fallback SELECT would be). The
        // `LEAST` gives any row an end: one edited to `infinity` expires too.
        let claim = format!(
            "INSERT INTO {t} AS r (key, fingerprint, owner_token, state, completion, expires_at)
VALUES ($1, $2, $3, 1, NULL, now() + $4 * interval '1 millisecond')
ON CONFLICT (key) DO UPDATE SET
    fingerprint = CASE WHEN r.expires_at <= now() THEN excluded.fingerprint ELSE r.fingerprint END,
    owner_token = CASE WHEN r.expires_at <= now() THEN excluded.owner_token ELSE r.owner_token END,
    state = CASE WHEN r.expires_at <= now() THEN 1 ELSE r.state END,
    completion = CASE WHEN r.expires_at <= now() THEN NULL ELSE r.completion END,
    expires_at = CASE WHEN r.expires_at <= now() THEN excluded.expires_at
                      ELSE LEAST(r.expires_at, now() + interval '400 days') END
RETURNING r.owner_token = $3 AND r.state = 1,
    r.state,
    r.fingerprint = $2,
    CASE WHEN r.state = 2 AND r.fingerprint = $2 THEN r.completion END,
    GREATEST(0, floor(extract(epoch FROM r.expires_at - now()) * 1000))::int8"
        );
        // The owner's in-flight row (even past its lease: nobody claimed it since), or a key
        // that vanished; a row this owner completed already answers true and keeps the first
        // completion. Another owner's row is left alone (no row returned).
        let complete = format!(
            "INSERT INTO {t} AS r (key, fingerprint, owner_token, state, completion, expires_at)
VALUES ($1, $2, $3, 2, $4, now() + $5 * interval '1 millisecond')
ON CONFLICT (key) DO UPDATE SET
    state = 2,
    completion = CASE WHEN r.state = 1 THEN excluded.completion ELSE r.completion END,
    expires_at = CASE WHEN r.state = 1 THEN excluded.expires_at ELSE r.expires_at END
WHERE r.owner_token = $3
RETURNING 1"
        );
        let release = format!(
            "DELETE FROM {t} WHERE key = $1 AND owner_token = $2 AND state = 1 RETURNING 1"
        );
        let renew = format!(
            "UPDATE {t} SET expires_at = now() + $3 * interval '1 millisecond'
WHERE key = $1 AND owner_token = $2 AND state = 1 RETURNING 1"
        );
        // SKIP LOCKED: a purge never waits for (nor blocks) a claim on the same key; the row
        // lock re-checks `expires_at` on the newest row, so a key claimed anew meanwhile stays.
        let purge = format!(
            "WITH gone AS (
    DELETE FROM {t} WHERE key IN (
        SELECT key FROM {t} WHERE expires_at <= now()
        ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED)
    RETURNING 1)
SELECT count(*)::int8 FROM gone"
        );
        let ready = format!("SELECT 1 FROM {t} LIMIT 0");
        Statements {
            name,
            schema,
            claim,
            complete,
            release,
            renew,
            purge,
            ready,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated_and_quoted() {
        let t = TableName::parse("rampart_idempotency").unwrap();
        assert_eq!(t.quoted, "\"rampart_idempotency\"");
        assert_eq!(t.index, "\"rampart_idempotency_expires_at\"");
        let t = TableName::parse("billing.idem_keys2").unwrap();
        assert_eq!(t.quoted, "\"billing\".\"idem_keys2\"");
        assert_eq!(t.index, "\"idem_keys2_expires_at\"");
        // Keywords are fine: always quoted.
        assert_eq!(TableName::parse("user").unwrap().quoted, "\"user\"");

        let long = "t".repeat(MAX_TABLE + 1);
        for bad in [
            "",
            ".t",
            "s.",
            "a.b.c",
            "Idem",
            "1table",
            "t-1",
            "t\"; DROP TABLE x; --",
            "t t",
            "té",
            long.as_str(),
        ] {
            let err = TableName::parse(bad).unwrap_err();
            assert_eq!(err.setting(), Some("table"), "{bad}");
        }
        assert!(TableName::parse(&"t".repeat(MAX_TABLE)).is_ok());
    }

    #[test]
    fn the_schema_names_the_chosen_table_only() {
        let s = Statements::new(TableName::parse("billing.keys").unwrap());
        assert!(!s.schema.contains("rampart_idempotency\""), "{}", s.schema);
        assert!(
            s.schema
                .contains("CREATE TABLE IF NOT EXISTS \"billing\".\"keys\" (")
        );
        assert!(
            s.schema
                .contains("\"keys_expires_at\"\n    ON \"billing\".\"keys\" (expires_at)")
        );
        let d = Statements::new(TableName::parse(DEFAULT_TABLE).unwrap());
        assert_eq!(d.schema, SCHEMA);
    }
}
