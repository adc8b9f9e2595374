-- Static release archives, content-addressed: one row per SHA-256 however many tenants uploaded it (those
-- are the rows of `releases`). Kept in the database rather than on a replica's disk, so every control
-- replica can hand any release to an edge. BYTEA is PostgreSQL's byte string; SQLite keeps the blob as is.

CREATE TABLE release_data (
    sha256 TEXT PRIMARY KEY,
    data BYTEA NOT NULL,
    created_at BIGINT NOT NULL
);
