-- Identity verification: sessions, subjects (pseudonymous), verified contacts, one-time codes,
-- lockout counters, certificate challenges and the demo outbox. Keep in step with the other
-- backend's 0005_identity.sql. Times are milliseconds since the Unix epoch.

-- A browser session. The cookie holds a random token; only its SHA-256 is stored here.
CREATE TABLE sessions (
    id_hash      TEXT PRIMARY KEY NOT NULL,
    csrf_token   TEXT NOT NULL,
    subject      TEXT,
    subject_kind TEXT,
    method       TEXT,
    level        BIGINT,
    verified_at  BIGINT,
    -- A verification waiting for its first-use code (JSON), not yet granted.
    pending      TEXT,
    created_at   BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL
);
CREATE INDEX sessions_by_expiry ON sessions (expires_at);

-- A person or company known to the platform, by keyed pseudonym only.
CREATE TABLE subjects (
    pseudonym       TEXT PRIMARY KEY NOT NULL,
    kind            TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    first_use_at    BIGINT,
    password_hash   TEXT,
    password_set_at BIGINT
);

CREATE TABLE contacts (
    subject     TEXT NOT NULL REFERENCES subjects (pseudonym) ON DELETE CASCADE,
    channel     TEXT NOT NULL,
    address     TEXT NOT NULL,
    verified_at BIGINT NOT NULL,
    PRIMARY KEY (subject, channel)
);

-- One-time codes, stored as a keyed hash; single use, expiring, few attempts.
CREATE TABLE one_time_codes (
    id           TEXT PRIMARY KEY NOT NULL,
    session_hash TEXT NOT NULL,
    subject      TEXT NOT NULL,
    channel      TEXT NOT NULL,
    address      TEXT NOT NULL,
    code_hash    TEXT NOT NULL,
    attempts     BIGINT NOT NULL DEFAULT 0,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    used_at      BIGINT
);
CREATE INDEX one_time_codes_by_session ON one_time_codes (session_hash, created_at);

-- Failed verifications per lock key (pseudonymous account or hashed client address).
CREATE TABLE auth_failures (
    lock_key TEXT NOT NULL,
    at       BIGINT NOT NULL
);
CREATE INDEX auth_failures_by_key ON auth_failures (lock_key, at);

CREATE TABLE lockouts (
    lock_key     TEXT PRIMARY KEY NOT NULL,
    locked_until BIGINT NOT NULL
);

CREATE TABLE cert_challenges (
    id           TEXT PRIMARY KEY NOT NULL,
    session_hash TEXT NOT NULL,
    to_be_signed TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    used_at      BIGINT
);

-- Messages shown at /dev/outbox instead of being sent (demo only).
CREATE TABLE outbox (
    id        TEXT PRIMARY KEY NOT NULL,
    at        BIGINT NOT NULL,
    channel   TEXT NOT NULL,
    recipient TEXT NOT NULL,
    title     TEXT NOT NULL,
    body      TEXT NOT NULL
);
CREATE INDEX outbox_by_time ON outbox (at);
