//! Preview tokens (`mp_`): minted here, signed with Ed25519, verified by edges offline; revocable by jti.
//! Signing keys rotate with both keys verifying during the overlap.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use portico_wire::tokens::{self, PreviewClaims, KNOWN_SCOPES, SCOPE_READ};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::doc::{BadRequest, Forbidden, Internal, InvalidField, NotFound, PayloadTooLarge, Unauthorized};
use super::{owned, previews, sandboxes, timestamp};
use crate::auth::{Admin, TenantKey};
use crate::credentials::{self, now_secs, MAX_TOKEN_TTL_SECS};
use crate::db::{Kind, PreviewRow, Write, PREVIEW_COLUMNS};
use crate::error::{ApiError, ApiJson, ApiResult, PathId};
use crate::keys;
use crate::state::App;

const DEFAULT_TTL_SECS: u64 = 3600;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MintToken {
    sandbox_id: String,
    /// Only this port of the sandbox; any port when absent.
    #[serde(default)]
    port: Option<u16>,
    /// 1 to 86400; 3600 when absent.
    #[serde(default)]
    ttl_seconds: Option<u64>,
    /// `["read"]` when absent.
    #[serde(default)]
    scopes: Option<Vec<String>>,
}

/// A signed preview token.
#[derive(Serialize, ToSchema)]
pub struct MintedToken {
    /// `mp_…`.
    token: String,
    /// Revokes it: `DELETE /v1/preview-tokens/{jti}`.
    jti: String,
    expires_at: String,
    /// The URL to put in an iframe, token included: the `port`'s host; without a `port`, the sandbox's
    /// newest preview, else the default embed port's host (3000 unless control sets
    /// `--default-embed-port`). `null` only when no host template renders one.
    embed_url: Option<String>,
}

/// A signing key's public half.
#[derive(Serialize, ToSchema)]
pub struct SigningKey {
    kid: String,
    /// Ed25519, base64.
    public_key: String,
    created_at: String,
    retired_at: Option<String>,
    /// Whether new tokens are signed with it.
    active: bool,
}

