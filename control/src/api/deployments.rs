//! Deployments: published apps at `{app}.{workspace}.apps.…` and their custom domains, serving the active
//! version. Promoting an older version is a rollback; either is one feed change, in force at every edge
//! within a second.

use std::net::SocketAddr;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use portico_wire::{ids, normalize_host, HealthCheck, VersionTarget};
use serde::{Deserialize, Serialize};
use sqlx::AnyConnection;
use utoipa::ToSchema;

use super::doc::{
    BadRequest, Conflict, Forbidden, Internal, InvalidField, NotFound, PayloadTooLarge, Unauthorized,
};
use super::{owned, timestamp};
use crate::auth::TenantKey;
use crate::certificates::CertificateStatus;
use crate::db::{now_ms, Kind, Write};
use crate::deployments::{self, DeploymentRow, VersionRow, DEPLOYMENT_COLUMNS, VERSION_COLUMNS};
use crate::error::{ApiError, ApiJson, ApiResult, PathId};
use crate::quotas::{self, Resource};
use crate::releases::is_release_id;
use crate::state::App;
use crate::{keys, validate};

const MAX_INSTANCES: usize = 64;
const DEFAULT_INTERVAL_MS: u64 = 1000;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDeployment {
    /// A DNS label: the app's name in `{app}.{workspace}`.
    name: String,
    /// A DNS label.
    workspace: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckBody {
    /// `GET` this path expecting 2xx/3xx; a TCP connect when absent.
    #[serde(default)]
    path: Option<String>,
    /// 100 to 3600000; 1000 when absent.
    #[serde(default)]
    interval_ms: Option<u64>,
}

/// Either `instances` (with an optional `health_check`) or `release`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVersion {
    /// 1 to 64 `"ip:port"`.
    #[serde(default)]
    instances: Option<Vec<String>>,
    #[serde(default)]
    health_check: Option<HealthCheckBody>,
    /// The SHA-256 of a release this tenant uploaded.
    #[serde(default)]
    release: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Promote {
    version_id: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddDomain {
    hostname: String,
}

/// A deployment as the API shows it.
#[derive(Serialize, ToSchema)]
pub struct DeploymentView {
    id: String,
    name: String,
    workspace: String,
    /// `{app}.{workspace}.…`; empty when no deployment host template is configured.
    hostname: String,
    /// `null` until a version is promoted.
    active_version: Option<VersionView>,
    versions: Vec<VersionView>,
    /// Every promotion, oldest first.
    history: Vec<Promotion>,
    domains: Vec<DomainView>,
    created_at: String,
}

/// A version: `instances` and `health_check`, or `release`.
#[derive(Serialize, ToSchema)]
pub struct VersionView {
    id: String,
    /// 1, 2, … per deployment.
    number: u64,
    created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    instances: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<HealthCheck>)]
    health_check: Option<Option<HealthCheck>>,
    /// The release's SHA-256.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    release: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Promotion {
    version_id: String,
    number: Option<u64>,
    promoted_at: String,
}

/// A custom domain and its certificate.
#[derive(Serialize, ToSchema)]
pub struct DomainView {
    hostname: String,
    certificate: Option<CertificateStatus>,
}

/// A custom domain as added: it routes once `verification` is found in DNS.
#[derive(Serialize, ToSchema)]
pub struct DomainAdded {
    hostname: String,
    /// `pending` or `verified`.
    status: &'static str,
    verification: Verification,
}

/// The TXT record that proves a custom domain is the tenant's.
#[derive(Serialize, ToSchema)]
pub struct Verification {
    /// Always `TXT`.
    #[serde(rename = "type")]
    kind: &'static str,
    /// `_portico-challenge.<hostname>`
    name: String,
    value: String,
}

impl DomainAdded {
    fn new(hostname: String, value: String, verified: bool) -> Self {
        Self {
            verification: Verification { kind: "TXT", name: format!("_portico-challenge.{hostname}"), value },
            hostname,
            status: if verified { "verified" } else { "pending" },
        }
    }
}

fn hostname(app: &App, row: &DeploymentRow) -> String {
    app.app_template.as_ref().map(|t| t.render(None, "", "", &row.name, &row.workspace)).unwrap_or_default()
}

