-- Initial schema (PostgreSQL). Keep in step with ../sqlite/0001_initial.sql: same tables, columns and
-- meaning. Times are milliseconds since the Unix epoch (BIGINT) on both databases.

CREATE TABLE transfers (
    id          TEXT PRIMARY KEY NOT NULL,
    kind        TEXT NOT NULL,
    subject     TEXT NOT NULL,
    recipient   TEXT,
    purpose     TEXT NOT NULL,
    state       TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    version     BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX transfers_by_subject ON transfers (subject, created_at);
CREATE INDEX transfers_by_expiry ON transfers (state, expires_at);

CREATE TABLE transfer_datasets (
    transfer_id TEXT NOT NULL REFERENCES transfers (id) ON DELETE CASCADE,
    dataset_id  TEXT NOT NULL,
    position    BIGINT NOT NULL,
    status      TEXT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (transfer_id, dataset_id)
);

CREATE TABLE jobs (
    id           TEXT PRIMARY KEY NOT NULL,
    queue        TEXT NOT NULL,
    payload      TEXT NOT NULL,
    state        TEXT NOT NULL,
    attempts     BIGINT NOT NULL DEFAULT 0,
    max_attempts BIGINT NOT NULL,
    run_at       BIGINT NOT NULL,
    lease_owner  TEXT,
    lease_until  BIGINT,
    last_error   TEXT,
    dedup_key    TEXT UNIQUE,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
CREATE INDEX jobs_due ON jobs (queue, state, run_at);

CREATE TABLE audit_events (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          BIGINT NOT NULL,
    kind        TEXT NOT NULL,
    subject     TEXT,
    transfer_id TEXT,
    actor       TEXT NOT NULL,
    detail      TEXT NOT NULL
);
CREATE INDEX audit_by_subject ON audit_events (subject, seq);
CREATE INDEX audit_by_transfer ON audit_events (transfer_id, seq);
