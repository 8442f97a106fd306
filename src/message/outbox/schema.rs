//! The outbox's table and indexes, its migration, and every statement on it (built once per
//! [`Outbox`](super::Outbox) from the validated table name: never user text in SQL).

use crate::message::postgres::Table;

/// The seed of the advisory lock `enqueue` takes per aggregate (`hashtextextended(aggregate,
/// seed)`): ours, so that our locks rarely meet an application's own advisory locks.
const LOCK_SEED: i64 = 0x7261_6d70_6f62_7831; // "rampobx1"

/// PostgreSQL's longest channel name (`NAMEDATALEN - 1`).
const MAX_CHANNEL: usize = 63;

/// The statements on one outbox table.
#[derive(Debug)]
pub(crate) struct Statements {
    /// The `NOTIFY` channel: the table's text name (a hash of it when that is too long).
    pub(crate) channel: String,
    pub(crate) create: String,
    pub(crate) enqueue: String,
    pub(crate) heads: String,
    pub(crate) scan_capped: String,
    pub(crate) heads_by_aggregate: String,
    pub(crate) followers: String,
    pub(crate) mark_published: String,
    pub(crate) mark_failed: String,
    pub(crate) backlog: String,
    pub(crate) oldest: String,
    pub(crate) purge: String,
}

impl Statements {
    pub(crate) fn new(t: &Table) -> Self {
        let q = t.quoted();
        let channel = channel(t);
        let lit = channel.replace('\'', "''");
        let cols = "id, aggregate, message_id, kind, payload, correlation_id, attempts, \
                    ARRAY(SELECT key FROM jsonb_each_text(headers) ORDER BY key) AS names, \
                    ARRAY(SELECT value FROM jsonb_each_text(headers) ORDER BY key) AS vals";
        Statements {
            create: create_sql(t),
            // The lock is taken before the insert draws its id (the insert reads `l`), and
            // held until the caller's commit: ids of one aggregate follow commit order.
            enqueue: format!(
                "WITH l AS (SELECT pg_advisory_xact_lock(hashtextextended($1, {LOCK_SEED}))), \
                 ins AS (INSERT INTO {q} (aggregate, message_id, kind, payload, headers, \
                 correlation_id) SELECT $1, $2, $3, $4, jsonb_object($5::text[], $6::text[]), $7 \
                 FROM l RETURNING id) \
                 SELECT id, pg_notify('{lit}', '') IS NULL AS n FROM ins"
            ),
            // Heads among the first $2 pending rows by id: stops as soon as the batch is
            // full, and never scans more than $2 rows (a backlog on few aggregates would
            // otherwise be scanned whole on every batch).
            heads: format!(
                "SELECT {cols} FROM {q} t WHERE t.id IN (SELECT id FROM {q} \
                 WHERE published_at IS NULL ORDER BY id LIMIT $2) \
                 AND published_at IS NULL AND next_attempt_at <= now() \
                 AND NOT EXISTS (SELECT 1 FROM {q} e WHERE e.aggregate = t.aggregate \
                 AND e.published_at IS NULL AND e.id < t.id) \
                 ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED"
            ),
            // Whether pending rows lie beyond the first $1 (the scan above was cut short).
            scan_capped: format!(
                "SELECT EXISTS (SELECT 1 FROM {q} WHERE published_at IS NULL \
                 ORDER BY id OFFSET $1 LIMIT 1)"
            ),
            // Every pending aggregate's head, found by skipping through the (aggregate, id)
            // index one aggregate at a time: the cost follows the number of pending
            // aggregates, not of pending rows. Used only when the scan above was cut short.
            heads_by_aggregate: format!(
                "WITH RECURSIVE aggs(a) AS ( \
                 (SELECT aggregate FROM {q} WHERE published_at IS NULL ORDER BY aggregate LIMIT 1) \
                 UNION ALL SELECT (SELECT aggregate FROM {q} WHERE published_at IS NULL \
                 AND aggregate > aggs.a ORDER BY aggregate LIMIT 1) FROM aggs WHERE aggs.a IS NOT NULL) \
                 SELECT {cols} FROM {q} t WHERE t.id IN (SELECT (SELECT h.id FROM {q} h \
                 WHERE h.aggregate = aggs.a AND h.published_at IS NULL ORDER BY h.id LIMIT 1) \
                 FROM aggs WHERE aggs.a IS NOT NULL) \
                 AND published_at IS NULL AND next_attempt_at <= now() AND id <> ALL($2) \
                 ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED"
            ),
            // No SKIP LOCKED: nobody else can hold a follower while we hold its head.
            followers: format!(
                "SELECT {cols} FROM {q} WHERE aggregate = ANY($1) AND published_at IS NULL \
                 AND id <> ALL($2) ORDER BY id LIMIT $3 FOR UPDATE"
            ),
            // clock_timestamp(): now() is the batch's start, before the publications.
            mark_published: format!(
                "UPDATE {q} SET published_at = clock_timestamp(), attempts = attempts + 1 \
                 WHERE id = ANY($1)"
            ),
            mark_failed: format!(
                "UPDATE {q} AS t SET attempts = t.attempts + 1, last_error = u.err, \
                 next_attempt_at = clock_timestamp() + u.delay * interval '1 microsecond' \
                 FROM unnest($1::bigint[], $2::text[], $3::bigint[]) AS u(id, err, delay) \
                 WHERE t.id = u.id"
            ),
            backlog: format!(
                "SELECT count(*), count(*) FILTER (WHERE attempts > 0), \
                 EXTRACT(EPOCH FROM (now() - min(created_at)))::float8 \
                 FROM {q} WHERE published_at IS NULL"
            ),
            // The first pending row by id (the partial index): cheap for a readiness probe.
            oldest: format!(
                "SELECT EXTRACT(EPOCH FROM (now() - created_at))::float8 FROM {q} \
                 WHERE published_at IS NULL ORDER BY id LIMIT 1"
            ),
            purge: format!(
                "DELETE FROM {q} WHERE id = ANY(ARRAY(SELECT id FROM {q} \
                 WHERE published_at IS NOT NULL \
                 AND published_at < now() - $1 * interval '1 microsecond' \
                 ORDER BY published_at LIMIT $2 FOR UPDATE SKIP LOCKED))"
            ),
            channel,
        }
    }
}

