-- TLS: certificates the edges serve (uploaded or issued by ACME), ACME state per host name, the HTTP-01
-- challenges edges answer, and the ACME account. Private keys live here and in edges' state dirs, both
-- mode 0600; the API never returns them.

CREATE TABLE certificates (
    -- The record's name: an exact host, or a one-label wildcard (`*.example.app`) for uploads.
    hostname TEXT PRIMARY KEY,
    cert_pem TEXT NOT NULL,
    key_pem TEXT NOT NULL,
    -- 'upload' or 'acme'.
    source TEXT NOT NULL,
    -- JSON array of the SAN DNS names.
    names TEXT NOT NULL,
    not_before BIGINT NOT NULL,
    not_after BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE acme_hosts (
    hostname TEXT PRIMARY KEY,
    -- 'pending', 'issued' or 'failed'.
    state TEXT NOT NULL,
    reason TEXT,
    attempts BIGINT NOT NULL,
    -- Unix ms of the next order (retry with backoff, or renewal at two thirds of the lifetime).
    next_attempt_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE acme_challenges (
    token TEXT PRIMARY KEY,
    key_authorization TEXT NOT NULL,
    hostname TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE acme_account (
    -- The directory URL: one account per CA.
    directory TEXT PRIMARY KEY,
    -- instant-acme's AccountCredentials (JSON, holds the account's private key).
    credentials TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
