-- A check value per key that every process sharing this database must hold alike (an HMAC of a
-- fixed label under the key: equal for equal keys, telling nothing about the key). The first
-- process to start records it; a process started with another key refuses to start.
CREATE TABLE key_checks (
    name TEXT PRIMARY KEY NOT NULL,
    check_value TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
