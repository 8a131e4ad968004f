-- Counter verification (臨櫃核驗): offices and counters of agencies, clerk accounts and sessions,
-- barcode serials, verification passwords, clerk access to verified data. Keep in step with the
-- other backend's 0009_counter.sql. Times are milliseconds since the Unix epoch. Serials and
-- passwords are stored as keyed hashes; a serial is also kept sealed for its owner's page.

-- An office of an agency where counter services are done, and the counter services it does
-- (catalogue service IDs, JSON array).
CREATE TABLE counter_offices (
    id          TEXT PRIMARY KEY NOT NULL,
    agency      TEXT NOT NULL,
    name_zh     TEXT NOT NULL,
    name_en     TEXT NOT NULL,
    services    TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX counter_offices_by_agency ON counter_offices (agency);

CREATE TABLE counters (
    id          TEXT PRIMARY KEY NOT NULL,
    office_id   TEXT NOT NULL REFERENCES counter_offices (id),
    name        TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX counters_by_office ON counters (office_id);

-- A clerk account: role clerk or supervisor; Argon2id password hash; TOTP secret sealed by the data key.
CREATE TABLE clerks (
    id            TEXT PRIMARY KEY NOT NULL,
    office_id     TEXT NOT NULL REFERENCES counter_offices (id),
    username      TEXT NOT NULL UNIQUE,
    display_name  TEXT NOT NULL,
    role          TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    totp_sealed   TEXT NOT NULL,
    -- The clerk's own subject pseudonym, when they may also sign in with their citizen certificate.
    subject       TEXT UNIQUE,
    -- The last TOTP time step accepted, so a code is never accepted twice.
    totp_last_step BIGINT NOT NULL DEFAULT 0,
    created_at    BIGINT NOT NULL,
    disabled_at   BIGINT
);

-- A clerk's browser session (cookie token stored as SHA-256), bound to one counter once chosen.
CREATE TABLE clerk_sessions (
    id_hash      TEXT PRIMARY KEY NOT NULL,
    clerk_id     TEXT NOT NULL REFERENCES clerks (id) ON DELETE CASCADE,
    counter_id   TEXT,
    csrf_token   TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL
);
CREATE INDEX clerk_sessions_by_expiry ON clerk_sessions (expires_at);

-- Which counter service and office a counter transfer is for.
CREATE TABLE counter_transfers (
    transfer_id TEXT PRIMARY KEY NOT NULL REFERENCES transfers (id) ON DELETE CASCADE,
    service_id  TEXT NOT NULL,
    office_id   TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

-- Barcode serials. At most one current (not replaced) serial per transfer; old ones are dead.
CREATE TABLE counter_serials (
    serial_hash   TEXT PRIMARY KEY NOT NULL,
    transfer_id   TEXT NOT NULL REFERENCES transfers (id) ON DELETE CASCADE,
    serial_sealed TEXT NOT NULL,
    issued_at     BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    replaced_at   BIGINT,
    used_at       BIGINT
);
CREATE INDEX counter_serials_by_transfer ON counter_serials (transfer_id, issued_at);

-- Verification passwords sent after a scan; single use, 2 minutes.
CREATE TABLE counter_passwords (
    id            TEXT PRIMARY KEY NOT NULL,
    transfer_id   TEXT NOT NULL REFERENCES transfers (id) ON DELETE CASCADE,
    serial_hash   TEXT NOT NULL,
    counter_id    TEXT NOT NULL,
    clerk_id      TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    attempts      BIGINT NOT NULL DEFAULT 0,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    used_at       BIGINT,
    -- A newer scan of the same transfer cancels this password.
    cancelled_at  BIGINT
);
CREATE INDEX counter_passwords_by_transfer ON counter_passwords (transfer_id);

-- Wrong barcode or password entries per counter, and counter lockouts.
CREATE TABLE counter_failures (
    counter_id TEXT NOT NULL,
    at         BIGINT NOT NULL
);
CREATE INDEX counter_failures_by_counter ON counter_failures (counter_id, at);

CREATE TABLE counter_locks (
    counter_id   TEXT PRIMARY KEY NOT NULL,
    locked_at    BIGINT NOT NULL,
    locked_until BIGINT NOT NULL
);

-- A clerk session's access to one transfer's data after the right password.
CREATE TABLE counter_grants (
    transfer_id  TEXT NOT NULL REFERENCES transfers (id) ON DELETE CASCADE,
    session_hash TEXT NOT NULL,
    clerk_id     TEXT NOT NULL,
    counter_id   TEXT NOT NULL,
    granted_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    PRIMARY KEY (transfer_id, session_hash)
);
