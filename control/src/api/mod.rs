//! The HTTP surface: one router for the tenant/admin API (SPEC §3) and the edge feed.

pub use crate::db::timestamp;
pub use crate::error::ApiQuery;

mod certificates;
mod deployments;
pub mod doc;
mod edge;
mod page;
mod previews;
mod releases;
mod sandboxes;
mod shares;
mod tenants;
mod tokens;
mod usage;
mod wake;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Json, Router};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::state::App;

pub use crate::error::BODY_LIMIT;

/// Every route, each registered with its OpenAPI annotation (`routes!`): what is served is what is documented.
pub fn routes() -> OpenApiRouter<App> {
    OpenApiRouter::with_openapi(doc::ApiDoc::openapi())
        .routes(routes!(crate::metrics::handler))
        .routes(routes!(doc::healthz))
        .routes(routes!(doc::readyz))
        .routes(routes!(doc::openapi_json))
        .routes(routes!(tenants::create, tenants::list))
        .routes(routes!(tenants::policy::update, tenants::delete))
        .routes(routes!(tenants::show))
        .routes(routes!(tenants::put_branding))
        .routes(routes!(tenants::put_frame_ancestors))
        .routes(routes!(tenants::put_rate_limits))
        .routes(routes!(tenants::set_preview_domain))
        .routes(routes!(tenants::verify_preview_domain))
        .routes(routes!(certificates::list))
        .routes(routes!(certificates::put, certificates::delete))
        .routes(routes!(certificates::renew))
        .routes(routes!(sandboxes::create, sandboxes::list))
        .routes(routes!(sandboxes::show, sandboxes::update, sandboxes::delete))
        .routes(routes!(sandboxes::hibernate))
        .routes(routes!(sandboxes::rotate_preview_auth))
        .routes(routes!(wake::wake))
        .routes(routes!(previews::create))
        .routes(routes!(previews::list))
        .routes(routes!(previews::show, previews::delete))
        .routes(routes!(shares::create, shares::list))
        .routes(routes!(shares::delete))
        .routes(routes!(tokens::mint))
        .routes(routes!(tokens::revoke))
        .routes(routes!(tokens::list_keys))
        .routes(routes!(tokens::rotate_key))
        .routes(routes!(deployments::create, deployments::list))
        .routes(routes!(deployments::show, deployments::delete))
        .routes(routes!(deployments::create_version))
        .routes(routes!(deployments::promote))
        .routes(routes!(deployments::add_domain))
        .routes(routes!(deployments::verify_domain))
        .routes(routes!(deployments::delete_domain))
        .routes(routes!(releases::upload))
        .routes(routes!(usage::show))
        .routes(routes!(releases::fetch))
        .routes(routes!(usage::ingest))
        .routes(routes!(crate::feed::handler))
        .routes(routes!(edge::ping))
        .routes(routes!(wake::activity))
        .routes(routes!(edge::lookup))
        .routes(routes!(edge::check_password))
}

pub fn router(app: App) -> Router {
    let (router, _) = routes().split_for_parts();
    router
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
