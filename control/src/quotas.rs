//! Per-tenant quotas on live objects (SPEC §7 "Quotas"): defaults from flags, overridden per tenant by
//! the admin (`PATCH /v1/tenants/{id}`), checked when an object is created.
//!
//! A check counts and inserts inside the same [`crate::db::Write`] transaction. Every `Write` first bumps
//! the single feed-counter row, so writers are serialised (SQLite's write lock, PostgreSQL's row lock):
//! two creates racing for the last slot run one after the other, and the second counts the first.

use serde::{Deserialize, Serialize};
use sqlx::{AnyConnection, AnyPool};
use utoipa::ToSchema;

use crate::error::{ApiError, ApiResult};

const GIB: u64 = 1024 * 1024 * 1024;

/// A tenant's limits in force: live objects (deleted ones free their slot) and bytes of stored releases.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct Quotas {
    pub sandboxes: u64,
    pub previews: u64,
    pub deployments: u64,
    pub custom_domains: u64,
    /// Bytes of the tenant's uploaded releases, all together.
    pub release_bytes: u64,
}

impl Default for Quotas {
    /// The flags' defaults (`--quota-*`).
    fn default() -> Self {
        Self {
            sandboxes: 1000,
            previews: 10_000,
            deployments: 100,
            custom_domains: 100,
            release_bytes: 10 * GIB,
        }
    }
}

/// What the admin set for one tenant, as stored: an absent field follows the flag default, also when
/// that default changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandboxes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previews: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployments: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_domains: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_bytes: Option<u64>,
}

impl QuotaOverrides {
    pub fn apply(&self, defaults: Quotas) -> Quotas {
        Quotas {
            sandboxes: self.sandboxes.unwrap_or(defaults.sandboxes),
            previews: self.previews.unwrap_or(defaults.previews),
            deployments: self.deployments.unwrap_or(defaults.deployments),
            custom_domains: self.custom_domains.unwrap_or(defaults.custom_domains),
            release_bytes: self.release_bytes.unwrap_or(defaults.release_bytes),
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// What a quota limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    Sandboxes,
    Previews,
    Deployments,
    CustomDomains,
    ReleaseBytes,
}

impl Resource {
    /// The quota's name, as in the API.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sandboxes => "sandboxes",
            Self::Previews => "previews",
            Self::Deployments => "deployments",
            Self::CustomDomains => "custom_domains",
            Self::ReleaseBytes => "release_bytes",
        }
    }

    fn limit(self, q: &Quotas) -> u64 {
        match self {
            Self::Sandboxes => q.sandboxes,
            Self::Previews => q.previews,
            Self::Deployments => q.deployments,
            Self::CustomDomains => q.custom_domains,
            Self::ReleaseBytes => q.release_bytes,
        }
    }

    /// How much the tenant (`$1`) uses now. `SUM` is cast: PostgreSQL sums BIGINT into NUMERIC.
    fn usage_sql(self) -> &'static str {
        match self {
            Self::Sandboxes => "SELECT COUNT(*) FROM sandboxes WHERE tenant_id = $1",
            Self::Previews => "SELECT COUNT(*) FROM previews WHERE tenant_id = $1",
            Self::Deployments => "SELECT COUNT(*) FROM deployments WHERE tenant_id = $1",
            Self::CustomDomains => "SELECT COUNT(*) FROM deployment_domains WHERE tenant_id = $1",
            Self::ReleaseBytes => {
                "SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM releases WHERE tenant_id = $1"
            }
        }
    }
}

/// Whether `adding` more fits under `limit` when `used` is taken: the 409 `quota_exceeded` if not.
pub fn fits(resource: Resource, limit: u64, used: u64, adding: u64) -> ApiResult<()> {
    if used.saturating_add(adding) <= limit {
        return Ok(());
    }
    Err(ApiError::QuotaExceeded(match resource {
        Resource::ReleaseBytes => format!(
            "release_bytes quota is {limit} bytes: the tenant's releases hold {used} and this one has {adding}; \
             ask the admin to raise it"
        ),
        _ => format!(
            "{} quota is {limit}: the tenant has {used}; delete one or ask the admin to raise it",
            resource.name()
        ),
    }))
}

/// The tenant's quotas in force: its overrides over `defaults`.
pub async fn of_tenant(conn: &mut AnyConnection, tenant_id: &str, defaults: Quotas) -> ApiResult<Quotas> {
    let stored: Option<Option<String>> = sqlx::query_scalar("SELECT quotas FROM tenants WHERE id = $1")
        .bind(tenant_id)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(parse(stored.flatten().as_deref())?.apply(defaults))
}

