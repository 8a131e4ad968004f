-- A person's events are found through their transfers (audit_by_transfer, keyed by time-ordered
-- transfer IDs); only events without a transfer (sign-ins, lockouts, a refusal before any
-- transfer) need an index by subject. The full (subject, seq) index had every commit write one leaf
-- per person concerned: 14 % of the pages of SQLite's write-ahead log during a load run.
-- Keep in step with the other backend's 0012_audit_subject_index.sql.
DROP INDEX audit_by_subject;
CREATE INDEX audit_by_subject_alone ON audit_events (subject, seq) WHERE transfer_id IS NULL;
