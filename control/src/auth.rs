//! Who is calling: the admin, a tenant, or an edge. Each is an extractor, so a handler's signature says
//! which key it needs, and authentication runs before the body is read.

use std::cell::RefCell;

use axum::extract::{FromRequestParts, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;

use crate::error::ApiError;
use crate::keys::{matches_hash, sha256_hex};
use crate::state::App;

tokio::task_local! {
    /// Who the current request acts as, noted by the key extractors for the audit line.
    static ACTOR: RefCell<Option<String>>;
}

fn note_actor(actor: &str) {
    let _ = ACTOR.try_with(|a| *a.borrow_mut() = Some(actor.to_string()));
}

/// One log line per API mutation with its actor (`admin`, a tenant id — never a key) and outcome.
/// Reads are not logged, nor the edges' own calls, which are frequent and carry no operator intent.
pub async fn audit(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    if matches!(method, Method::GET | Method::HEAD | Method::OPTIONS) || path.starts_with("/v1/edge/") {
        return next.run(req).await;
    }
    ACTOR
        .scope(RefCell::new(None), async move {
            let resp = next.run(req).await;
            let actor = ACTOR.with(|a| a.borrow().clone()).unwrap_or_else(|| "anonymous".into());
            tracing::info!(target: "audit", %actor, %method, %path, status = resp.status().as_u16(), "API mutation");
            resp
        })
        .await
}

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn missing() -> ApiError {
    ApiError::Unauthorized("missing or invalid API key (Authorization: Bearer <key>)".into())
}

async fn tenant_for_key(app: &App, key: &str) -> Result<Option<String>, ApiError> {
    // Looked up by hash: the key itself is never stored, and the index lookup reveals nothing about it.
    Ok(sqlx::query_scalar("SELECT id FROM tenants WHERE api_key_sha256 = $1")
        .bind(sha256_hex(key))
        .fetch_optional(&app.pool)
        .await?)
}

/// The admin key.
pub struct Admin;

impl FromRequestParts<App> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, ApiError> {
        let key = bearer(parts).ok_or_else(missing)?;
        if matches_hash(key, &app.admin_key_sha256) {
            note_actor("admin");
            return Ok(Admin);
        }
        if tenant_for_key(app, key).await?.is_some() {
            return Err(ApiError::Forbidden("this endpoint needs the admin key, not a tenant key".into()));
        }
        Err(missing())
    }
}

/// A tenant's key; carries the tenant's id.
pub struct TenantKey {
    pub tenant_id: String,
}

impl FromRequestParts<App> for TenantKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, ApiError> {
        let key = bearer(parts).ok_or_else(missing)?;
        if matches_hash(key, &app.admin_key_sha256) {
            return Err(ApiError::Forbidden("this endpoint acts on one tenant: use a tenant key".into()));
        }
        match tenant_for_key(app, key).await? {
            Some(tenant_id) => {
                note_actor(&tenant_id);
                Ok(TenantKey { tenant_id })
            }
            None => Err(missing()),
        }
    }
}

/// The edge token, for the feed.
pub struct EdgeKey;

impl FromRequestParts<App> for EdgeKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, ApiError> {
        match bearer(parts) {
            Some(token) if matches_hash(token, &app.edge_token_sha256) => Ok(EdgeKey),
            _ => Err(ApiError::Unauthorized("missing or invalid edge token".into())),
        }
    }
}
