-- The verified subject's ID number, sealed by the platform's data key (AES-256-GCM, bound to the
-- subject's pseudonym), so a transfer started from this session can ask agencies about that person.
-- Gone with the session (at most 8 hours). Keep in step with the other backend's 0006.
ALTER TABLE sessions ADD COLUMN subject_sealed TEXT;
