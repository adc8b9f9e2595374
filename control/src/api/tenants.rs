//! Tenants: created by the admin; each tenant configures its own branding, CSP, limits and domain.

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use portico_wire::{Branding, PerMinute, Rate, RateLimits};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::doc::{
    BadRequest, Conflict, Forbidden, Internal, InvalidField, NotFound, PayloadTooLarge, Unauthorized,
};
use super::page::{Page, PageQuery};
use super::{timestamp, ApiQuery};
use crate::auth::{Admin, TenantKey};
use crate::certificates::CertificateStatus;
use crate::db::{self, now_ms, Kind, TenantRow, Write, TENANT_COLUMNS};
use crate::error::{ApiError, ApiJson, ApiResult, PathId};
use crate::quotas::Quotas;
use crate::state::App;
use crate::{keys, validate};

pub(super) mod policy;

const MAX_RPS: u32 = 1_000_000;
const MAX_PER_MINUTE: u32 = 100_000;

fn json_text<T: serde::Serialize>(value: &T) -> ApiResult<String> {
    serde_json::to_string(value).map_err(|e| ApiError::Internal(e.to_string()))
}

/// A tenant as the API shows it.
#[derive(Serialize, ToSchema)]
pub struct TenantView {
    id: String,
    name: String,
    created_at: String,
    /// `null` until set: the edge's pages show Portico's own.
    branding: Option<Branding>,
    /// CSP `frame-ancestors` sources; `null` until set: the platform default applies.
    frame_ancestors: Option<Vec<String>>,
    /// The tenant's own limits, or the platform default when it set none.
    rate_limits: RateLimits,
    preview_domain: Option<PreviewDomain>,
    /// The admin's narrowing of the upstream policy (`PATCH /v1/tenants/{id}`): sandboxes and deployment
    /// instances must lie inside both this and `--upstream-allow`. `null`: `--upstream-allow` alone.
    upstream_cidrs: Option<Vec<String>>,
    /// The limits in force: what the admin set, else the platform defaults (`--quota-*`).
    quotas: Quotas,
}

/// A tenant's preview domain: `{slug}.<hostname>` routes once it is `verified`.
#[derive(Serialize, ToSchema)]
pub struct PreviewDomain {
    hostname: String,
    /// `pending` until its CNAME points at `cname_target`, then `verified`.
    status: String,
    cname_target: String,
    /// What DNS answered, when a verification did not succeed (verify only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    reason: Option<String>,
    /// Its certificate (`GET /v1/tenant` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    certificate: Option<Option<CertificateStatus>>,
}

/// A tenant just created: the only answer that shows its API key.
#[derive(Serialize, ToSchema)]
pub struct CreatedTenant {
    id: String,
    name: String,
    /// `msk_…`: shown once, stored only as its SHA-256.
    api_key: String,
    created_at: String,
}

fn view(app: &App, row: &TenantRow) -> ApiResult<TenantView> {
    let preview_domain = row.preview_domain.as_ref().map(|hostname| PreviewDomain {
        hostname: hostname.clone(),
        status: row.preview_domain_status.clone().unwrap_or_else(|| "pending".into()),
        cname_target: app.cname_target.clone(),
        reason: None,
        certificate: None,
    });
    Ok(TenantView {
        id: row.id.clone(),
        name: row.name.clone(),
        created_at: timestamp(row.created_at),
        branding: row.branding()?,
        frame_ancestors: row.frame_ancestors()?,
        rate_limits: row.rate_limits()?.unwrap_or(app.default_rate_limits),
        preview_domain,
        upstream_cidrs: row.upstream_cidrs()?.map(|l| l.iter().map(ToString::to_string).collect()),
        quotas: row.quotas(app.quotas)?,
    })
}

async fn load(app: &App, id: &str) -> ApiResult<TenantRow> {
    let mut conn = app.pool.acquire().await?;
    db::tenant(&mut conn, id).await?.ok_or_else(|| ApiError::not_found("tenant"))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    /// 1 to 100 characters.
    name: String,
}

