-- Passkeys (TW FidO analogue, level 2) and their WebAuthn ceremonies. Keep in step with the other
-- backend's 0007_passkeys.sql. Times are milliseconds since the Unix epoch.

-- A registered passkey, by subject pseudonym. `passkey` is the relying-party library's record
-- (credential ID, public key, counter, flags) as JSON; counter and flags are copied out to be shown.
CREATE TABLE passkeys (
    id              TEXT PRIMARY KEY NOT NULL,
    subject         TEXT NOT NULL REFERENCES subjects (pseudonym) ON DELETE CASCADE,
    credential_id   TEXT NOT NULL UNIQUE,
    passkey         TEXT NOT NULL,
    name            TEXT NOT NULL,
    sign_count      BIGINT NOT NULL,
    backup_eligible BIGINT NOT NULL,
    backup_state    BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    last_used_at    BIGINT
);
CREATE INDEX passkeys_by_subject ON passkeys (subject, created_at);

-- A registration or sign-in ceremony in progress: the library's state (challenge included), bound
-- to the session that started it and the origin it was started for; single use, expiring.
CREATE TABLE passkey_ceremonies (
    id           TEXT PRIMARY KEY NOT NULL,
    session_hash TEXT NOT NULL,
    kind         TEXT NOT NULL,
    subject      TEXT NOT NULL,
    origin       TEXT NOT NULL,
    state        TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    used_at      BIGINT
);
CREATE INDEX passkey_ceremonies_by_expiry ON passkey_ceremonies (expires_at);
