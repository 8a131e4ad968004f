-- Self-download consent forms: each form carries a one-time token, so a second submit of the same
-- form (double click, back button, refresh) finds the transfer the first one started instead of
-- starting another. Only the token's SHA-256 is kept, with the subject's pseudonym and the version
-- of the terms the person agreed to. Rows are pruned after a day. Keep in step with the other
-- backend's 0008.
CREATE TABLE download_requests (
    token_hash    TEXT PRIMARY KEY NOT NULL,
    subject       TEXT NOT NULL,
    transfer_id   TEXT,
    terms_version TEXT NOT NULL,
    created_at    BIGINT NOT NULL
);
CREATE INDEX download_requests_by_age ON download_requests (created_at);
