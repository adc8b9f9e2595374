-- ACME orders placed, per tenant: the budget (`--acme-orders-per-hour`) counts the last hour's rows.
CREATE TABLE acme_orders (
    tenant_id TEXT NOT NULL,
    hostname TEXT NOT NULL,
    ordered_at BIGINT NOT NULL
);
CREATE INDEX acme_orders_by_tenant ON acme_orders (tenant_id, ordered_at);
