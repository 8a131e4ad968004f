-- Nothing here: PostgreSQL's 0014 adds a function for an agency call's admission, which SQLite
-- runs as one step of several statements under its write lock (store/src/fetches.rs, ADMIT_SQLITE).
-- Kept so that both backends have the same migration versions.
SELECT 1;
