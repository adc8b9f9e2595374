-- Release archives in chunks of at most 1 MiB (`seq` from 0), so control writes and serves one chunk at
-- a time instead of holding a whole archive (up to `--release-max-bytes`) in memory as one value.
-- `release_data` keeps one row per archive (its existence is what other queries check); a row written
-- from now on has an empty `data`, its bytes are here. A row from before this migration keeps its whole
-- archive in `data` and has no chunks; it is served from there.

CREATE TABLE release_chunks (
    sha256 TEXT NOT NULL,
    seq BIGINT NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (sha256, seq)
);
