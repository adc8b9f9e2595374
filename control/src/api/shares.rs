//! Share links (`ms_` tokens) of one preview: random, shown once, kept as SHA-256, optionally expiring and
//! optionally behind a password.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use portico_wire::tokens::SHARE_TOKEN_PREFIX;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::doc::{BadRequest, Forbidden, Internal, InvalidField, NotFound, PayloadTooLarge, Unauthorized};
use super::{owned, previews, timestamp};
use crate::auth::TenantKey;
use crate::credentials::{self, now_secs, ShareRow, SHARE_COLUMNS};
use crate::db::{now_ms, Kind, Write};
use crate::error::{ApiError, ApiJson, ApiResult, PathId};
use crate::keys;
use crate::state::App;

const MAX_TTL_SECS: u64 = 365 * 24 * 3600;
const PREFIX_LEN: usize = 12;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateShare {
    /// 1 to 31536000 (a year); never expires when absent.
    #[serde(default)]
    ttl_seconds: Option<u64>,
    /// 4 to 256 characters; the link then asks for it.
    #[serde(default)]
    password: Option<String>,
}

/// A share link as the API shows it: the token itself only when created.
#[derive(Serialize, ToSchema)]
pub struct ShareView {
    id: String,
    preview_id: String,
    /// The token's first characters, to tell links apart.
    token_prefix: String,
    /// `null`: never expires.
    expires_at: Option<String>,
    /// Whether the link asks for a password.
    password: bool,
    created_at: String,
}

/// A share link just created: `token` and `share_url` are shown only here.
#[derive(Serialize, ToSchema)]
pub struct CreatedShare {
    #[serde(flatten)]
    share: ShareView,
    /// `ms_…`.
    token: String,
    share_url: String,
}

fn view(row: &ShareRow) -> ShareView {
    ShareView {
        id: row.id.clone(),
        preview_id: row.preview_id.clone(),
        token_prefix: row.token_prefix.clone(),
        expires_at: row.expires_at.map(|s| timestamp(s.saturating_mul(1000))),
        password: row.password_hash.is_some(),
        created_at: timestamp(row.created_at),
    }
}

#[utoipa::path(
    post,
    operation_id = "shares_create",
    path = "/v1/previews/{id}/shares",
    tag = "shares",
    summary = "Create a share link to a preview",
    security(("tenant_key" = [])),
    params(("id" = String, Path, description = "The preview's id (`pv_…`)")),
    request_body = CreateShare,
    responses(
        (status = 201, description = "Created; the token is shown only here", body = CreatedShare),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 413, response = PayloadTooLarge),
        (status = 422, response = InvalidField),
        (status = 500, response = Internal),
    )
)]
pub async fn create(
    State(app): State<App>,
    key: TenantKey,
    PathId(preview_id): PathId,
    ApiJson(body): ApiJson<CreateShare>,
) -> ApiResult<Response> {
    let expires_at = match body.ttl_seconds {
        None => None,
        Some(ttl) if (1..=MAX_TTL_SECS).contains(&ttl) => Some(now_secs() + ttl),
        Some(_) => {
            return Err(ApiError::invalid("ttl_seconds", format!("must be between 1 and {MAX_TTL_SECS}")))
        }
    };
    let password_hash = match body.password {
        None => None,
        Some(p) if (4..=256).contains(&p.chars().count()) => {
            // Deliberately slow: off the async workers.
            Some(
                tokio::task::spawn_blocking(move || credentials::hash_password(&p))
                    .await
                    .map_err(|e| ApiError::Internal(format!("hashing the password: {e}")))?,
            )
        }
        Some(_) => return Err(ApiError::invalid("password", "must be 4 to 256 characters")),
    };
    let token = format!("{SHARE_TOKEN_PREFIX}{}", keys::random_secret());
    let mut write = Write::begin(&app.pool).await?;
    let preview = previews::load_owned(write.conn(), &key.tenant_id, &preview_id).await?;
    let row = ShareRow {
        id: format!("sh_{}", keys::random_alnum(16)),
        tenant_id: key.tenant_id.clone(),
        preview_id: preview.id.clone(),
        sha256: keys::sha256_hex(&token),
        token_prefix: token.chars().take(PREFIX_LEN).collect(),
        expires_at: expires_at.and_then(|e| i64::try_from(e).ok()),
        password_hash,
        created_at: now_ms(),
    };
    sqlx::query(&format!("INSERT INTO shares ({SHARE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"))
        .bind(&row.id)
        .bind(&row.tenant_id)
        .bind(&row.preview_id)
        .bind(&row.sha256)
        .bind(&row.token_prefix)
        .bind(row.expires_at)
        .bind(&row.password_hash)
        .bind(row.created_at)
        .execute(write.conn())
        .await?;
    write.touch(Kind::Share, &row.id);
    write.commit(&app.notify).await?;
    let url = previews::url(&app, &preview)?;
    let share_url = format!("{url}?token={token}");
    let body = CreatedShare { share: view(&row), token, share_url };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

#[utoipa::path(
    get,
    operation_id = "shares_list",
    path = "/v1/previews/{id}/shares",
    tag = "shares",
    summary = "List a preview's share links",
    security(("tenant_key" = [])),
    params(("id" = String, Path, description = "The preview's id (`pv_…`)")),
    responses(
        (status = 200, description = "The share links, oldest first", body = [ShareView]),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 500, response = Internal),
    )
)]
pub async fn list(
    State(app): State<App>,
    key: TenantKey,
    PathId(preview_id): PathId,
) -> ApiResult<Json<Vec<ShareView>>> {
    let mut conn = app.pool.acquire().await?;
    previews::load_owned(&mut conn, &key.tenant_id, &preview_id).await?;
    let rows: Vec<ShareRow> = sqlx::query_as(&format!(
        "SELECT {SHARE_COLUMNS} FROM shares WHERE preview_id = $1 ORDER BY created_at, id"
    ))
    .bind(&preview_id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Json(rows.iter().map(view).collect()))
}

/// Revokes a share: every edge refuses its token within a second.
#[utoipa::path(
    delete,
    operation_id = "shares_delete",
    path = "/v1/shares/{id}",
    tag = "shares",
    summary = "Revoke a share link",
    security(("tenant_key" = [])),
    params(("id" = String, Path, description = "The share's id (`sh_…`)")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 500, response = Internal),
    )
)]
pub async fn delete(State(app): State<App>, key: TenantKey, PathId(id): PathId) -> ApiResult<StatusCode> {
    let mut write = Write::begin(&app.pool).await?;
    owned(credentials::share(write.conn(), &id).await?, |s| s.tenant_id.as_str(), &key.tenant_id, "share")?;
    sqlx::query("DELETE FROM shares WHERE id = $1").bind(&id).execute(write.conn()).await?;
    write.touch(Kind::Share, &id);
    write.commit(&app.notify).await?;
    Ok(StatusCode::NO_CONTENT)
}