fn version_view(v: &VersionRow) -> ApiResult<VersionView> {
    let mut body = VersionView {
        id: v.id.clone(),
        number: v.number(),
        created_at: timestamp(v.created_at),
        instances: None,
        health_check: None,
        release: None,
    };
    match v.target()? {
        VersionTarget::Runtime { instances, health_check } => {
            body.instances = Some(instances);
            body.health_check = Some(health_check);
        }
        VersionTarget::Release { sha256 } => body.release = Some(sha256),
    }
    Ok(body)
}

async fn view(app: &App, conn: &mut AnyConnection, row: &DeploymentRow) -> ApiResult<DeploymentView> {
    let versions: Vec<VersionRow> = sqlx::query_as(&format!(
        "SELECT {VERSION_COLUMNS} FROM deployment_versions WHERE deployment_id = $1 ORDER BY number"
    ))
    .bind(&row.id)
    .fetch_all(&mut *conn)
    .await?;
    let history: Vec<(String, i64)> = sqlx::query_as(
        "SELECT version_id, promoted_at FROM deployment_promotions WHERE deployment_id = $1 ORDER BY promoted_at",
    )
    .bind(&row.id)
    .fetch_all(&mut *conn)
    .await?;
    let number = |id: &str| versions.iter().find(|v| v.id == id).map(VersionRow::number);
    let active = row.active_version_id.as_deref().and_then(|id| versions.iter().find(|v| v.id == id));
    let mut domains = Vec::new();
    for hostname in deployments::domains(conn, &row.id).await? {
        let certificate = crate::certificates::status(conn, &hostname).await?;
        domains.push(DomainView { hostname, certificate });
    }
    Ok(DeploymentView {
        id: row.id.clone(),
        name: row.name.clone(),
        workspace: row.workspace.clone(),
        hostname: hostname(app, row),
        active_version: active.map(version_view).transpose()?,
        versions: versions.iter().map(version_view).collect::<ApiResult<Vec<_>>>()?,
        history: history
            .iter()
            .map(|(id, at)| Promotion {
                version_id: id.clone(),
                number: number(id),
                promoted_at: timestamp(*at),
            })
            .collect(),
        domains,
        created_at: timestamp(row.created_at),
    })
}

async fn load_owned(conn: &mut AnyConnection, tenant_id: &str, id: &str) -> ApiResult<DeploymentRow> {
    owned(deployments::deployment(conn, id).await?, |d| d.tenant_id.as_str(), tenant_id, "deployment")
}

#[utoipa::path(
    post,
    operation_id = "deployments_create",
    path = "/v1/deployments",
    tag = "deployments",
    summary = "Create a deployment",
    security(("tenant_key" = [])),
    request_body = CreateDeployment,
    responses(
        (status = 201, description = "Created", body = DeploymentView),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 409, response = Conflict),
        (status = 413, response = PayloadTooLarge),
        (status = 422, response = InvalidField),
        (status = 500, response = Internal),
    )
)]
pub async fn create(
    State(app): State<App>,
    key: TenantKey,
    ApiJson(body): ApiJson<CreateDeployment>,
) -> ApiResult<Response> {
    for (field, value) in [("name", &body.name), ("workspace", &body.workspace)] {
        if !ids::is_dns_label(value) {
            return Err(ApiError::invalid(
                field,
                "must be lowercase letters, digits and '-', 1 to 63 characters",
            ));
        }
    }
    let mut write = Write::begin(&app.pool).await?;
    let clash: Option<String> =
        sqlx::query_scalar("SELECT id FROM deployments WHERE name = $1 AND workspace = $2")
            .bind(&body.name)
            .bind(&body.workspace)
            .fetch_optional(write.conn())
            .await?;
    if clash.is_some() {
        return Err(ApiError::Conflict(format!("{}.{} is already taken", body.name, body.workspace)));
    }
    quotas::check(write.conn(), app.quotas, &key.tenant_id, Resource::Deployments, 1).await?;
    let row = DeploymentRow {
        id: format!("dp_{}", keys::random_alnum(16)),
        tenant_id: key.tenant_id,
        name: body.name,
        workspace: body.workspace,
        active_version_id: None,
        created_at: now_ms(),
    };
    sqlx::query(&format!("INSERT INTO deployments ({DEPLOYMENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)"))
        .bind(&row.id)
        .bind(&row.tenant_id)
        .bind(&row.name)
        .bind(&row.workspace)
        .bind(&row.active_version_id)
        .bind(row.created_at)
        .execute(write.conn())
        .await?;
    write.touch(Kind::Deployment, &row.id);
    let body = view(&app, write.conn(), &row).await?;
    write.commit(&app.notify).await?;
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

#[utoipa::path(
    get,
    operation_id = "deployments_list",
    path = "/v1/deployments",
    tag = "deployments",
    summary = "List the caller's deployments",
    security(("tenant_key" = [])),
    responses(
        (status = 200, description = "The deployments, oldest first", body = [DeploymentView]),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 500, response = Internal),
    )
)]
pub async fn list(State(app): State<App>, key: TenantKey) -> ApiResult<Json<Vec<DeploymentView>>> {
    let mut conn = app.pool.acquire().await?;
    let rows: Vec<DeploymentRow> = sqlx::query_as(&format!(
        "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE tenant_id = $1 ORDER BY created_at, id"
    ))
    .bind(&key.tenant_id)
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        out.push(view(&app, &mut conn, row).await?);
    }
    Ok(Json(out))
}

