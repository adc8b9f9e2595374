//! Share links (`ms_` tokens) of one preview: random, shown once, kept as SHA-256, optionally expiring and
//! optionally behind a password.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use portico_wire::tokens::SHARE_TOKEN_PREFIX;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{owned, previews, timestamp};
use crate::auth::TenantKey;
use crate::credentials::{self, now_secs, ShareRow, SHARE_COLUMNS};
use crate::db::{now_ms, Kind, Write};
use crate::error::{ApiError, ApiJson, ApiResult, PathId};
use crate::{keys, App};

const MAX_TTL_SECS: u64 = 365 * 24 * 3600;
const PREFIX_LEN: usize = 12;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateShare {
    #[serde(default)]
    ttl_seconds: Option<u64>,
    #[serde(default)]
    password: Option<String>,
}

fn view(row: &ShareRow) -> Value {
    json!({
        "id": row.id,
        "preview_id": row.preview_id,
        "token_prefix": row.token_prefix,
        "expires_at": row.expires_at.map(|s| timestamp(s.saturating_mul(1000))),
        "password": row.password_hash.is_some(),
        "created_at": timestamp(row.created_at),
    })
}

pub async fn create(
    State(app): State<App>,
    key: TenantKey,
    PathId(preview_id): PathId,
    ApiJson(body): ApiJson<CreateShare>,
) -> ApiResult<Response> {
    let expires_at = match body.ttl_seconds {
        None => None,
        Some(ttl) if (1..=MAX_TTL_SECS).contains(&ttl) => Some(now_secs() + ttl),
        Some(_) => return Err(ApiError::invalid("ttl_seconds", format!("must be between 1 and {MAX_TTL_SECS}"))),
    };
    let password_hash = match body.password {
        None => None,
        Some(p) if (4..=256).contains(&p.chars().count()) => {
            // Deliberately slow: off the async workers.
            Some(tokio::task::spawn_blocking(move || credentials::hash_password(&p)).await.map_err(|e| {
                ApiError::Internal(format!("hashing the password: {e}"))
            })?)
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
    let mut body = view(&row);
    let url = previews::url(&app, &preview)?;
    body["token"] = json!(token);
    body["share_url"] = json!(format!("{url}?token={token}"));
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

pub async fn list(State(app): State<App>, key: TenantKey, PathId(preview_id): PathId) -> ApiResult<Json<Vec<Value>>> {
    let mut conn = app.pool.acquire().await?;
    previews::load_owned(&mut conn, &key.tenant_id, &preview_id).await?;
    let rows: Vec<ShareRow> =
        sqlx::query_as(&format!("SELECT {SHARE_COLUMNS} FROM shares WHERE preview_id = $1 ORDER BY created_at, id"))
            .bind(&preview_id)
            .fetch_all(&mut *conn)
            .await?;
    Ok(Json(rows.iter().map(view).collect()))
}

/// Revokes a share: every edge refuses its token within a second.
pub async fn delete(State(app): State<App>, key: TenantKey, PathId(id): PathId) -> ApiResult<StatusCode> {
    let mut write = Write::begin(&app.pool).await?;
    owned(credentials::share(write.conn(), &id).await?, |s| s.tenant_id.as_str(), &key.tenant_id, "share")?;
    sqlx::query("DELETE FROM shares WHERE id = $1").bind(&id).execute(write.conn()).await?;
    write.touch(Kind::Share, &id);
    write.commit(&app.notify).await?;
    Ok(StatusCode::NO_CONTENT)
}
