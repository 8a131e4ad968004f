-- DPoP (RFC 9449): whether a service registered `dpop_bound_access_tokens` (RFC 9449 §5.2), so its
-- token requests without a DPoP proof are refused. Keep in step with the other backend's 0011_dpop.sql.
ALTER TABLE oauth_clients ADD COLUMN dpop_bound_access_tokens BIGINT NOT NULL DEFAULT 0;