#[utoipa::path(
    get,
    operation_id = "deployments_show",
    path = "/v1/deployments/{id}",
    tag = "deployments",
    summary = "Show a deployment with its versions, history and domains",
    security(("tenant_key" = [])),
    params(("id" = String, Path, description = "The deployment's id (`dp_…`)")),
    responses(
        (status = 200, description = "The deployment", body = DeploymentView),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 500, response = Internal),
    )
)]
pub async fn show(
    State(app): State<App>,
    key: TenantKey,
    PathId(id): PathId,
) -> ApiResult<Json<DeploymentView>> {
    let mut conn = app.pool.acquire().await?;
    let row = load_owned(&mut conn, &key.tenant_id, &id).await?;
    Ok(Json(view(&app, &mut conn, &row).await?))
}

#[utoipa::path(
    delete,
    operation_id = "deployments_delete",
    path = "/v1/deployments/{id}",
    tag = "deployments",
    summary = "Delete a deployment: its hosts stop routing",
    security(("tenant_key" = [])),
    params(("id" = String, Path, description = "The deployment's id (`dp_…`)")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 500, response = Internal),
    )
)]
pub async fn delete(State(app): State<App>, key: TenantKey, PathId(id): PathId) -> ApiResult<StatusCode> {
    let mut write = Write::begin(&app.pool).await?;
    load_owned(write.conn(), &key.tenant_id, &id).await?;
    deployments::delete(&mut write, &id).await?;
    write.commit(&app.notify).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Checks a version body into what is stored: instances + health check, or a release this tenant uploaded.
async fn target(
    app: &App,
    conn: &mut AnyConnection,
    tenant_id: &str,
    body: CreateVersion,
) -> ApiResult<VersionTarget> {
    match (body.instances, body.release) {
        (Some(instances), None) => {
            if instances.is_empty() || instances.len() > MAX_INSTANCES {
                return Err(ApiError::invalid(
                    "instances",
                    format!("must list 1 to {MAX_INSTANCES} \"ip:port\""),
                ));
            }
            let narrow = crate::db::tenant_upstream(&mut *conn, tenant_id).await?;
            let mut canonical = Vec::with_capacity(instances.len());
            for (i, instance) in instances.iter().enumerate() {
                let field = format!("instances[{i}]");
                match instance.parse::<SocketAddr>() {
                    Ok(addr) if addr.port() != 0 => {
                        let ip = addr.ip().to_string();
                        validate::upstream_address(&field, &ip, &app.upstream_allow, narrow.as_deref())?;
                        canonical.push(addr.to_string());
                    }
                    _ => return Err(ApiError::invalid(&field, "must be \"ip:port\"")),
                }
            }
            let health_check = body.health_check.map(health_check).transpose()?;
            Ok(VersionTarget::Runtime { instances: canonical, health_check })
        }
        (None, Some(sha256)) => {
            if body.health_check.is_some() {
                return Err(ApiError::invalid("health_check", "only applies to instances"));
            }
            let sha256 = sha256.to_ascii_lowercase();
            if !is_release_id(&sha256) {
                return Err(ApiError::invalid("release", "must be the SHA-256 (hex) of an uploaded release"));
            }
            let known: Option<String> =
                sqlx::query_scalar("SELECT sha256 FROM releases WHERE sha256 = $1 AND tenant_id = $2")
                    .bind(&sha256)
                    .bind(tenant_id)
                    .fetch_optional(conn)
                    .await?;
            if known.is_none() {
                return Err(ApiError::invalid("release", "not uploaded: PUT /v1/releases/{sha256} first"));
            }
            Ok(VersionTarget::Release { sha256 })
        }
        _ => Err(ApiError::invalid("body", "give either instances or release")),
    }
}

fn health_check(body: HealthCheckBody) -> ApiResult<HealthCheck> {
    let interval_ms = body.interval_ms.unwrap_or(DEFAULT_INTERVAL_MS);
    if !(100..=3_600_000).contains(&interval_ms) {
        return Err(ApiError::invalid("health_check.interval_ms", "must be between 100 and 3600000"));
    }
    if let Some(path) = &body.path {
        let printable = path.bytes().all(|b| b.is_ascii_graphic());
        if !path.starts_with('/') || path.len() > 1024 || !printable {
            return Err(ApiError::invalid("health_check.path", "must be an absolute path such as /healthz"));
        }
    }
    Ok(HealthCheck { path: body.path, interval_ms })
}

#[utoipa::path(
    post,
    operation_id = "deployments_create_version",
    path = "/v1/deployments/{id}/versions",
    tag = "deployments",
    summary = "Add a version (instances or a release); promote it to serve it",
    security(("tenant_key" = [])),
    params(("id" = String, Path, description = "The deployment's id (`dp_…`)")),
    request_body = CreateVersion,
    responses(
        (status = 201, description = "Created", body = VersionView),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 413, response = PayloadTooLarge),
        (status = 422, response = InvalidField),
        (status = 500, response = Internal),
    )
)]
pub async fn create_version(
    State(app): State<App>,
    key: TenantKey,
    PathId(id): PathId,
    ApiJson(body): ApiJson<CreateVersion>,
) -> ApiResult<Response> {
    // A write, although edges see nothing until a promote: it serialises version numbering.
    let mut write = Write::begin(&app.pool).await?;
    load_owned(write.conn(), &key.tenant_id, &id).await?;
    let target = target(&app, write.conn(), &key.tenant_id, body).await?;
    let last: Option<i64> =
        sqlx::query_scalar("SELECT MAX(number) FROM deployment_versions WHERE deployment_id = $1")
            .bind(&id)
            .fetch_one(write.conn())
            .await?;
    let (instances, health_check, release) = match &target {
        VersionTarget::Runtime { instances, health_check } => {
            (Some(to_json(instances)?), health_check.as_ref().map(to_json).transpose()?, None)
        }
        VersionTarget::Release { sha256 } => (None, None, Some(sha256.clone())),
    };
    let row = VersionRow {
        id: format!("dv_{}", keys::random_alnum(16)),
        deployment_id: id,
        number: last.unwrap_or(0) + 1,
        instances,
        health_check,
        release_sha256: release,
        created_at: now_ms(),
    };
    sqlx::query(&format!(
        "INSERT INTO deployment_versions ({VERSION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
    ))
    .bind(&row.id)
    .bind(&row.deployment_id)
    .bind(row.number)
    .bind(&row.instances)
    .bind(&row.health_check)
    .bind(&row.release_sha256)
    .bind(row.created_at)
    .execute(write.conn())
    .await?;
    write.commit(&app.notify).await?;
    Ok((StatusCode::CREATED, Json(version_view(&row)?)).into_response())
}

