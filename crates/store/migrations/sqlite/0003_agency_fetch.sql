-- The data path (issue 4): outcome of each dataset fetch, the per-transfer secret a fetch needs,
-- agency circuit breakers and concurrency slots shared by every process, and the stored packages.
-- Keep in step with ../postgres/0003_agency_fetch.sql.

-- Where each fetch stands. status: pending | not_ready | succeeded | refused | rejected | failed.
-- error_* never hold personal data; data_object/data_key point at the sealed fetched dataset until
-- it is packaged (data_key is wrapped by the platform's data key and cleared when destroyed).
ALTER TABLE transfer_datasets ADD COLUMN attempts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE transfer_datasets ADD COLUMN error_code TEXT;
ALTER TABLE transfer_datasets ADD COLUMN error_message TEXT;
ALTER TABLE transfer_datasets ADD COLUMN digest TEXT;
ALTER TABLE transfer_datasets ADD COLUMN agency_request_id TEXT;
ALTER TABLE transfer_datasets ADD COLUMN started_at BIGINT;
ALTER TABLE transfer_datasets ADD COLUMN next_attempt_at BIGINT;
ALTER TABLE transfer_datasets ADD COLUMN settled_at BIGINT;
ALTER TABLE transfer_datasets ADD COLUMN data_object TEXT;
ALTER TABLE transfer_datasets ADD COLUMN data_key TEXT;

-- What the fetch needs to know about the person (ID number, method, level), sealed under the
-- platform's data key with the transfer ID bound in; deleted when fetching ends or the transfer ends.
CREATE TABLE transfer_secrets (
    transfer_id TEXT PRIMARY KEY NOT NULL REFERENCES transfers (id) ON DELETE CASCADE,
    sealed      TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

-- One row per agency that has been called: consecutive outage count and until when it is open.
CREATE TABLE agency_circuits (
    agency_id            TEXT PRIMARY KEY NOT NULL,
    consecutive_failures BIGINT NOT NULL DEFAULT 0,
    open_until           BIGINT,
    updated_at           BIGINT NOT NULL
);

-- Calls in flight, one row per fetch holding a slot; a lease so a crashed process frees its slots.
CREATE TABLE agency_slots (
    holder      TEXT PRIMARY KEY NOT NULL,
    agency_id   TEXT NOT NULL,
    lease_until BIGINT NOT NULL
);
CREATE INDEX agency_slots_by_agency ON agency_slots (agency_id, lease_until);

-- The package of a transfer: the sealed blob lives in object storage under object_key; its key
-- (wrapped by the platform's data key) lives here, apart from it, and is cleared when the package
-- is taken or expires, so a leftover copy of the blob is unreadable.
CREATE TABLE packages (
    transfer_id TEXT PRIMARY KEY NOT NULL REFERENCES transfers (id) ON DELETE CASCADE,
    object_key  TEXT NOT NULL,
    sealed_key  TEXT,
    digest      TEXT NOT NULL,
    size_bytes  BIGINT NOT NULL,
    datasets    BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    taken_at    BIGINT,
    deleted_at  BIGINT
);
CREATE INDEX packages_by_expiry ON packages (expires_at);
