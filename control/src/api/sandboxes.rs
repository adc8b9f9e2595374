//! Sandboxes: where the edge dials, whether it sleeps, and the preview-auth token guarding it.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use portico_wire::{SandboxState, Visibility, WakePolicy};
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};
use sqlx::AnyConnection;

use super::{owned, timestamp, ApiQuery};
use crate::auth::TenantKey;
use crate::db::{self, enum_text, now_ms, Kind, SandboxRow, Write, SANDBOX_COLUMNS};
use crate::error::{ApiError, ApiJson, ApiResult, PathId};
use crate::{keys, validate, App};

/// The states a caller may set; `waking` is the edge's and control's business only.
#[derive(Clone, Copy, Deserialize)]
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviewAuth {
    token: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSandbox {
    #[serde(default)]
    id: Option<String>,
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
    #[serde(default)]
    metadata: Option<Value>,
    #[serde(default)]
    allow_preflight: bool,
}

/// Tells "absent" (keep) from `null` (clear) in a PATCH body.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
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
    external_user_id: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    external_project_id: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    metadata: Option<Option<Value>>,
    #[serde(default)]
    allow_preflight: Option<bool>,
}

#[derive(Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    external_user_id: Option<String>,
    /// Only running sandboxes without a request for at least this many seconds: candidates to suspend.
    #[serde(default)]
    idle_for: Option<u64>,
}

pub fn view(row: &SandboxRow) -> ApiResult<Value> {
    Ok(json!({
        "id": row.id,
        "address": row.address,
        "state": row.state,
        "default_visibility": row.default_visibility,
        "wake_policy": row.wake_policy,
        "preview_auth": row.preview_auth_sha256.is_some(),
        "external_user_id": row.external_user_id,
        "external_project_id": row.external_project_id,
        "metadata": row.metadata()?,
        "created_at": timestamp(row.created_at),
        "last_request_at": row.last_request_at.map(timestamp),
        "allow_preflight": row.allow_preflight != 0,
    }))
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

pub async fn create(
    State(app): State<App>,
    key: TenantKey,
    ApiJson(body): ApiJson<CreateSandbox>,
) -> ApiResult<Response> {
    let address = validate::address(&body.address)?;
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
    let mut body = view(&row)?;
    if let (Some(token), Some(obj)) = (token, body.as_object_mut()) {
        obj.insert("preview_auth_token".into(), Value::String(token));
    }
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

pub async fn list(
    State(app): State<App>,
    key: TenantKey,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<Json<Vec<Value>>> {
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
    sql.push_str(" ORDER BY created_at, id");
    let mut select = sqlx::query_as(&sql).bind(&key.tenant_id);
    if let Some(user) = &query.external_user_id {
        select = select.bind(user);
    }
    if let Some(since) = idle_since {
        select = select.bind(enum_text(SandboxState::Running)).bind(since);
    }
    let rows: Vec<SandboxRow> = select.fetch_all(&app.pool).await?;
    Ok(Json(rows.iter().map(view).collect::<ApiResult<_>>()?))
}

pub async fn show(State(app): State<App>, key: TenantKey, PathId(id): PathId) -> ApiResult<Json<Value>> {
    let mut conn = app.pool.acquire().await?;
    Ok(Json(view(&load_owned(&mut conn, &key.tenant_id, &id).await?)?))
}

pub async fn update(
    State(app): State<App>,
    key: TenantKey,
    PathId(id): PathId,
    ApiJson(body): ApiJson<UpdateSandbox>,
) -> ApiResult<Json<Value>> {
    let address = body.address.map(|a| validate::address(&a)).transpose()?;
    let external_user_id = body.external_user_id.map(|v| external("external_user_id", v)).transpose()?;
    let external_project_id =
        body.external_project_id.map(|v| external("external_project_id", v)).transpose()?;
    let metadata = body
        .metadata
        .map(|m| m.filter(|m| !m.is_null()).map(|m| validate::metadata(&m)).transpose())
        .transpose()?;

    let mut write = Write::begin(&app.pool).await?;
    let row = load_owned(write.conn(), &key.tenant_id, &id).await?;
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

pub async fn hibernate(State(app): State<App>, key: TenantKey, PathId(id): PathId) -> ApiResult<Json<Value>> {
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
pub async fn rotate_preview_auth(
    State(app): State<App>,
    key: TenantKey,
    PathId(id): PathId,
) -> ApiResult<Json<Value>> {
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
    Ok(Json(json!({ "preview_auth_token": token })))
}
