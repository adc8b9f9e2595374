-- Portable across SQLite and PostgreSQL (through sqlx::Any): TEXT ids, BIGINT unix milliseconds,
-- JSON kept as TEXT, no auto-increment. Cascades are done in code so that each one emits a feed change.

CREATE TABLE feed_state (
    id BIGINT PRIMARY KEY,
    version BIGINT NOT NULL
);
INSERT INTO feed_state (id, version) VALUES (1, 0);

CREATE TABLE changes (
    version BIGINT NOT NULL,
    kind TEXT NOT NULL,
    object_id TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX changes_by_version ON changes (version);

CREATE TABLE settings (
    id BIGINT PRIMARY KEY,
    body TEXT NOT NULL
);

CREATE TABLE tenants (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    api_key_sha256 TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    branding TEXT,
    frame_ancestors TEXT,
    rate_limits TEXT NOT NULL,
    preview_domain TEXT UNIQUE,
    preview_domain_status TEXT
);

CREATE TABLE sandboxes (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    address TEXT NOT NULL,
    state TEXT NOT NULL,
    default_visibility TEXT NOT NULL,
    wake_policy TEXT NOT NULL,
    preview_auth_sha256 TEXT,
    external_user_id TEXT,
    external_project_id TEXT,
    metadata TEXT,
    created_at BIGINT NOT NULL,
    last_request_at BIGINT
);
CREATE INDEX sandboxes_by_tenant ON sandboxes (tenant_id);

CREATE TABLE previews (
    id TEXT PRIMARY KEY,
    slug TEXT NOT NULL UNIQUE,
    tenant_id TEXT NOT NULL,
    sandbox_id TEXT NOT NULL,
    port BIGINT NOT NULL,
    visibility TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (sandbox_id, port)
);
CREATE INDEX previews_by_tenant ON previews (tenant_id);
