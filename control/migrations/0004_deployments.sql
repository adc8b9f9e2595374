-- Deployments (published apps), their numbered versions, which one is active and when each was promoted,
-- custom domains, static releases (content-addressed: one file per SHA-256, one row per tenant that
-- uploaded it) and usage counted by edges.

CREATE TABLE deployments (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    name TEXT NOT NULL,
    workspace TEXT NOT NULL,
    active_version_id TEXT,
    created_at BIGINT NOT NULL,
    -- One host `{name}.{workspace}.apps.…` names one deployment, whichever tenant asks.
    UNIQUE (name, workspace)
);
CREATE INDEX deployments_by_tenant ON deployments (tenant_id);

CREATE TABLE deployment_versions (
    id TEXT PRIMARY KEY,
    deployment_id TEXT NOT NULL,
    number BIGINT NOT NULL,
    -- JSON array of "ip:port" (runtime versions).
    instances TEXT,
    -- JSON {path?, interval_ms} (runtime versions).
    health_check TEXT,
    -- Static versions.
    release_sha256 TEXT,
    created_at BIGINT NOT NULL,
    UNIQUE (deployment_id, number)
);

CREATE TABLE deployment_promotions (
    deployment_id TEXT NOT NULL,
    version_id TEXT NOT NULL,
    promoted_at BIGINT NOT NULL
);
CREATE INDEX deployment_promotions_by_deployment ON deployment_promotions (deployment_id, promoted_at);

-- Custom domains: exact hosts, unique across tenants. ACME reads the hostnames from here.
CREATE TABLE deployment_domains (
    hostname TEXT PRIMARY KEY,
    deployment_id TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX deployment_domains_by_deployment ON deployment_domains (deployment_id);

CREATE TABLE releases (
    sha256 TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    size BIGINT NOT NULL,
    files BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (sha256, tenant_id)
);

-- A batch an edge sent: resending it (same edge, same sequence number) adds nothing.
CREATE TABLE usage_batches (
    edge_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (edge_id, seq)
);

CREATE TABLE usage_counts (
    tenant_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    subject_id TEXT NOT NULL,
    -- The sandbox's external_user_id when the batch arrived (kept if the sandbox goes).
    external_user_id TEXT,
    -- Unix ms of the start of the minute.
    minute BIGINT NOT NULL,
    requests BIGINT NOT NULL,
    bytes_out BIGINT NOT NULL
);
CREATE INDEX usage_counts_by_tenant ON usage_counts (tenant_id, minute);
