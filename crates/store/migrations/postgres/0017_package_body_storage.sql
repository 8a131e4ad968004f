-- A package body is ciphertext, which never compresses: store it out of line without trying
-- (STORAGE EXTERNAL) instead of letting TOAST run pglz over every body first (≈ 1 % of
-- PostgreSQL's CPU under the transfer benchmark, docs/PERFORMANCE.md round 11). Rows already
-- stored keep their form. The other backend's 0017 is empty (SQLite does not compress).
ALTER TABLE packages ALTER COLUMN body SET STORAGE EXTERNAL;