#[utoipa::path(
    post,
    operation_id = "tenants_create",
    path = "/v1/tenants",
    tag = "tenants",
    summary = "Create a tenant and its API key",
    security(("admin_key" = [])),
    request_body = CreateTenant,
    responses(
        (status = 201, description = "Created; `api_key` is shown only here", body = CreatedTenant),
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
    _: Admin,
    ApiJson(body): ApiJson<CreateTenant>,
) -> ApiResult<Response> {
    let name = validate::name("name", &body.name, 100)?;
    let id = format!("tn_{}", keys::random_alnum(16));
    let api_key = keys::new_tenant_key();
    let created_at = now_ms();
    let mut write = Write::begin(&app.pool).await?;
    sqlx::query(
        "INSERT INTO tenants (id, name, api_key_sha256, created_at, rate_limits) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&id)
    .bind(&name)
    .bind(keys::sha256_hex(&api_key))
    .bind(created_at)
    // No limits of its own: it follows the platform default, also when that changes.
    .bind("null")
    .execute(write.conn())
    .await?;
    write.touch(Kind::Tenant, &id);
    write.commit(&app.notify).await?;
    let body = CreatedTenant { id, name, api_key, created_at: timestamp(created_at) };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

#[utoipa::path(
    get,
    operation_id = "tenants_list",
    path = "/v1/tenants",
    tag = "tenants",
    summary = "List every tenant",
    security(("admin_key" = [])),
    params(PageQuery),
    responses(
        (status = 200, description = "The tenants, oldest first; more pages: `Link: <…>; rel=\"next\"`", body = [TenantView]),
        (status = 400, response = BadRequest),
        (status = 422, response = InvalidField),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 500, response = Internal),
    )
)]
pub async fn list(
    State(app): State<App>,
    _: Admin,
    uri: Uri,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> ApiResult<Response> {
    let page = Page::new(query.limit, query.cursor.as_deref())?;
    let sql = format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE 1 = 1{}", page.sql(1));
    let rows: Vec<TenantRow> = page.bind(sqlx::query_as(&sql)).fetch_all(&app.pool).await?;
    page.respond(&uri, rows, |r| (r.created_at, r.id.as_str()), |r| view(&app, r))
}

/// Deletes the tenant with its sandboxes and previews, each gone from the feed in the same version.
#[utoipa::path(
    delete,
    operation_id = "tenants_delete",
    path = "/v1/tenants/{id}",
    tag = "tenants",
    summary = "Delete a tenant with everything it owns",
    security(("admin_key" = [])),
    params(("id" = String, Path, description = "The tenant's id (`tn_…`)")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 500, response = Internal),
    )
)]
pub async fn delete(State(app): State<App>, _: Admin, PathId(id): PathId) -> ApiResult<StatusCode> {
    let mut write = Write::begin(&app.pool).await?;
    if db::tenant(write.conn(), &id).await?.is_none() {
        return Err(ApiError::not_found("tenant"));
    }
    let previews: Vec<String> = sqlx::query_scalar("SELECT id FROM previews WHERE tenant_id = $1")
        .bind(&id)
        .fetch_all(write.conn())
        .await?;
    let sandboxes: Vec<String> = sqlx::query_scalar("SELECT id FROM sandboxes WHERE tenant_id = $1")
        .bind(&id)
        .fetch_all(write.conn())
        .await?;
    crate::deployments::delete_for_tenant(&mut write, &id).await?;
    for sql in [
        "DELETE FROM previews WHERE tenant_id = $1",
        "DELETE FROM sandboxes WHERE tenant_id = $1",
        "DELETE FROM acme_orders WHERE tenant_id = $1",
        "DELETE FROM tenants WHERE id = $1",
    ] {
        sqlx::query(sql).bind(&id).execute(write.conn()).await?;
    }
    previews.iter().for_each(|p| write.touch(Kind::Preview, p));
    sandboxes.iter().for_each(|s| write.touch(Kind::Sandbox, s));
    write.touch(Kind::Tenant, &id);
    write.commit(&app.notify).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    operation_id = "tenants_show",
    path = "/v1/tenant",
    tag = "tenants",
    summary = "Show the caller's tenant, with its preview domain's certificate",
    security(("tenant_key" = [])),
    responses(
        (status = 200, description = "The tenant", body = TenantView),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 500, response = Internal),
    )
)]
pub async fn show(State(app): State<App>, key: TenantKey) -> ApiResult<Json<TenantView>> {
    let row = load(&app, &key.tenant_id).await?;
    let mut v = view(&app, &row)?;
    if let (Some(hostname), Some(domain)) = (&row.preview_domain, v.preview_domain.as_mut()) {
        let mut conn = app.pool.acquire().await?;
        domain.certificate = Some(crate::certificates::status(&mut conn, hostname).await?);
    }
    Ok(Json(v))
}

