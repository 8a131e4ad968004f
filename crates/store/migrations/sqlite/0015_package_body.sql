-- A sealed package small enough lives in its row (ciphertext, as it would be in the object store)
-- instead of a file or object: written in the same step as its record, read with it, cleared
-- with its key. Keep in step with the other backend's 0015_package_body.sql.
ALTER TABLE packages ADD COLUMN body BLOB;
