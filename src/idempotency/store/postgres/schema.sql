-- tower-rampart: the table of PostgresStore (the Idempotency-Key layer's keys), one row per key.
-- `PostgresStore::migrate()` runs this under an advisory lock; to run it yourself, replace the
-- two quoted names if you chose another table (`PostgresStore::schema_sql()` prints it with
-- yours). Idempotent: safe to run again.
--
-- key          the scoped idempotency key, as bytes (`convert_from(key, 'UTF8')` to read it)
-- fingerprint  the request's fingerprint (32 bytes): another request with the key is a mismatch
-- owner_token  the claiming owner's token (16 bytes): the fencing token of every write
-- state        1 in flight (leased), 2 completed
-- completion   the completed outcome, in the crate's versioned binary form (NULL in flight)
-- expires_at   end of the lease (in flight) or of the TTL (completed), on the database's clock
CREATE TABLE IF NOT EXISTS "rampart_idempotency" (
    key         bytea       PRIMARY KEY,
    fingerprint bytea       NOT NULL CHECK (octet_length(fingerprint) = 32),
    owner_token bytea       NOT NULL CHECK (octet_length(owner_token) = 16),
    state       smallint    NOT NULL CHECK (state IN (1, 2)),
    completion  bytea,
    expires_at  timestamptz NOT NULL,
    CHECK ((state = 1) = (completion IS NULL))
);
-- Retention (`PostgresStore::purge_expired`) finds expired rows through it.
CREATE INDEX IF NOT EXISTS "rampart_idempotency_expires_at"
    ON "rampart_idempotency" (expires_at);
