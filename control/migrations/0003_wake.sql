-- Waking hibernated sandboxes. `wake_started_at` (unix ms) marks who holds a wake: a control replica only
-- calls the orchestrator after moving the sandbox to `waking` itself, and a `waking` state older than the
-- orchestrator timeout is stale (its replica died mid-wake) and may be taken over.
ALTER TABLE sandboxes ADD COLUMN wake_started_at BIGINT;

-- `GET /v1/sandboxes?idle_for=` scans a tenant's sandboxes by state.
CREATE INDEX sandboxes_by_tenant_state ON sandboxes (tenant_id, state);