fn to_json<T: serde::Serialize>(value: &T) -> ApiResult<String> {
    serde_json::to_string(value).map_err(|e| ApiError::Internal(format!("serialising a version: {e}")))
}

#[utoipa::path(
    post,
    operation_id = "deployments_promote",
    path = "/v1/deployments/{id}/promote",
    tag = "deployments",
    summary = "Serve a version (a rollback when it is an older one)",
    security(("tenant_key" = [])),
    params(("id" = String, Path, description = "The deployment's id (`dp_…`)")),
    request_body = Promote,
    responses(
        (status = 200, description = "The deployment, serving the version", body = DeploymentView),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 413, response = PayloadTooLarge),
        (status = 422, response = InvalidField),
        (status = 500, response = Internal),
    )
)]
pub async fn promote(
    State(app): State<App>,
    key: TenantKey,
    PathId(id): PathId,
    ApiJson(body): ApiJson<Promote>,
) -> ApiResult<Json<DeploymentView>> {
    let mut write = Write::begin(&app.pool).await?;
    let mut row = load_owned(write.conn(), &key.tenant_id, &id).await?;
    let version = deployments::version(write.conn(), &body.version_id).await?;
    if version.is_none_or(|v| v.deployment_id != id) {
        return Err(ApiError::invalid("version_id", "no such version of this deployment"));
    }
    sqlx::query("UPDATE deployments SET active_version_id = $1 WHERE id = $2")
        .bind(&body.version_id)
        .bind(&id)
        .execute(write.conn())
        .await?;
    sqlx::query(
        "INSERT INTO deployment_promotions (deployment_id, version_id, promoted_at) VALUES ($1, $2, $3)",
    )
    .bind(&id)
    .bind(&body.version_id)
    .bind(now_ms())
    .execute(write.conn())
    .await?;
    write.touch(Kind::Deployment, &id);
    row.active_version_id = Some(body.version_id);
    let view = view(&app, write.conn(), &row).await?;
    write.commit(&app.notify).await?;
    Ok(Json(view))
}

