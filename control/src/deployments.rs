//! Deployments as stored, and the record edges route them with: the active version (runtime instances or
//! a static release) and the custom domains, carried whole in one feed change.

use std::collections::HashMap;

use portico_wire::{self as wire, HealthCheck, VersionTarget};
use sqlx::AnyConnection;

use crate::db::{Kind, Write};
use crate::error::{ApiError, ApiResult};

pub const DEPLOYMENT_COLUMNS: &str = "id, tenant_id, name, workspace, active_version_id, created_at";

#[derive(Debug, sqlx::FromRow)]
pub struct DeploymentRow {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub workspace: String,
    pub active_version_id: Option<String>,
    pub created_at: i64,
}

pub const VERSION_COLUMNS: &str =
    "id, deployment_id, number, instances, health_check, release_sha256, created_at";

#[derive(Debug, sqlx::FromRow)]
pub struct VersionRow {
    pub id: String,
    pub deployment_id: String,
    pub number: i64,
    pub instances: Option<String>,
    pub health_check: Option<String>,
    pub release_sha256: Option<String>,
    pub created_at: i64,
}

impl VersionRow {
    pub fn target(&self) -> ApiResult<VersionTarget> {
        if let Some(sha256) = &self.release_sha256 {
            return Ok(VersionTarget::Release { sha256: sha256.clone() });
        }
        let bad = |e: serde_json::Error| ApiError::Internal(format!("bad version JSON in the database: {e}"));
        let instances: Vec<String> =
            serde_json::from_str(self.instances.as_deref().unwrap_or("[]")).map_err(bad)?;
        let health_check: Option<HealthCheck> =
            self.health_check.as_deref().map(serde_json::from_str).transpose().map_err(bad)?;
        Ok(VersionTarget::Runtime { instances, health_check })
    }

    pub fn number(&self) -> u64 {
        u64::try_from(self.number).unwrap_or_default()
    }

    fn to_active(&self) -> ApiResult<wire::ActiveVersion> {
        Ok(wire::ActiveVersion { id: self.id.clone(), number: self.number(), target: self.target()? })
    }
}

pub async fn deployment(conn: &mut AnyConnection, id: &str) -> ApiResult<Option<DeploymentRow>> {
    let sql = format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE id = $1");
    Ok(sqlx::query_as(&sql).bind(id).fetch_optional(conn).await?)
}

pub async fn version(conn: &mut AnyConnection, id: &str) -> ApiResult<Option<VersionRow>> {
    let sql = format!("SELECT {VERSION_COLUMNS} FROM deployment_versions WHERE id = $1");
    Ok(sqlx::query_as(&sql).bind(id).fetch_optional(conn).await?)
}

pub async fn domains(conn: &mut AnyConnection, deployment_id: &str) -> ApiResult<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT hostname FROM deployment_domains WHERE deployment_id = $1 ORDER BY hostname",
    )
    .bind(deployment_id)
    .fetch_all(conn)
    .await?)
}

/// A custom domain with its ownership proof: the TXT value asked for, and when it was found.
#[derive(Debug, sqlx::FromRow)]
pub struct DomainRow {
    pub deployment_id: String,
    pub verification_value: String,
    pub verified_at: Option<i64>,
}

pub const DOMAIN_COLUMNS: &str = "deployment_id, verification_value, verified_at";

pub async fn domain(conn: &mut AnyConnection, hostname: &str) -> ApiResult<Option<DomainRow>> {
    let sql = format!("SELECT {DOMAIN_COLUMNS} FROM deployment_domains WHERE hostname = $1");
    Ok(sqlx::query_as(&sql).bind(hostname).fetch_optional(conn).await?)
}

/// Splits `(hostname, verified)` rows into the routed and the not-yet-proven hosts.
fn split(rows: impl IntoIterator<Item = (String, bool)>) -> (Vec<String>, Vec<String>) {
    let (verified, unverified): (Vec<_>, Vec<_>) = rows.into_iter().partition(|(_, v)| *v);
    (verified.into_iter().map(|(h, _)| h).collect(), unverified.into_iter().map(|(h, _)| h).collect())
}

