//! Sandboxes: where the edge dials, whether it sleeps, and the preview-auth token guarding it.

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use portico_wire::{SandboxState, Visibility, WakePolicy};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use sqlx::AnyConnection;
use utoipa::{IntoParams, ToSchema};

use super::doc::{
    BadRequest, Conflict, Forbidden, Internal, InvalidField, NotFound, PayloadTooLarge, Unauthorized,
};
use super::page::Page;
use super::{owned, timestamp, ApiQuery};
use crate::auth::TenantKey;
use crate::db::{self, enum_text, now_ms, Kind, SandboxRow, Write, SANDBOX_COLUMNS};
use crate::error::{ApiError, ApiJson, ApiResult, PathId};
use crate::quotas::{self, Resource};
use crate::state::App;
use crate::{keys, validate};

/// The states a caller may set; `waking` is the edge's and control's business only.
#[derive(Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SetState {
    Running,
    Hibernated,
}

impl From<SetState> for SandboxState {
    fn from(s: SetState) -> Self {
        match s {
            SetState::Running => SandboxState::Running,
            SetState::Hibernated => SandboxState::Hibernated,
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PreviewAuth {
    /// `auto` for a random token, or one of at least 16 characters.
    token: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSandbox {
    /// 4 to 40 characters of `[a-z0-9]`; random when absent.
    #[serde(default)]
    id: Option<String>,
    /// The sandbox's IP or host name: the edge dials `address:port`.
    address: String,
    #[serde(default)]
    state: Option<SetState>,
    #[serde(default)]
    default_visibility: Option<Visibility>,
    #[serde(default)]
    wake_policy: Option<WakePolicy>,
    #[serde(default)]
    preview_auth: Option<PreviewAuth>,
    #[serde(default)]
    external_user_id: Option<String>,
    #[serde(default)]
    external_project_id: Option<String>,
    /// Any JSON, up to 16 KiB.
    #[serde(default)]
    metadata: Option<Value>,
    /// Let CORS preflight (`OPTIONS`) through to private previews without credentials.
    #[serde(default)]
    allow_preflight: bool,
}

/// Tells "absent" (keep) from `null` (clear) in a PATCH body.
pub fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// Absent fields are kept; `null` clears the nullable ones.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSandbox {
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    state: Option<SetState>,
    #[serde(default)]
    default_visibility: Option<Visibility>,
    #[serde(default)]
    wake_policy: Option<WakePolicy>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    external_user_id: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    external_project_id: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Object>)]
    metadata: Option<Option<Value>>,
    #[serde(default)]
    allow_preflight: Option<bool>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    #[serde(default)]
    external_user_id: Option<String>,
    /// Only running sandboxes without a request for at least this many seconds: candidates to suspend.
    #[serde(default)]
    idle_for: Option<u64>,
    /// Rows per page, 1 to 1000 (default 1000); the next page is in the `Link` header.
    #[serde(default)]
    limit: Option<u32>,
    /// Where the page starts: the `X-Next-Cursor` of the page before.
    #[serde(default)]
    cursor: Option<String>,
}

/// A sandbox as the API shows it.
#[derive(Serialize, ToSchema)]
pub struct SandboxView {
    id: String,
    address: String,
    #[schema(value_type = SandboxState)]
    state: String,
    #[schema(value_type = Visibility)]
    default_visibility: String,
    #[schema(value_type = WakePolicy)]
    wake_policy: String,
    /// Whether a preview-auth token guards it (the token itself is never shown again).
    preview_auth: bool,
    external_user_id: Option<String>,
    external_project_id: Option<String>,
    #[schema(value_type = Option<Object>)]
    metadata: Option<Value>,
    created_at: String,
    /// The last request any edge reported; `null` if none yet.
    last_request_at: Option<String>,
    allow_preflight: bool,
}

/// A sandbox just created, with its preview-auth token when it asked for one: shown only here.
#[derive(Serialize, ToSchema)]
pub struct CreatedSandbox {
    #[serde(flatten)]
    sandbox: SandboxView,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    preview_auth_token: Option<String>,
}

/// A new preview-auth token: shown only here.
#[derive(Serialize, ToSchema)]
pub struct PreviewAuthToken {
    preview_auth_token: String,
}

pub fn view(row: &SandboxRow) -> ApiResult<SandboxView> {
    Ok(SandboxView {
        id: row.id.clone(),
        address: row.address.clone(),
        state: row.state.clone(),
        default_visibility: row.default_visibility.clone(),
        wake_policy: row.wake_policy.clone(),
        preview_auth: row.preview_auth_sha256.is_some(),
        external_user_id: row.external_user_id.clone(),
        external_project_id: row.external_project_id.clone(),
        metadata: row.metadata()?,
        created_at: timestamp(row.created_at),
        last_request_at: row.last_request_at.map(timestamp),
        allow_preflight: row.allow_preflight != 0,
    })
}

/// The caller's sandbox, or 404 (unknown) / 403 (another tenant's).
pub async fn load_owned(conn: &mut AnyConnection, tenant_id: &str, id: &str) -> ApiResult<SandboxRow> {
    if !portico_wire::ids::is_host_id(id) {
        return Err(ApiError::not_found("sandbox"));
    }
    owned(db::sandbox(conn, id).await?, |s| s.tenant_id.as_str(), tenant_id, "sandbox")
}

async fn id_taken(conn: &mut AnyConnection, id: &str) -> ApiResult<bool> {
    Ok(db::sandbox(conn, id).await?.is_some())
}

fn external(field: &str, value: Option<String>) -> ApiResult<Option<String>> {
    value.map(|v| validate::external_id(field, &v)).transpose()
}

#[utoipa::path(
    post,
    operation_id = "sandboxes_create",
    path = "/v1/sandboxes",
    tag = "sandboxes",
    summary = "Register a sandbox",
    security(("tenant_key" = [])),
    request_body = CreateSandbox,
    responses(
        (status = 201, description = "Created; `preview_auth_token` is shown only here", body = CreatedSandbox),
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
    ApiJson(body): ApiJson<CreateSandbox>,
) -> ApiResult<Response> {
    let address = validate::address(&body.address)?;
    validate::upstream_address("address", &address, &app.upstream_allow, None)?;
    let external_user_id = external("external_user_id", body.external_user_id)?;
    let external_project_id = external("external_project_id", body.external_project_id)?;
    let metadata = body.metadata.filter(|m| !m.is_null()).map(|m| validate::metadata(&m)).transpose()?;
    let token = match body.preview_auth {
        None => None,
        Some(PreviewAuth { token }) if token == "auto" => Some(keys::random_secret()),
        Some(PreviewAuth { token }) => Some(validate::preview_auth_token(&token)?),
    };
    if let Some(id) = &body.id {
        if !portico_wire::ids::is_host_id(id) {
            return Err(ApiError::invalid("id", "must be 4 to 40 characters of [a-z0-9]"));
        }
    }
    let state = SandboxState::from(body.state.unwrap_or(SetState::Running));
    let created_at = now_ms();

    let mut write = Write::begin(&app.pool).await?;
    let narrow = db::tenant_upstream(write.conn(), &key.tenant_id).await?;
    validate::upstream_address("address", &address, &app.upstream_allow, narrow.as_deref())?;
    quotas::check(write.conn(), app.quotas, &key.tenant_id, Resource::Sandboxes, 1).await?;
    let id = match body.id {
        Some(id) if id_taken(write.conn(), &id).await? => {
            return Err(ApiError::Conflict(format!("id: sandbox {id} already exists")));
        }
        Some(id) => id,
        None => {
            let mut id = keys::random_label(8);
            // 36^7 ids: a collision is rare, several in a row means something else is wrong.
            for _ in 0..8 {
                if !id_taken(write.conn(), &id).await? {
                    break;
                }
                id = keys::random_label(8);
            }
            id
        }
    };
    let sql = format!(
        "INSERT INTO sandboxes ({SANDBOX_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, NULL, $12)"
    );
    sqlx::query(&sql)
        .bind(&id)
        .bind(&key.tenant_id)
        .bind(&address)
        .bind(enum_text(state))
        .bind(enum_text(body.default_visibility.unwrap_or(Visibility::Private)))
        .bind(enum_text(body.wake_policy.unwrap_or(WakePolicy::OnRequest)))
        .bind(token.as_deref().map(keys::sha256_hex))
        .bind(external_user_id)
        .bind(external_project_id)
        .bind(metadata)
        .bind(created_at)
        .bind(i64::from(body.allow_preflight))
        .execute(write.conn())
        .await?;
    let row = load_owned(write.conn(), &key.tenant_id, &id).await?;
    write.touch(Kind::Sandbox, &id);
    write.commit(&app.notify).await?;
    let body = CreatedSandbox { sandbox: view(&row)?, preview_auth_token: token };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

#[utoipa::path(
    get,
    operation_id = "sandboxes_list",
    path = "/v1/sandboxes",
    tag = "sandboxes",
    summary = "List the caller's sandboxes",
    security(("tenant_key" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "The sandboxes, oldest first; more pages: `Link: <…>; rel=\"next\"`", body = [SandboxView]),
        (status = 422, response = InvalidField),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 500, response = Internal),
    )
)]
pub async fn list(
    State(app): State<App>,
    key: TenantKey,
    uri: Uri,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<Response> {
    let page = Page::new(query.limit, query.cursor.as_deref())?;
    let mut sql = format!("SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE tenant_id = $1");
    if query.external_user_id.is_some() {
        sql.push_str(" AND external_user_id = $2");
    }
    // Never requested: idle since it was created.
    let idle_since = query.idle_for.map(|secs| {
        let n = if query.external_user_id.is_some() { 3 } else { 2 };
        sql.push_str(&format!(" AND state = ${n} AND COALESCE(last_request_at, created_at) <= ${}", n + 1));
        now_ms().saturating_sub(i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX))
    });
    let n = 2 + usize::from(query.external_user_id.is_some()) + 2 * usize::from(idle_since.is_some());
    sql.push_str(&page.sql(n));
    let mut select = sqlx::query_as(&sql).bind(&key.tenant_id);
    if let Some(user) = &query.external_user_id {
        select = select.bind(user);
    }
    if let Some(since) = idle_since {
        select = select.bind(enum_text(SandboxState::Running)).bind(since);
    }
    let rows: Vec<SandboxRow> = page.bind(select).fetch_all(&app.pool).await?;
    page.respond(&uri, rows, |r| (r.created_at, r.id.as_str()), view)
}

