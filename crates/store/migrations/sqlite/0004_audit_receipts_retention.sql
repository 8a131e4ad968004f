-- Audit log, part 2: stored subtree roots (proofs read O(log n) rows), signed receipts, retention,
-- and indexes for the agencies' and services' record exports.
-- Keep in step with the other backend's 0004_audit_receipts_retention.sql.

-- Roots of complete subtrees of 16 leaves and more (level >= 4), written at integration. Smaller
-- subtrees are recomputed from at most 15 leaf hashes, which costs less than storing them.
CREATE TABLE audit_nodes (
    level BIGINT NOT NULL,
    idx   BIGINT NOT NULL,
    hash  TEXT NOT NULL,
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;

-- Retention removes an old event's details but keeps its leaf hash, so the tree still verifies.
ALTER TABLE audit_events ADD COLUMN pruned_at BIGINT;
-- Every leaf below this index has been pruned (where the next retention run starts).
ALTER TABLE audit_log_state ADD COLUMN pruned_below BIGINT NOT NULL DEFAULT 0;

-- Signed consent and deletion receipts. The receipt's audit event (seq) commits to its content;
-- package_digest is '' while unknown, so a receipt issued later with the digest is a new one.
CREATE TABLE audit_receipts (
    id             TEXT PRIMARY KEY NOT NULL,
    transfer_id    TEXT NOT NULL,
    kind           TEXT NOT NULL,
    package_digest TEXT NOT NULL,
    seq            BIGINT NOT NULL,
    jws            TEXT NOT NULL,
    created_at     BIGINT NOT NULL
);
CREATE UNIQUE INDEX audit_receipts_once ON audit_receipts (transfer_id, kind, package_digest);
CREATE INDEX audit_receipts_by_time ON audit_receipts (created_at);

-- Record exports: a service's transfers, an agency's datasets, by time.
CREATE INDEX transfers_by_recipient ON transfers (recipient, created_at);
CREATE INDEX transfers_by_created ON transfers (created_at);
CREATE INDEX transfer_datasets_by_dataset ON transfer_datasets (dataset_id, transfer_id);
