//! The HTTP surface: one router for the tenant/admin API (SPEC §3) and the edge feed.

mod deployments;
mod edge;
mod previews;
mod releases;
mod sandboxes;
mod shares;
mod certificates;
mod tenants;
mod tokens;
mod usage;
mod wake;

use axum::extract::{DefaultBodyLimit, FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::App;

/// Request bodies are small JSON documents; metadata, the largest field, is capped at 16 KiB.
pub const BODY_LIMIT: usize = 64 * 1024;

pub fn router(app: App) -> Router {
    Router::new()
        .route("/metrics", get(crate::metrics::handler))
        .route("/healthz", get(|| async { Json(serde_json::json!({ "ok": true })) }))
        .route("/v1/tenants", post(tenants::create).get(tenants::list))
        .route("/v1/tenants/{id}", axum::routing::delete(tenants::delete))
        .route("/v1/tenant", get(tenants::show))
        .route("/v1/tenant/branding", put(tenants::put_branding))
        .route("/v1/tenant/frame-ancestors", put(tenants::put_frame_ancestors))
        .route("/v1/tenant/rate-limits", put(tenants::put_rate_limits))
        .route("/v1/tenant/preview-domain", post(tenants::set_preview_domain))
        .route("/v1/tenant/preview-domain/verify", post(tenants::verify_preview_domain))
        .route("/v1/certificates", get(certificates::list))
        .route("/v1/certificates/{hostname}", put(certificates::put).delete(certificates::delete))
        .route("/v1/certificates/{hostname}/renew", post(certificates::renew))
        .route("/v1/sandboxes", post(sandboxes::create).get(sandboxes::list))
        .route("/v1/sandboxes/{id}", get(sandboxes::show).patch(sandboxes::update).delete(sandboxes::delete))
        .route("/v1/sandboxes/{id}/hibernate", post(sandboxes::hibernate))
        .route("/v1/sandboxes/{id}/preview-auth/rotate", post(sandboxes::rotate_preview_auth))
        .route("/v1/sandboxes/{id}/wake", post(wake::wake))
        .route("/v1/sandboxes/{id}/previews", post(previews::create))
        .route("/v1/previews", get(previews::list))
        .route("/v1/previews/{id}", get(previews::show).delete(previews::delete))
        .route("/v1/previews/{id}/shares", post(shares::create).get(shares::list))
        .route("/v1/shares/{id}", axum::routing::delete(shares::delete))
        .route("/v1/preview-tokens", post(tokens::mint))
        .route("/v1/preview-tokens/{jti}", axum::routing::delete(tokens::revoke))
        .route("/v1/signing-keys", get(tokens::list_keys))
        .route("/v1/signing-keys/rotate", post(tokens::rotate_key))
        .route("/v1/deployments", post(deployments::create).get(deployments::list))
        .route("/v1/deployments/{id}", get(deployments::show).delete(deployments::delete))
        .route("/v1/deployments/{id}/versions", post(deployments::create_version))
        .route("/v1/deployments/{id}/promote", post(deployments::promote))
        .route("/v1/deployments/{id}/domains", post(deployments::add_domain))
        .route("/v1/deployments/{id}/domains/{hostname}", axum::routing::delete(deployments::delete_domain))
        .route("/v1/releases/{sha256}", put(releases::upload))
        .route("/v1/usage", get(usage::show))
        .route("/v1/edge/releases/{sha256}", get(releases::fetch))
        .route("/v1/edge/usage", post(usage::ingest))
        .route("/v1/edge/feed", get(crate::feed::handler))
        .route("/v1/edge/ping", get(|_: crate::auth::EdgeKey| async { StatusCode::NO_CONTENT }))
        .route("/v1/edge/activity", post(wake::activity))
        .route("/v1/edge/credentials/{hash}", get(edge::lookup))
        .route("/v1/edge/shares/{id}/password", post(edge::check_password))
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .method_not_allowed_fallback(|| async {
            let body = serde_json::json!({
                "error": { "code": "method_not_allowed", "message": "method not allowed on this endpoint" }
            });
            (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response()
        })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn(crate::auth::audit))
        .with_state(app)
}

/// A query string whose rejection is a JSON 400.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| ApiQuery(q))
            .map_err(|e| ApiError::BadRequest(format!("bad query string: {}", e.body_text())))
    }
}

/// Unix milliseconds as RFC 3339, the form shown in responses.
pub fn timestamp(ms: i64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

/// Distinguishes "not yours" (403) from "no such thing" (404).
pub fn owned<T>(
    row: Option<T>,
    owner: impl Fn(&T) -> &str,
    tenant_id: &str,
    what: &str,
) -> Result<T, ApiError> {
    match row {
        None => Err(ApiError::not_found(what)),
        Some(row) if owner(&row) != tenant_id => {
            Err(ApiError::Forbidden(format!("this {what} belongs to another tenant")))
        }
        Some(row) => Ok(row),
    }
}