#[utoipa::path(
    get,
    operation_id = "sandboxes_show",
    path = "/v1/sandboxes/{id}",
    tag = "sandboxes",
    summary = "Show a sandbox",
    security(("tenant_key" = [])),
    params(("id" = String, Path, description = "The sandbox's id")),
    responses(
        (status = 200, description = "The sandbox", body = SandboxView),
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
) -> ApiResult<Json<SandboxView>> {
    let mut conn = app.pool.acquire().await?;
    Ok(Json(view(&load_owned(&mut conn, &key.tenant_id, &id).await?)?))
}

#[utoipa::path(
    patch,
    operation_id = "sandboxes_update",
    path = "/v1/sandboxes/{id}",
    tag = "sandboxes",
    summary = "Change a sandbox's fields",
    security(("tenant_key" = [])),
    params(("id" = String, Path, description = "The sandbox's id")),
    request_body = UpdateSandbox,
    responses(
        (status = 200, description = "The sandbox, updated", body = SandboxView),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 413, response = PayloadTooLarge),
        (status = 422, response = InvalidField),
        (status = 500, response = Internal),
    )
)]
pub async fn update(
    State(app): State<App>,
    key: TenantKey,
    PathId(id): PathId,
    ApiJson(body): ApiJson<UpdateSandbox>,
) -> ApiResult<Json<SandboxView>> {
    let address = body.address.map(|a| validate::address(&a)).transpose()?;
    if let Some(a) = &address {
        validate::upstream_address("address", a, &app.upstream_allow, None)?;
    }
    let external_user_id = body.external_user_id.map(|v| external("external_user_id", v)).transpose()?;
    let external_project_id =
        body.external_project_id.map(|v| external("external_project_id", v)).transpose()?;
    let metadata = body
        .metadata
        .map(|m| m.filter(|m| !m.is_null()).map(|m| validate::metadata(&m)).transpose())
        .transpose()?;

    let mut write = Write::begin(&app.pool).await?;
    let row = load_owned(write.conn(), &key.tenant_id, &id).await?;
    if let Some(a) = &address {
        let narrow = db::tenant_upstream(write.conn(), &key.tenant_id).await?;
        validate::upstream_address("address", a, &app.upstream_allow, narrow.as_deref())?;
    }
    sqlx::query(
        "UPDATE sandboxes SET address = $1, state = $2, default_visibility = $3, wake_policy = $4, \
         external_user_id = $5, external_project_id = $6, metadata = $7, allow_preflight = $8 WHERE id = $9",
    )
    .bind(address.unwrap_or(row.address))
    .bind(body.state.map(|s| enum_text(SandboxState::from(s))).unwrap_or(row.state))
    .bind(body.default_visibility.map(enum_text).unwrap_or(row.default_visibility))
    .bind(body.wake_policy.map(enum_text).unwrap_or(row.wake_policy))
    .bind(external_user_id.unwrap_or(row.external_user_id))
    .bind(external_project_id.unwrap_or(row.external_project_id))
    .bind(metadata.unwrap_or(row.metadata))
    .bind(body.allow_preflight.map_or(row.allow_preflight, i64::from))
    .bind(&id)
    .execute(write.conn())
    .await?;
    let row = load_owned(write.conn(), &key.tenant_id, &id).await?;
    write.touch(Kind::Sandbox, &id);
    write.commit(&app.notify).await?;
    Ok(Json(view(&row)?))
}

