-- Online services (flow 3): registered OAuth clients, pushed authorization requests, single-use
-- codes, client-assertion jti replay guard and access tokens. Keep in step with the other backend's
-- 0010_oauth.sql. Times are milliseconds since the Unix epoch. No personal data in clear: a
-- login_hint stays sealed, tokens and codes are stored as SHA-256 hashes.

-- A registered service (OAuth client). JSON arrays in TEXT columns.
CREATE TABLE oauth_clients (
    client_id        TEXT PRIMARY KEY NOT NULL,
    name             TEXT NOT NULL,
    -- The client's JWK set by value (JSON), or NULL when it is fetched from jwks_uri.
    jwks             TEXT,
    jwks_uri         TEXT,
    redirect_uris    TEXT NOT NULL,
    terms            TEXT NOT NULL,
    purpose          TEXT NOT NULL,
    datasets         TEXT NOT NULL,
    -- The law that allows more than five datasets; NULL: at most five.
    legal_basis      TEXT,
    environment      TEXT NOT NULL,
    trusted_verifier BIGINT NOT NULL DEFAULT 0,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);

-- One authorization: a pushed request (RFC 9126), then the person's consent and confirmation.
CREATE TABLE oauth_requests (
    id           TEXT PRIMARY KEY NOT NULL,
    client_id    TEXT NOT NULL REFERENCES oauth_clients (client_id) ON DELETE CASCADE,
    -- The validated request (JSON): redirect URI, state, PKCE challenge, datasets, purpose,
    -- sealed login_hint or asserted identity level.
    params       TEXT NOT NULL,
    status       TEXT NOT NULL,
    -- The browser session that opened it (SHA-256 of the session token), bound at first use.
    session_hash TEXT,
    transfer_id  TEXT,
    created_at   BIGINT NOT NULL,
    -- When the request_uri stops being accepted (before it is opened) or the whole
    -- authorization ends (after).
    expires_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
CREATE INDEX oauth_requests_by_expiry ON oauth_requests (expires_at);

CREATE TABLE oauth_codes (
    code_hash      TEXT PRIMARY KEY NOT NULL,
    request_id     TEXT NOT NULL REFERENCES oauth_requests (id) ON DELETE CASCADE,
    client_id      TEXT NOT NULL,
    transfer_id    TEXT NOT NULL,
    redirect_uri   TEXT NOT NULL,
    code_challenge TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL,
    used_at        BIGINT
);

-- Client assertion IDs seen, kept until the assertion would have expired anyway.
CREATE TABLE oauth_jtis (
    client_id  TEXT NOT NULL,
    jti        TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (client_id, jti)
);
CREATE INDEX oauth_jtis_by_expiry ON oauth_jtis (expires_at);

CREATE TABLE oauth_tokens (
    token_hash  TEXT PRIMARY KEY NOT NULL,
    client_id   TEXT NOT NULL,
    transfer_id TEXT NOT NULL,
    code_hash   TEXT NOT NULL,
    -- RFC 9449 DPoP key thumbprint the token is bound to; NULL: bearer bound to client and transfer.
    dpop_jkt    TEXT,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);
CREATE INDEX oauth_tokens_by_code ON oauth_tokens (code_hash);
CREATE INDEX oauth_tokens_by_expiry ON oauth_tokens (expires_at);