#[utoipa::path(
    post,
    operation_id = "deployments_add_domain",
    path = "/v1/deployments/{id}/domains",
    tag = "deployments",
    summary = "Add a custom domain",
    security(("tenant_key" = [])),
    params(("id" = String, Path, description = "The deployment's id (`dp_…`)")),
    request_body = AddDomain,
    responses(
        (status = 201, description = "Added", body = DomainAdded),
        (status = 200, description = "This deployment has it already", body = DomainAdded),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 413, response = PayloadTooLarge),
        (status = 422, response = InvalidField),
        (status = 500, response = Internal),
    )
)]
pub async fn add_domain(
    State(app): State<App>,
    key: TenantKey,
    PathId(id): PathId,
    ApiJson(body): ApiJson<AddDomain>,
) -> ApiResult<Response> {
    let host = normalize_host(&body.hostname).unwrap_or_default().to_string();
    if !ids::is_hostname(&host) || host != body.hostname.trim().trim_end_matches('.').to_ascii_lowercase() {
        return Err(ApiError::invalid("hostname", "must be a host name such as app.example.com"));
    }
    // A host a template routes already names something else (possibly another tenant's sandbox).
    if app.templates.iter().any(|t| t.matches(&host).is_some()) {
        return Err(ApiError::invalid("hostname", "is a host Portico routes by its templates"));
    }
    let mut write = Write::begin(&app.pool).await?;
    load_owned(write.conn(), &key.tenant_id, &id).await?;
    // Another tenant's verified preview domain routes every name under it to that tenant (its wildcard DNS
    // points at the edges): a name there is theirs, whoever asks first.
    let preview_domains: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT id, preview_domain, preview_domain_status FROM tenants WHERE preview_domain IS NOT NULL",
    )
    .fetch_all(write.conn())
    .await?;
    for (tenant, domain, status) in &preview_domains {
        let under = host == *domain || host.ends_with(&format!(".{domain}"));
        let verified = status.as_deref() == Some("verified");
        if under && (host == *domain || (verified && *tenant != key.tenant_id)) {
            return Err(ApiError::Conflict(format!("{host} is already in use")));
        }
    }
    if let Some(existing) = deployments::domain(write.conn(), &host).await? {
        if existing.deployment_id != id {
            return Err(ApiError::Conflict(format!("{host} is already in use")));
        }
        // Added before ownership proofs existed: it gets a value to prove now.
        let value = if existing.verification_value.is_empty() {
            let value = new_verification_value();
            sqlx::query("UPDATE deployment_domains SET verification_value = $1 WHERE hostname = $2")
                .bind(&value)
                .bind(&host)
                .execute(write.conn())
                .await?;
            write.commit(&app.notify).await?;
            value
        } else {
            existing.verification_value
        };
        let added = DomainAdded::new(host, value, existing.verified_at.is_some());
        return Ok((StatusCode::OK, Json(added)).into_response());
    }
    quotas::check(write.conn(), app.quotas, &key.tenant_id, Resource::CustomDomains, 1).await?;
    let value = new_verification_value();
    // `.localhost` names resolve to loopback only: nobody else's, nothing to prove (local try-outs).
    let verified_at = (host == "localhost" || host.ends_with(".localhost")).then(now_ms);
    sqlx::query(
        "INSERT INTO deployment_domains (hostname, deployment_id, tenant_id, created_at, verification_value, verified_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&host)
    .bind(&id)
    .bind(&key.tenant_id)
    .bind(now_ms())
    .bind(&value)
    .bind(verified_at)
    .execute(write.conn())
    .await?;
    write.touch(Kind::Deployment, &id);
    write.commit(&app.notify).await?;
    Ok((StatusCode::CREATED, Json(DomainAdded::new(host, value, verified_at.is_some()))).into_response())
}

