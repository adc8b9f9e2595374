-- Custom domains prove ownership before they route: a TXT record `_portico-challenge.<hostname>` must hold
-- `verification_value`. Rows added before this migration have an empty value and stay unverified: a
-- fresh value is generated when the tenant adds the domain again (they were never proven theirs).
ALTER TABLE deployment_domains ADD COLUMN verification_value TEXT NOT NULL DEFAULT '';
ALTER TABLE deployment_domains ADD COLUMN verified_at BIGINT;