/// Sets one JSON column of the caller's tenant and answers with the whole tenant.
async fn update_column(
    app: &App,
    tenant_id: &str,
    column: &str,
    text: String,
) -> ApiResult<Json<TenantView>> {
    let mut write = Write::begin(&app.pool).await?;
    let sql = format!("UPDATE tenants SET {column} = $1 WHERE id = $2");
    let done = sqlx::query(&sql).bind(text).bind(tenant_id).execute(write.conn()).await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::not_found("tenant"));
    }
    write.touch(Kind::Tenant, tenant_id);
    write.commit(&app.notify).await?;
    Ok(Json(view(app, &load(app, tenant_id).await?)?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutBranding {
    /// `https://` only.
    logo_url: String,
    /// `#rrggbb`.
    accent_color: String,
    /// `https://` only.
    #[serde(default)]
    support_url: Option<String>,
    /// At most 60 characters.
    #[serde(default)]
    product_name: Option<String>,
}

#[utoipa::path(
    put,
    operation_id = "tenants_put_branding",
    path = "/v1/tenant/branding",
    tag = "tenants",
    summary = "Set the branding of the edge's pages",
    security(("tenant_key" = [])),
    request_body = PutBranding,
    responses(
        (status = 200, description = "The tenant, updated", body = TenantView),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 413, response = PayloadTooLarge),
        (status = 422, response = InvalidField),
        (status = 500, response = Internal),
    )
)]
pub async fn put_branding(
    State(app): State<App>,
    key: TenantKey,
    ApiJson(body): ApiJson<PutBranding>,
) -> ApiResult<Json<TenantView>> {
    let branding = Branding {
        logo_url: validate::https_url("logo_url", &body.logo_url)?,
        accent_color: validate::accent_color(&body.accent_color)?,
        support_url: body.support_url.map(|u| validate::https_url("support_url", &u)).transpose()?,
        product_name: body.product_name.map(|n| validate::name("product_name", &n, 60)).transpose()?,
    };
    update_column(&app, &key.tenant_id, "branding", json_text(&branding)?).await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutFrameAncestors {
    /// CSP source expressions, such as `'self'` or `https://app.example.com`.
    sources: Vec<String>,
}

#[utoipa::path(
    put,
    operation_id = "tenants_put_frame_ancestors",
    path = "/v1/tenant/frame-ancestors",
    tag = "tenants",
    summary = "Set which origins may frame the tenant's previews",
    security(("tenant_key" = [])),
    request_body = PutFrameAncestors,
    responses(
        (status = 200, description = "The tenant, updated", body = TenantView),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 413, response = PayloadTooLarge),
        (status = 422, response = InvalidField),
        (status = 500, response = Internal),
    )
)]
pub async fn put_frame_ancestors(
    State(app): State<App>,
    key: TenantKey,
    ApiJson(body): ApiJson<PutFrameAncestors>,
) -> ApiResult<Json<TenantView>> {
    let sources = validate::frame_ancestors("sources", &body.sources)?;
    update_column(&app, &key.tenant_id, "frame_ancestors", json_text(&sources)?).await
}

