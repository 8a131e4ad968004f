-- Fewer pages per commit for the audit log, which nearly every commit appends to:
-- * no AUTOINCREMENT: it made each such commit also rewrite sqlite_sequence (one page). Events are
--   never deleted (retention prunes their details and keeps the row), so the largest seq is never
--   removed and a plain INTEGER PRIMARY KEY still never reuses one;
-- * no audit_unintegrated: the sequencer's scan (leaf_index IS NULL ORDER BY seq) is answered by
--   audit_by_leaf, whose NULL entries are kept in rowid order, so the partial index was written on
--   every insert and read by nothing.
-- SQLite cannot drop AUTOINCREMENT in place: the table is rebuilt with the same columns and rows.
-- PostgreSQL's 0016 drops the same index (its planner also uses audit_by_leaf).
-- Keep in step with the other backend's 0016_audit_pages.sql.
CREATE TABLE audit_events_new (
    seq         INTEGER PRIMARY KEY,
    at          BIGINT NOT NULL,
    kind        TEXT NOT NULL,
    subject     TEXT,
    transfer_id TEXT,
    actor       TEXT NOT NULL,
    detail      TEXT NOT NULL,
    leaf_index  BIGINT,
    leaf_hash   TEXT,
    pruned_at   BIGINT
);
INSERT INTO audit_events_new (seq, at, kind, subject, transfer_id, actor, detail, leaf_index, leaf_hash, pruned_at)
    SELECT seq, at, kind, subject, transfer_id, actor, detail, leaf_index, leaf_hash, pruned_at FROM audit_events;
DROP TABLE audit_events;
ALTER TABLE audit_events_new RENAME TO audit_events;
CREATE INDEX audit_by_transfer ON audit_events (transfer_id, seq);
CREATE UNIQUE INDEX audit_by_leaf ON audit_events (leaf_index);
CREATE INDEX audit_by_subject_alone ON audit_events (subject, seq) WHERE transfer_id IS NULL;
