-- The audit log as a Merkle tree (RFC 9162). Events get a dense leaf index when the sequencer
-- integrates them (not at insert: on PostgreSQL rows can commit out of sequence order), with the
-- leaf hash of their canonical form. The log state keeps the tree's right edge (compact range) so
-- the root is computed without rereading the log; tree heads record (size, root) over time.
-- Keep in step with the other backend's 0002_audit_tree.sql.

ALTER TABLE audit_events ADD COLUMN leaf_index BIGINT;
ALTER TABLE audit_events ADD COLUMN leaf_hash TEXT;
CREATE UNIQUE INDEX audit_by_leaf ON audit_events (leaf_index);
CREATE INDEX audit_unintegrated ON audit_events (seq) WHERE leaf_index IS NULL;

CREATE TABLE audit_log_state (
    id        BIGINT PRIMARY KEY NOT NULL,
    tree_size BIGINT NOT NULL,
    peaks     TEXT NOT NULL
);
INSERT INTO audit_log_state (id, tree_size, peaks) VALUES (1, 0, '[]');

CREATE TABLE tree_heads (
    tree_size  BIGINT PRIMARY KEY NOT NULL,
    root_hash  TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    signature  TEXT
);