/// The body of `PUT /v1/tenant/rate-limits`: the wire `RateLimits` accepts unknown fields (so older edges
/// take a newer control's feed), but a typo in an API request must still be a 422.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutRateLimits {
    public_per_ip: RateBody,
    private_per_token: RateBody,
    auth_failures_per_ip: PerMinuteBody,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateBody {
    rps: u32,
    burst: u32,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PerMinuteBody {
    per_minute: u32,
}

#[utoipa::path(
    put,
    operation_id = "tenants_put_rate_limits",
    path = "/v1/tenant/rate-limits",
    tag = "tenants",
    summary = "Set the tenant's rate limits",
    security(("tenant_key" = [])),
    request_body = PutRateLimits,
    responses(
        (status = 200, description = "The tenant, updated", body = TenantView),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 413, response = PayloadTooLarge),
        (status = 422, response = InvalidField),
        (status = 500, response = Internal),
    )
)]
pub async fn put_rate_limits(
    State(app): State<App>,
    key: TenantKey,
    ApiJson(body): ApiJson<PutRateLimits>,
) -> ApiResult<Json<TenantView>> {
    let rate = |field: &str, r: RateBody| -> ApiResult<Rate> {
        Ok(Rate {
            rps: validate::rate(&format!("{field}.rps"), r.rps, MAX_RPS)?,
            burst: validate::rate(&format!("{field}.burst"), r.burst, MAX_RPS)?,
        })
    };
    let limits = RateLimits {
        public_per_ip: rate("public_per_ip", body.public_per_ip)?,
        private_per_token: rate("private_per_token", body.private_per_token)?,
        auth_failures_per_ip: PerMinute {
            per_minute: validate::rate(
                "auth_failures_per_ip.per_minute",
                body.auth_failures_per_ip.per_minute,
                MAX_PER_MINUTE,
            )?,
        },
    };
    update_column(&app, &key.tenant_id, "rate_limits", json_text(&limits)?).await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPreviewDomain {
    hostname: String,
}

/// Claims a preview domain; it stays `pending` (and does not route) until verified.
#[utoipa::path(
    post,
    operation_id = "tenants_set_preview_domain",
    path = "/v1/tenant/preview-domain",
    tag = "tenants",
    summary = "Claim a preview domain (pending until verified)",
    security(("tenant_key" = [])),
    request_body = SetPreviewDomain,
    responses(
        (status = 201, description = "Claimed, `pending`", body = PreviewDomain),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 409, response = Conflict),
        (status = 413, response = PayloadTooLarge),
        (status = 422, response = InvalidField),
        (status = 500, response = Internal),
    )
)]
pub async fn set_preview_domain(
    State(app): State<App>,
    key: TenantKey,
    ApiJson(body): ApiJson<SetPreviewDomain>,
) -> ApiResult<Response> {
    let hostname = validate::hostname(&body.hostname)?;
    let mut write = Write::begin(&app.pool).await?;
    let holder: Option<String> = sqlx::query_scalar("SELECT id FROM tenants WHERE preview_domain = $1")
        .bind(&hostname)
        .fetch_optional(write.conn())
        .await?;
    if holder.is_some_and(|h| h != key.tenant_id) {
        return Err(ApiError::Conflict(format!("hostname: {hostname} is already claimed by another tenant")));
    }
    // Another tenant's custom domain by that very name routes to that tenant's deployment.
    let custom: Option<String> = sqlx::query_scalar(
        "SELECT tenant_id FROM deployment_domains WHERE hostname = $1 AND tenant_id <> $2",
    )
    .bind(&hostname)
    .bind(&key.tenant_id)
    .fetch_optional(write.conn())
    .await?;
    if custom.is_some() {
        return Err(ApiError::Conflict(format!("hostname: {hostname} is another tenant's custom domain")));
    }
    sqlx::query("UPDATE tenants SET preview_domain = $1, preview_domain_status = 'pending' WHERE id = $2")
        .bind(&hostname)
        .bind(&key.tenant_id)
        .execute(write.conn())
        .await?;
    write.touch(Kind::Tenant, &key.tenant_id);
    write.commit(&app.notify).await?;
    let body = PreviewDomain {
        hostname,
        status: "pending".into(),
        cname_target: app.cname_target.clone(),
        reason: None,
        certificate: None,
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// Checks the preview domain's CNAME now: `verified` once it points at `cname_target` (then
/// `{slug}.<domain>` routes, and ACME orders its certificates). Otherwise the status stays as it was
/// (a verified domain is not dropped for one failed look-up) and `reason` says what DNS answered.
#[utoipa::path(
    post,
    operation_id = "tenants_verify_preview_domain",
    path = "/v1/tenant/preview-domain/verify",
    tag = "tenants",
    summary = "Check the preview domain's CNAME now",
    security(("tenant_key" = [])),
    responses(
        (status = 200, description = "The domain's status; `reason` when DNS did not answer as needed", body = PreviewDomain),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 500, response = Internal),
    )
)]
pub async fn verify_preview_domain(State(app): State<App>, key: TenantKey) -> ApiResult<Json<PreviewDomain>> {
    let row = load(&app, &key.tenant_id).await?;
    let Some(hostname) = row.preview_domain.clone() else {
        return Err(ApiError::NotFound("no preview domain: POST /v1/tenant/preview-domain first".into()));
    };
    let status = row.preview_domain_status.clone().unwrap_or_else(|| "pending".into());
    match app.dns.check_cname(&hostname, &app.cname_target).await {
        Ok(()) => {
            if status != "verified" {
                let mut write = Write::begin(&app.pool).await?;
                sqlx::query(
                    "UPDATE tenants SET preview_domain_status = 'verified' WHERE id = $1 AND preview_domain = $2",
                )
                .bind(&key.tenant_id)
                .bind(&hostname)
                .execute(write.conn())
                .await?;
                write.touch(Kind::Tenant, &key.tenant_id);
                write.commit(&app.notify).await?;
            }
            Ok(Json(PreviewDomain {
                hostname,
                status: "verified".into(),
                cname_target: app.cname_target.clone(),
                reason: None,
                certificate: None,
            }))
        }
        Err(reason) => Ok(Json(PreviewDomain {
            hostname,
            status,
            cname_target: app.cname_target.clone(),
            reason: Some(reason),
            certificate: None,
        })),
    }
}
