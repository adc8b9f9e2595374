//! Edge-facing look-ups (edge token): hashed credentials an edge has not seen in its snapshot yet, and
//! share passwords, which only control can check.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use portico_wire::CredentialLookup;
use serde::Deserialize;
use utoipa::ToSchema;

use super::doc::{
    BadRequest, Busy, Forbidden, Internal, InvalidField, NotFound, PayloadTooLarge, RateLimited, Unauthorized,
};
use crate::auth::EdgeKey;
use crate::credentials::{self, now_secs};
use crate::error::{ApiError, ApiJson, ApiResult, PathId};
use crate::state::App;

/// `GET /v1/edge/ping`: whether the edge token is good, without waiting on the feed.
#[utoipa::path(
    get,
    operation_id = "edge_ping",
    path = "/v1/edge/ping",
    tag = "edge",
    summary = "Check the edge token",
    security(("edge_token" = [])),
    responses(
        (status = 204, description = "The token is good"),
        (status = 401, response = Unauthorized),
    )
)]
pub async fn ping(_: EdgeKey) -> StatusCode {
    StatusCode::NO_CONTENT
}

/// `GET /v1/edge/credentials/{sha256}`: a share or a sandbox's preview-auth token with that hash.
#[utoipa::path(
    get,
    operation_id = "edge_lookup",
    path = "/v1/edge/credentials/{hash}",
    tag = "edge",
    summary = "Look up a credential by its SHA-256",
    security(("edge_token" = [])),
    params(("hash" = String, Path, description = "The SHA-256 (hex) of a share token or preview-auth token")),
    responses(
        (status = 200, description = "What the credential opens", body = CredentialLookup),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 500, response = Internal),
    )
)]
pub async fn lookup(
    State(app): State<App>,
    _: EdgeKey,
    PathId(hash): PathId,
) -> ApiResult<Json<CredentialLookup>> {
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::not_found("credential"));
    }
    let share: Option<String> = sqlx::query_scalar("SELECT id FROM shares WHERE sha256 = $1")
        .bind(&hash)
        .fetch_optional(&app.pool)
        .await?;
    if let Some(id) = share {
        let mut conn = app.pool.acquire().await?;
        if let Some(row) = credentials::share(&mut conn, &id).await? {
            return Ok(Json(CredentialLookup::Share { share: row.to_wire() }));
        }
    }
    let sandbox: Option<String> =
        sqlx::query_scalar("SELECT id FROM sandboxes WHERE preview_auth_sha256 = $1")
            .bind(&hash)
            .fetch_optional(&app.pool)
            .await?;
    match sandbox {
        Some(sandbox_id) => Ok(Json(CredentialLookup::PreviewAuth { sandbox_id })),
        None => Err(ApiError::not_found("credential")),
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordAttempt {
    password: String,
    /// The client the edge got the attempt from: attempts are counted per IP as well as per share.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    client_ip: Option<std::net::IpAddr>,
}

/// `POST /v1/edge/shares/{id}/password`: 204 when the password opens the share, 403 when it does not.
#[utoipa::path(
    post,
    operation_id = "edge_check_password",
    path = "/v1/edge/shares/{id}/password",
    tag = "edge",
    summary = "Check a share link's password",
    security(("edge_token" = [])),
    params(("id" = String, Path, description = "The share's id (`sh_…`)")),
    request_body = PasswordAttempt,
    responses(
        (status = 204, description = "The password opens the share"),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 413, response = PayloadTooLarge),
        (status = 422, response = InvalidField),
        (status = 429, response = RateLimited),
        (status = 500, response = Internal),
        (status = 503, response = Busy),
    )
)]
pub async fn check_password(
    State(app): State<App>,
    _: EdgeKey,
    PathId(id): PathId,
    ApiJson(body): ApiJson<PasswordAttempt>,
) -> ApiResult<StatusCode> {
    let mut conn = app.pool.acquire().await?;
    let share = credentials::share(&mut conn, &id).await?.ok_or_else(|| ApiError::not_found("share"))?;
    drop(conn);
    if share.expires_at.is_some_and(|e| u64::try_from(e).unwrap_or_default() <= now_secs()) {
        return Err(ApiError::Forbidden("share expired".into()));
    }
    let Some(stored) = share.password_hash else {
        return Err(ApiError::BadRequest("this share has no password".into()));
    };
    // Counted before hashing, so a refused guess costs control a map look-up, not 600,000 iterations.
    let permit = app.guessing.attempt(&id, body.client_ip)?;
    if body.password.len() > 1024 {
        return Err(ApiError::Forbidden("wrong password".into()));
    }
    let ok = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        credentials::verify_password(&body.password, &stored)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("checking the password: {e}")))?;
    if ok {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::Forbidden("wrong password".into()))
    }
}