/// The stored column: NULL (or `null`) is no override.
pub fn parse(text: Option<&str>) -> ApiResult<QuotaOverrides> {
    match text {
        None => Ok(QuotaOverrides::default()),
        Some(t) => serde_json::from_str::<Option<QuotaOverrides>>(t)
            .map(Option::unwrap_or_default)
            .map_err(|e| ApiError::Internal(format!("bad quotas JSON in the database: {e}"))),
    }
}

/// Checks, inside the caller's write transaction, that the tenant may add `adding` of `resource`.
pub async fn check(
    conn: &mut AnyConnection,
    defaults: Quotas,
    tenant_id: &str,
    resource: Resource,
    adding: u64,
) -> ApiResult<()> {
    let quotas = of_tenant(conn, tenant_id, defaults).await?;
    let used: i64 = sqlx::query_scalar(resource.usage_sql()).bind(tenant_id).fetch_one(&mut *conn).await?;
    fits(resource, resource.limit(&quotas), u64::try_from(used).unwrap_or(0), adding)
}

/// Before a release is stored: whether `bytes` more fit the tenant's `release_bytes` (a release it has
/// already uploaded adds nothing).
pub async fn release_fits(
    pool: &AnyPool,
    defaults: Quotas,
    tenant_id: &str,
    sha256: &str,
    bytes: u64,
) -> ApiResult<()> {
    let mut conn = pool.acquire().await?;
    let known: Option<String> =
        sqlx::query_scalar("SELECT sha256 FROM releases WHERE sha256 = $1 AND tenant_id = $2")
            .bind(sha256)
            .bind(tenant_id)
            .fetch_optional(&mut *conn)
            .await?;
    if known.is_some() {
        return Ok(());
    }
    check(&mut conn, defaults, tenant_id, Resource::ReleaseBytes, bytes).await
}

/// After the tenant's release row went in (uploads are not serialised like other writes): if the total is
/// now over the quota, the row is taken back out and the upload refused. Two uploads racing past the limit
/// may then both be refused, never both kept.
pub async fn release_recheck(
    pool: &AnyPool,
    defaults: Quotas,
    tenant_id: &str,
    sha256: &str,
    bytes: u64,
) -> ApiResult<()> {
    let mut conn = pool.acquire().await?;
    let quotas = of_tenant(&mut conn, tenant_id, defaults).await?;
    let used: i64 =
        sqlx::query_scalar(Resource::ReleaseBytes.usage_sql()).bind(tenant_id).fetch_one(&mut *conn).await?;
    let used = u64::try_from(used).unwrap_or(0);
    if used <= quotas.release_bytes {
        return Ok(());
    }
    sqlx::query("DELETE FROM releases WHERE sha256 = $1 AND tenant_id = $2")
        .bind(sha256)
        .bind(tenant_id)
        .execute(&mut *conn)
        .await?;
    fits(Resource::ReleaseBytes, quotas.release_bytes, used.saturating_sub(bytes), bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_fall_back_to_the_defaults_field_by_field() {
        let o = QuotaOverrides { sandboxes: Some(2), release_bytes: Some(0), ..Default::default() };
        let q = o.apply(Quotas::default());
        assert_eq!(q.sandboxes, 2);
        assert_eq!(q.release_bytes, 0);
        assert_eq!(q.previews, Quotas::default().previews);
        assert_eq!(parse(Some("null")).expect("null"), QuotaOverrides::default());
        assert_eq!(parse(None).expect("none"), QuotaOverrides::default());
        let text = serde_json::to_string(&o).expect("json");
        assert_eq!(text, r#"{"sandboxes":2,"release_bytes":0}"#);
        assert_eq!(parse(Some(&text)).expect("round trip"), o);
    }

    #[test]
    fn the_limit_itself_fits_one_more_does_not() {
        assert!(fits(Resource::Sandboxes, 2, 1, 1).is_ok());
        let err = fits(Resource::Sandboxes, 2, 2, 1).expect_err("over");
        assert!(matches!(&err, ApiError::QuotaExceeded(m) if m.contains("sandboxes quota is 2")), "{err}");
        assert!(fits(Resource::ReleaseBytes, 10, 4, 6).is_ok());
        assert!(fits(Resource::ReleaseBytes, 10, 4, 7).is_err());
        assert!(fits(Resource::Previews, 0, 0, 1).is_err());
    }
}