/// Deletes the sandbox and its previews; their hosts stop routing with this feed version.
#[utoipa::path(
    delete,
    operation_id = "sandboxes_delete",
    path = "/v1/sandboxes/{id}",
    tag = "sandboxes",
    summary = "Delete a sandbox and its previews",
    security(("tenant_key" = [])),
    params(("id" = String, Path, description = "The sandbox's id")),
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
    let previews: Vec<String> = sqlx::query_scalar("SELECT id FROM previews WHERE sandbox_id = $1")
        .bind(&id)
        .fetch_all(write.conn())
        .await?;
    sqlx::query("DELETE FROM previews WHERE sandbox_id = $1").bind(&id).execute(write.conn()).await?;
    sqlx::query("DELETE FROM sandboxes WHERE id = $1").bind(&id).execute(write.conn()).await?;
    previews.iter().for_each(|p| write.touch(Kind::Preview, p));
    write.touch(Kind::Sandbox, &id);
    write.commit(&app.notify).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post,
    operation_id = "sandboxes_hibernate",
    path = "/v1/sandboxes/{id}/hibernate",
    tag = "sandboxes",
    summary = "Mark a sandbox hibernated (the next request wakes it)",
    security(("tenant_key" = [])),
    params(("id" = String, Path, description = "The sandbox's id")),
    responses(
        (status = 200, description = "The sandbox, hibernated", body = SandboxView),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 500, response = Internal),
    )
)]
pub async fn hibernate(
    State(app): State<App>,
    key: TenantKey,
    PathId(id): PathId,
) -> ApiResult<Json<SandboxView>> {
    let mut write = Write::begin(&app.pool).await?;
    load_owned(write.conn(), &key.tenant_id, &id).await?;
    sqlx::query("UPDATE sandboxes SET state = $1 WHERE id = $2")
        .bind(enum_text(SandboxState::Hibernated))
        .bind(&id)
        .execute(write.conn())
        .await?;
    let row = load_owned(write.conn(), &key.tenant_id, &id).await?;
    write.touch(Kind::Sandbox, &id);
    write.commit(&app.notify).await?;
    Ok(Json(view(&row)?))
}