/// The edge's record of one deployment, or `None` when it is gone.
pub async fn wire_deployment(conn: &mut AnyConnection, id: &str) -> ApiResult<Option<wire::Deployment>> {
    let Some(row) = deployment(&mut *conn, id).await? else { return Ok(None) };
    let active = match &row.active_version_id {
        Some(v) => version(&mut *conn, v).await?.map(|v| v.to_active()).transpose()?,
        None => None,
    };
    let rows: Vec<(String, Option<i64>)> = sqlx::query_as(
        "SELECT hostname, verified_at FROM deployment_domains WHERE deployment_id = $1 ORDER BY hostname",
    )
    .bind(id)
    .fetch_all(conn)
    .await?;
    let (domains, unverified_domains) = split(rows.into_iter().map(|(h, v)| (h, v.is_some())));
    Ok(Some(wire::Deployment {
        id: row.id,
        tenant_id: row.tenant_id,
        app: row.name,
        workspace: row.workspace,
        domains,
        unverified_domains,
        active,
    }))
}

/// Every deployment, for a whole snapshot: three queries however many there are.
pub async fn all(conn: &mut AnyConnection) -> ApiResult<Vec<wire::Deployment>> {
    let rows: Vec<DeploymentRow> =
        sqlx::query_as(&format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments ORDER BY id"))
            .fetch_all(&mut *conn)
            .await?;
    let cols = VERSION_COLUMNS.split(", ").map(|c| format!("v.{c}")).collect::<Vec<_>>().join(", ");
    let active: Vec<VersionRow> = sqlx::query_as(&format!(
        "SELECT {cols} FROM deployment_versions v JOIN deployments d ON d.active_version_id = v.id"
    ))
    .fetch_all(&mut *conn)
    .await?;
    let mut active: HashMap<String, VersionRow> = active.into_iter().map(|v| (v.id.clone(), v)).collect();
    let domain_rows: Vec<(String, String, Option<i64>)> = sqlx::query_as(
        "SELECT hostname, deployment_id, verified_at FROM deployment_domains ORDER BY hostname",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut domains: HashMap<String, Vec<(String, bool)>> = HashMap::new();
    for (host, deployment, verified_at) in domain_rows {
        domains.entry(deployment).or_default().push((host, verified_at.is_some()));
    }
    rows.into_iter()
        .map(|row| {
            let active = row.active_version_id.as_ref().and_then(|v| active.remove(v)).map(|v| v.to_active());
            let (domains, unverified_domains) = split(domains.remove(&row.id).unwrap_or_default());
            Ok(wire::Deployment {
                domains,
                unverified_domains,
                active: active.transpose()?,
                id: row.id,
                tenant_id: row.tenant_id,
                app: row.name,
                workspace: row.workspace,
            })
        })
        .collect()
}

/// Removes a deployment with its versions, history and domains, in the caller's write.
pub async fn delete(write: &mut Write, id: &str) -> ApiResult<()> {
    for sql in [
        "DELETE FROM deployment_domains WHERE deployment_id = $1",
        "DELETE FROM deployment_promotions WHERE deployment_id = $1",
        "DELETE FROM deployment_versions WHERE deployment_id = $1",
        "DELETE FROM deployments WHERE id = $1",
    ] {
        sqlx::query(sql).bind(id).execute(write.conn()).await?;
    }
    write.touch(Kind::Deployment, id);
    Ok(())
}

/// A deleted tenant's deployments go with it, freeing their hosts and domains.
pub async fn delete_for_tenant(write: &mut Write, tenant_id: &str) -> ApiResult<()> {
    let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM deployments WHERE tenant_id = $1")
        .bind(tenant_id)
        .fetch_all(write.conn())
        .await?;
    for id in ids {
        delete(write, &id).await?;
    }
    sqlx::query("DELETE FROM releases WHERE tenant_id = $1").bind(tenant_id).execute(write.conn()).await?;
    Ok(())
}
