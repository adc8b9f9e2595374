-- Credentials: the keys preview tokens are signed with, minted preview tokens (their ids and expiry only:
-- the token itself is never stored), and share links (their SHA-256 only).

CREATE TABLE signing_keys (
    kid TEXT PRIMARY KEY,
    -- Ed25519 PKCS#8 document, base64url. The database file is mode 0600.
    private_pkcs8 TEXT NOT NULL,
    public_key TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    retired_at BIGINT
);

CREATE TABLE preview_tokens (
    jti TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    sandbox_id TEXT NOT NULL,
    port BIGINT,
    -- Unix seconds.
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX preview_tokens_by_expiry ON preview_tokens (expires_at);

CREATE TABLE shares (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    preview_id TEXT NOT NULL,
    sha256 TEXT NOT NULL UNIQUE,
    token_prefix TEXT NOT NULL,
    -- Unix seconds; NULL: until revoked.
    expires_at BIGINT,
    password_hash TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX shares_by_preview ON shares (preview_id);

CREATE INDEX sandboxes_by_preview_auth ON sandboxes (preview_auth_sha256);

-- CORS preflights carry no credential; a sandbox may let them through (SPEC §4 step 3).
ALTER TABLE sandboxes ADD COLUMN allow_preflight BIGINT NOT NULL DEFAULT 0;