/// The table's text name, or `rampart_outbox_` and a hash of it when longer than a channel
/// name may be.
fn channel(t: &Table) -> String {
    let text = t.to_string();
    if text.len() <= MAX_CHANNEL {
        return text;
    }
    let hash = blake3::hash(text.as_bytes()).to_hex();
    format!("rampart_outbox_{}", &hash[..32])
}

/// The table's SQL ([`Outbox::schema_sql`](super::Outbox::schema_sql)).
fn create_sql(t: &Table) -> String {
    format!(
        "{schema}CREATE TABLE IF NOT EXISTS {q} (\n    \
         id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,\n    \
         aggregate       text        NOT NULL,\n    \
         message_id      text        NOT NULL UNIQUE,\n    \
         kind            text        NOT NULL,\n    \
         payload         bytea       NOT NULL,\n    \
         headers         jsonb       NOT NULL,\n    \
         correlation_id  text,\n    \
         created_at      timestamptz NOT NULL DEFAULT now(),\n    \
         attempts        integer     NOT NULL DEFAULT 0,\n    \
         last_error      text,\n    \
         next_attempt_at timestamptz NOT NULL DEFAULT now(),\n    \
         published_at    timestamptz\n\
         );\n\
         CREATE INDEX IF NOT EXISTS {a} ON {q} (aggregate, id) WHERE published_at IS NULL;\n\
         CREATE INDEX IF NOT EXISTS {p} ON {q} (id) WHERE published_at IS NULL;\n\
         CREATE INDEX IF NOT EXISTS {d} ON {q} (published_at) WHERE published_at IS NOT NULL;\n",
        schema = t.create_schema(),
        q = t.quoted(),
        a = t.index("aggregate"),
        p = t.index("pending"),
        d = t.index("published"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_get_a_hashed_channel() {
        let short = Table::parse("outbox", "app.outbox").unwrap();
        assert_eq!(channel(&short), "app.outbox");
        let long = format!("{}.{}", "s".repeat(63), "t".repeat(48));
        let long = Table::parse("outbox", &long).unwrap();
        let c = channel(&long);
        assert!(
            c.len() <= MAX_CHANNEL && c.starts_with("rampart_outbox_"),
            "{c}"
        );
    }

    #[test]
    fn statements_quote_the_table() {
        let t = Table::parse("outbox", "app.order").unwrap();
        let s = Statements::new(&t);
        assert!(
            s.create
                .starts_with("CREATE SCHEMA IF NOT EXISTS \"app\";\n")
        );
        assert!(s.enqueue.contains("INSERT INTO \"app\".\"order\""));
        assert!(s.enqueue.contains("pg_notify('app.order', '')"));
    }
}

#[cfg(test)]
mod doc_tests {
    use super::*;

    /// The module docs show the table as `migrate` creates it.
    #[test]
    fn the_documented_table_is_the_real_one() {
        let docs = include_str!("mod.rs");
        let t = Table::parse("outbox", "rampart_outbox").unwrap();
        for line in create_sql(&t).lines() {
            assert!(
                docs.contains(&format!("//! {line}\n")),
                "not in the docs: {line}"
            );
        }
    }
}