fn new_verification_value() -> String {
    format!("portico-{}", keys::random_alnum(32))
}

#[utoipa::path(
    post,
    operation_id = "deployments_verify_domain",
    path = "/v1/deployments/{id}/domains/{hostname}/verify",
    tag = "deployments",
    summary = "Verify a custom domain by its TXT record",
    description = "Looks up `_portico-challenge.<hostname>` TXT (through `--dns-resolver` when set). Once it \
                   holds the value given when the domain was added, the domain routes and gets a certificate; \
                   otherwise 409 `not_verified`, saying what was found.",
    security(("tenant_key" = [])),
    params(
        ("id" = String, Path, description = "The deployment's id (`dp_…`)"),
        ("hostname" = String, Path, description = "The custom domain"),
    ),
    responses(
        (status = 200, description = "Verified", body = DomainAdded),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 500, response = Internal),
    )
)]
pub async fn verify_domain(
    State(app): State<App>,
    key: TenantKey,
    Path((id, hostname)): Path<(String, String)>,
) -> ApiResult<Json<DomainAdded>> {
    let host = hostname.trim_end_matches('.').to_ascii_lowercase();
    let domain = {
        let mut read = crate::db::begin_read(&app.pool).await?;
        load_owned(&mut read, &key.tenant_id, &id).await?;
        deployments::domain(&mut read, &host).await?
    };
    let Some(domain) = domain.filter(|d| d.deployment_id == id) else {
        return Err(ApiError::not_found("domain"));
    };
    if domain.verified_at.is_some() {
        return Ok(Json(DomainAdded::new(host, domain.verification_value, true)));
    }
    if domain.verification_value.is_empty() {
        return Err(ApiError::NotVerified(format!(
            "{host} was added before ownership proofs: add it again (POST /v1/deployments/{id}/domains) for a value"
        )));
    }
    // The lookup runs outside any transaction: DNS may take seconds.
    let name = format!("_portico-challenge.{host}");
    app.dns.check_txt(&name, &domain.verification_value).await.map_err(ApiError::NotVerified)?;
    let mut write = Write::begin(&app.pool).await?;
    let done = sqlx::query(
        "UPDATE deployment_domains SET verified_at = $1 \
         WHERE hostname = $2 AND deployment_id = $3 AND verification_value = $4",
    )
    .bind(now_ms())
    .bind(&host)
    .bind(&id)
    .bind(&domain.verification_value)
    .execute(write.conn())
    .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::not_found("domain"));
    }
    write.touch(Kind::Deployment, &id);
    write.commit(&app.notify).await?;
    Ok(Json(DomainAdded::new(host, domain.verification_value, true)))
}

#[utoipa::path(
    delete,
    operation_id = "deployments_delete_domain",
    path = "/v1/deployments/{id}/domains/{hostname}",
    tag = "deployments",
    summary = "Remove a custom domain",
    security(("tenant_key" = [])),
    params(
        ("id" = String, Path, description = "The deployment's id (`dp_…`)"),
        ("hostname" = String, Path, description = "The custom domain"),
    ),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 500, response = Internal),
    )
)]
pub async fn delete_domain(
    State(app): State<App>,
    key: TenantKey,
    Path((id, hostname)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let host = normalize_host(&hostname).unwrap_or_default().to_string();
    let mut write = Write::begin(&app.pool).await?;
    load_owned(write.conn(), &key.tenant_id, &id).await?;
    let done = sqlx::query("DELETE FROM deployment_domains WHERE hostname = $1 AND deployment_id = $2")
        .bind(&host)
        .bind(&id)
        .execute(write.conn())
        .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::not_found("domain"));
    }
    write.touch(Kind::Deployment, &id);
    write.commit(&app.notify).await?;
    Ok(StatusCode::NO_CONTENT)
}