fn secs_to_ms(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// The URL an embedding app puts in its iframe, with the token in the query: the `port` host when the
/// token names a port; else the sandbox's newest preview URL, since a token without a port opens every
/// port; else the `--default-embed-port` host. `None` only when no host template can render one.
async fn embed_url(app: &App, sandbox: &str, port: Option<u16>, token: &str) -> ApiResult<Option<String>> {
    if port.is_none() {
        let sql = format!(
            "SELECT {PREVIEW_COLUMNS} FROM previews WHERE sandbox_id = $1 ORDER BY created_at DESC, id DESC LIMIT 1"
        );
        let newest: Option<PreviewRow> = sqlx::query_as(&sql).bind(sandbox).fetch_optional(&app.pool).await?;
        if let Some(row) = newest {
            let url = previews::url(app, &row)?;
            if !url.is_empty() {
                return Ok(Some(format!("{url}?token={token}")));
            }
        }
    }
    let Some(template) = app.port_template.as_ref() else { return Ok(None) };
    let host = template.render(Some(port.unwrap_or(app.default_embed_port)), sandbox, "", "", "");
    Ok(Some(match app.public_port {
        Some(p) => format!("{}://{host}:{p}/?token={token}", app.public_scheme),
        None => format!("{}://{host}/?token={token}", app.public_scheme),
    }))
}

#[utoipa::path(
    post,
    operation_id = "tokens_mint",
    path = "/v1/preview-tokens",
    tag = "preview-tokens",
    summary = "Mint a signed preview token for a sandbox",
    security(("tenant_key" = [])),
    request_body = MintToken,
    responses(
        (status = 201, description = "Minted", body = MintedToken),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 413, response = PayloadTooLarge),
        (status = 422, response = InvalidField),
        (status = 500, response = Internal),
    )
)]
pub async fn mint(
    State(app): State<App>,
    key: TenantKey,
    ApiJson(body): ApiJson<MintToken>,
) -> ApiResult<Response> {
    let ttl = body.ttl_seconds.unwrap_or(DEFAULT_TTL_SECS);
    if !(1..=MAX_TOKEN_TTL_SECS).contains(&ttl) {
        return Err(ApiError::invalid("ttl_seconds", format!("must be between 1 and {MAX_TOKEN_TTL_SECS}")));
    }
    if body.port == Some(0) {
        return Err(ApiError::invalid("port", "must be between 1 and 65535"));
    }
    let scopes = body.scopes.unwrap_or_else(|| vec![SCOPE_READ.to_string()]);
    if scopes.is_empty() {
        return Err(ApiError::invalid("scopes", "must name at least one scope"));
    }
    if let Some((i, bad)) = scopes.iter().enumerate().find(|(_, s)| !KNOWN_SCOPES.contains(&s.as_str())) {
        return Err(ApiError::invalid(
            &format!("scopes[{i}]"),
            format!("unknown scope {bad:?}; known: {KNOWN_SCOPES:?}"),
        ));
    }
    let mut conn = app.pool.acquire().await?;
    let sandbox =
        sandboxes::load_owned(&mut conn, &key.tenant_id, &body.sandbox_id).await.map_err(|e| match e {
            ApiError::NotFound(_) => ApiError::invalid("sandbox_id", "no such sandbox"),
            other => other,
        })?;
    drop(conn);
    let signing = credentials::active_key(&app.pool).await?;
    let exp = now_secs() + ttl;
    let claims = PreviewClaims {
        kid: signing.kid.clone(),
        tid: key.tenant_id.clone(),
        sbx: sandbox.id.clone(),
        port: body.port,
        scp: scopes,
        exp,
        jti: keys::random_alnum(20),
    };
    let token = tokens::sign_preview_token(&claims, &signing.keypair()?);
    sqlx::query(
        "INSERT INTO preview_tokens (jti, tenant_id, sandbox_id, port, expires_at, revoked_at) \
         VALUES ($1, $2, $3, $4, $5, NULL)",
    )
    .bind(&claims.jti)
    .bind(&claims.tid)
    .bind(&claims.sbx)
    .bind(body.port.map(i64::from))
    .bind(i64::try_from(exp).unwrap_or(i64::MAX))
    .execute(&app.pool)
    .await?;
    let body = MintedToken {
        embed_url: embed_url(&app, &claims.sbx, claims.port, &token).await?,
        token,
        jti: claims.jti,
        expires_at: timestamp(secs_to_ms(exp)),
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// Revokes a token: every edge refuses it within a second, until it would have expired anyway.
#[utoipa::path(
    delete,
    operation_id = "tokens_revoke",
    path = "/v1/preview-tokens/{jti}",
    tag = "preview-tokens",
    summary = "Revoke a preview token",
    security(("tenant_key" = [])),
    params(("jti" = String, Path, description = "The token's `jti`")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 500, response = Internal),
    )
)]
pub async fn revoke(State(app): State<App>, key: TenantKey, PathId(jti): PathId) -> ApiResult<StatusCode> {
    let mut write = Write::begin(&app.pool).await?;
    let row: Option<(String, String)> =
        sqlx::query_as("SELECT jti, tenant_id FROM preview_tokens WHERE jti = $1")
            .bind(&jti)
            .fetch_optional(write.conn())
            .await?;
    owned(row, |r| r.1.as_str(), &key.tenant_id, "preview token")?;
    sqlx::query("UPDATE preview_tokens SET revoked_at = $1 WHERE jti = $2 AND revoked_at IS NULL")
        .bind(crate::db::now_ms())
        .bind(&jti)
        .execute(write.conn())
        .await?;
    write.touch(Kind::Revocation, &jti);
    write.commit(&app.notify).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn key_view(row: &credentials::SigningKeyRow) -> SigningKey {
    SigningKey {
        kid: row.kid.clone(),
        public_key: row.public_key.clone(),
        created_at: timestamp(row.created_at),
        retired_at: row.retired_at.map(timestamp),
        active: row.retired_at.is_none(),
    }
}

/// The public half of every key edges accept (admin).
#[utoipa::path(
    get,
    operation_id = "tokens_list_keys",
    path = "/v1/signing-keys",
    tag = "preview-tokens",
    summary = "List the keys edges accept preview tokens from",
    security(("admin_key" = [])),
    responses(
        (status = 200, description = "The keys", body = [SigningKey]),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 500, response = Internal),
    )
)]
pub async fn list_keys(State(app): State<App>, _: Admin) -> ApiResult<Json<Vec<SigningKey>>> {
    let mut conn = app.pool.acquire().await?;
    Ok(Json(credentials::verify_keys(&mut conn).await?.iter().map(key_view).collect()))
}

/// Starts signing with a new key; tokens signed with the old one keep working until they expire (admin).
#[utoipa::path(
    post,
    operation_id = "tokens_rotate_key",
    path = "/v1/signing-keys/rotate",
    tag = "preview-tokens",
    summary = "Start signing with a new key",
    security(("admin_key" = [])),
    responses(
        (status = 201, description = "The new key", body = SigningKey),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 500, response = Internal),
    )
)]
pub async fn rotate_key(State(app): State<App>, _: Admin) -> ApiResult<Response> {
    let mut write = Write::begin(&app.pool).await?;
    let row = credentials::add_key(&mut write).await?;
    write.commit(&app.notify).await?;
    Ok((StatusCode::CREATED, Json(key_view(&row))).into_response())
}