/// Replaces the preview-auth token; the old one stops working with this feed version.
#[utoipa::path(
    post,
    operation_id = "sandboxes_rotate_preview_auth",
    path = "/v1/sandboxes/{id}/preview-auth/rotate",
    tag = "sandboxes",
    summary = "Replace the sandbox's preview-auth token",
    security(("tenant_key" = [])),
    params(("id" = String, Path, description = "The sandbox's id")),
    responses(
        (status = 200, description = "The new token, shown only here", body = PreviewAuthToken),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 500, response = Internal),
    )
)]
pub async fn rotate_preview_auth(
    State(app): State<App>,
    key: TenantKey,
    PathId(id): PathId,
) -> ApiResult<Json<PreviewAuthToken>> {
    let token = keys::random_secret();
    let mut write = Write::begin(&app.pool).await?;
    load_owned(write.conn(), &key.tenant_id, &id).await?;
    sqlx::query("UPDATE sandboxes SET preview_auth_sha256 = $1 WHERE id = $2")
        .bind(keys::sha256_hex(&token))
        .bind(&id)
        .execute(write.conn())
        .await?;
    write.touch(Kind::Sandbox, &id);
    write.commit(&app.notify).await?;
    Ok(Json(PreviewAuthToken { preview_auth_token: token }))
}
