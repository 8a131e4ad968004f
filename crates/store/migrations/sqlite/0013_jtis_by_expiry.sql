-- Replay guards keyed by when they may be forgotten first: a replayed assertion or DPoP proof is the
-- same signed token, so it carries the same expiry (`exp`, or `iat` plus the proof's age limit) and
-- meets its own row. Inserts then go to the end of the key instead of a random leaf, the purge
-- reads a prefix of it, and no second index is kept (a random leaf and a second index per `jti`
-- were 16 % of the pages of SQLite's write-ahead log in a load run). A `jti` reused by its client
-- in another, newly signed token is no replay and is no longer refused.
-- Keep in step with the other backend's 0013_jtis_by_expiry.sql.
CREATE TABLE oauth_jtis_new (
    client_id  TEXT NOT NULL,
    jti        TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (expires_at, client_id, jti)
) WITHOUT ROWID;
INSERT INTO oauth_jtis_new (client_id, jti, expires_at) SELECT client_id, jti, expires_at FROM oauth_jtis;
DROP TABLE oauth_jtis;
ALTER TABLE oauth_jtis_new RENAME TO oauth_jtis;
