-- audit_unintegrated goes: the sequencer's scan (leaf_index IS NULL ORDER BY seq) is planned on
-- audit_by_leaf, which indexes NULLs too, so the partial index was written on every insert and
-- read by nothing. SQLite's 0016 also rebuilds its table without AUTOINCREMENT; an identity column
-- has no counterpart of the page that costs there.
-- Keep in step with the other backend's 0016_audit_pages.sql.
DROP INDEX audit_unintegrated;
