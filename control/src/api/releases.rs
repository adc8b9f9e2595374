//! `PUT /v1/releases/{sha256}`: a static release (`.tar.gz`), checked and stored content-addressed; and
//! `GET /v1/edge/releases/{sha256}`, where edges fetch it when a version using it is promoted.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::auth::{EdgeKey, TenantKey};
use crate::db::now_ms;
use crate::error::{ApiError, ApiResult, PathId};
use crate::releases::{self, is_release_id, ReleaseError};
use crate::App;

pub async fn upload(
    State(app): State<App>,
    key: TenantKey,
    PathId(sha256): PathId,
    body: Body,
) -> ApiResult<Response> {
    let sha256 = sha256.to_ascii_lowercase();
    if !is_release_id(&sha256) {
        return Err(ApiError::NotFound("a release is named by the SHA-256 (hex) of its .tar.gz".into()));
    }
    let limits = app.releases.limits;
    let limit = usize::try_from(limits.max_bytes).unwrap_or(usize::MAX);
    let bytes: Bytes = axum::body::to_bytes(body, limit.saturating_add(1))
        .await
        .map_err(|_| refused(ReleaseError::TooLarge(limits.max_bytes)))?;
    let store = app.releases.clone();
    let sha = sha256.clone();
    // Hashing, gunzipping and writing a large archive is blocking work.
    let (checked, _stored) = tokio::task::spawn_blocking(move || -> ApiResult<_> {
        let checked = releases::check(&sha, &bytes, limits).map_err(refused)?;
        let stored = store
            .store(&sha, &bytes)
            .map_err(|e| ApiError::Internal(format!("storing release {sha}: {e}")))?;
        Ok((checked, stored))
    })
    .await
    .map_err(|e| ApiError::Internal(format!("checking a release: {e}")))??;
    let inserted = sqlx::query(
        "INSERT INTO releases (sha256, tenant_id, size, files, created_at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (sha256, tenant_id) DO NOTHING",
    )
    .bind(&sha256)
    .bind(&key.tenant_id)
    .bind(i64::try_from(checked.unpacked_bytes).unwrap_or(i64::MAX))
    .bind(i64::try_from(checked.files).unwrap_or(i64::MAX))
    .bind(now_ms())
    .execute(&app.pool)
    .await?;
    let status = if inserted.rows_affected() > 0 { StatusCode::CREATED } else { StatusCode::OK };
    let body =
        json!({ "id": sha256, "sha256": sha256, "files": checked.files, "bytes": checked.unpacked_bytes });
    Ok((status, Json(body)).into_response())
}

fn refused(e: ReleaseError) -> ApiError {
    ApiError::InvalidField(format!("release: {e}"))
}

/// The archive as uploaded; the edge checks its hash again before unpacking.
pub async fn fetch(State(app): State<App>, _: EdgeKey, PathId(sha256): PathId) -> ApiResult<Response> {
    if !is_release_id(&sha256) {
        return Err(ApiError::not_found("release"));
    }
    let store = app.releases.clone();
    let read = tokio::task::spawn_blocking(move || store.read(&sha256))
        .await
        .map_err(|e| ApiError::Internal(format!("reading a release: {e}")))?;
    match read {
        Ok(bytes) => Ok(([(header::CONTENT_TYPE, "application/gzip")], bytes).into_response()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ApiError::not_found("release")),
        Err(e) => Err(ApiError::Internal(format!("reading a release: {e}"))),
    }
}
