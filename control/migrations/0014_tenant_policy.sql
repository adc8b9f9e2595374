-- Hostile tenants (SPEC §7). Per tenant, set by the admin (`PATCH /v1/tenants/{id}`):
-- `upstream_cidrs`: JSON array of CIDRs narrowing the global `--upstream-allow`; NULL: the global policy alone.
-- `quotas`: JSON object of the limits the admin set (`{"sandboxes": 5}`); a missing key or NULL follows the
-- flag default, also when that changes.
ALTER TABLE tenants ADD COLUMN upstream_cidrs TEXT;
ALTER TABLE tenants ADD COLUMN quotas TEXT;
