-- An agency call's admission as one function, so that it is one round trip and holds the agency's
-- circuit row (the lock that serialises admissions to one agency) only while it runs, instead of
-- across five statements sent one after another by a busy client. It is a function and not one
-- statement because, in a function, the count of slots after the lock is taken sees the slots that
-- admissions which held the lock before committed; one statement's snapshot predates the lock.
-- Rows as SQLite's ADMIT step returns them (store/src/fetches.rs): (0, open_until, failures) for
-- the circuit; (4, NULL, 0) when the fetch has settled; (1, NULL, 0) when the slot was taken;
-- (2, lease, 0) when this call is a half-open circuit's probe; (3, NULL, attempts) when the fetch's
-- attempt was counted, with its event. The other backend has no such function (0014 is empty there).
CREATE FUNCTION mydata_admit_agency_call(
    p_agency TEXT, p_now BIGINT, p_holder TEXT, p_lease BIGINT, p_limit BIGINT,
    p_transfer TEXT, p_dataset TEXT,
    e_at BIGINT, e_kind TEXT, e_subject TEXT, e_transfer TEXT, e_actor TEXT, e_detail TEXT)
RETURNS TABLE (step BIGINT, until_ms BIGINT, num BIGINT)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    c_open BIGINT;
    c_failures BIGINT;
    v_attempts BIGINT;
BEGIN
    INSERT INTO agency_circuits AS c (agency_id, consecutive_failures, open_until, updated_at)
        VALUES (p_agency, 0, NULL, p_now)
        ON CONFLICT (agency_id) DO UPDATE SET updated_at = excluded.updated_at
        RETURNING c.open_until, c.consecutive_failures INTO c_open, c_failures;
    RETURN QUERY SELECT 0::BIGINT, c_open, c_failures;
    IF c_open > p_now THEN
        RETURN;
    END IF;
    IF (SELECT COUNT(*) FROM agency_slots s
        WHERE s.agency_id = p_agency AND s.lease_until > p_now AND s.holder <> p_holder) >= p_limit THEN
        RETURN;
    END IF;
    IF p_transfer IS NOT NULL THEN
        UPDATE transfer_datasets d SET attempts = d.attempts + 1, started_at = COALESCE(d.started_at, p_now),
                updated_at = p_now
            WHERE d.transfer_id = p_transfer AND d.dataset_id = p_dataset
              AND d.status NOT IN ('succeeded', 'refused', 'rejected', 'failed')
            RETURNING d.attempts INTO v_attempts;
        IF NOT FOUND THEN
            RETURN QUERY SELECT 4::BIGINT, NULL::BIGINT, 0::BIGINT;
            RETURN;
        END IF;
        INSERT INTO audit_events (at, kind, subject, transfer_id, actor, detail)
            VALUES (e_at, e_kind, e_subject, e_transfer, e_actor, e_detail);
    END IF;
    IF c_open IS NOT NULL THEN
        -- Half-open: this call is the probe; others wait while it runs.
        UPDATE agency_circuits SET open_until = p_lease WHERE agency_id = p_agency;
        RETURN QUERY SELECT 2::BIGINT, p_lease, 0::BIGINT;
    END IF;
    INSERT INTO agency_slots AS s (holder, agency_id, lease_until) VALUES (p_holder, p_agency, p_lease)
        ON CONFLICT (holder) DO UPDATE SET agency_id = excluded.agency_id, lease_until = excluded.lease_until;
    RETURN QUERY SELECT 1::BIGINT, NULL::BIGINT, 0::BIGINT;
    IF p_transfer IS NOT NULL THEN
        RETURN QUERY SELECT 3::BIGINT, NULL::BIGINT, v_attempts;
    END IF;
END
$$;
