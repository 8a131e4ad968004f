-- Nothing here: PostgreSQL's 0017 stores package bodies (ciphertext) out of line without trying
-- to compress them; SQLite never compresses. Kept so that both backends have the same migration
-- versions.
SELECT 1;
