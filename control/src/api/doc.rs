//! The OpenAPI 3.1 document of the API, served at `GET /v1/openapi.json`. Nothing here lists paths: they
//! come from the `#[utoipa::path]` annotation of each handler, registered with `routes!` in `router()`, so
//! a route cannot be served without being documented. This module holds what the handlers share: the
//! error body, the error responses by status, and the three bearer schemes.

use std::sync::OnceLock;

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToResponse, ToSchema};

/// Every error: `{"error":{"code","message"}}`.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `bad_request`, `unauthorized`, `forbidden`, `not_found`, `conflict`,
    /// `quota_exceeded`, `invalid_field`, `payload_too_large`, `internal`, `method_not_allowed`, and on
    /// wake `wake_failed`, `wake_timeout`, `wake_disabled`, `wake_not_configured`.
    #[schema(example = "invalid_field")]
    pub code: String,
    /// For people; an invalid field's message starts with the field: `accent_color: must be #rrggbb`.
    #[schema(example = "accent_color: must be #rrggbb")]
    pub message: String,
}

fn error_response(description: &str) -> RefOr<Response> {
    let content = ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build();
    ResponseBuilder::new().description(description).content("application/json", content).build().into()
}

/// One reusable response per error status, each with an [`ErrorBody`]; handlers list the ones they give.
macro_rules! error_responses {
    ($($name:ident => $description:literal,)*) => {
        $(
            pub struct $name;

            impl<'r> ToResponse<'r> for $name {
                fn response() -> (&'r str, RefOr<Response>) {
                    (stringify!($name), error_response($description))
                }
            }
        )*
    };
}

error_responses! {
    BadRequest => "`bad_request`: malformed JSON body or query string",
    Unauthorized => "`unauthorized`: no key, or not a valid key for this endpoint",
    Forbidden => "`forbidden`: the wrong kind of key for this endpoint, or another tenant's object",
    NotFound => "`not_found`: no such object",
    Conflict => "`conflict`: the name or id is already taken; `quota_exceeded`: the tenant is at one of its quotas (the message names it and its limit)",
    InvalidField => "`invalid_field`: a well-formed body whose field is missing, unknown or invalid; the message names the field",
    PayloadTooLarge => "`payload_too_large`: the body is larger than the limit",
    Internal => "`internal`: the server failed; details are in its log only",
    RateLimited => "`rate_limited`: too many attempts; `Retry-After` says when the next one is counted",
    Busy => "`busy`: control is at its bound of expensive work in flight, or its database is contended (nothing was written); retry after `Retry-After`",
    WakeConflict => "`wake_disabled` (the sandbox's wake policy is off, for an edge) or `wake_not_configured` (no orchestrator)",
    WakeFailed => "`wake_failed`: the orchestrator refused or failed, and the sandbox is hibernated again",
    WakeTimeout => "`wake_timeout`: the sandbox did not become running in time, and is hibernated again",
    NotReady => "`not_ready`: this replica cannot serve the API now; the message says why (e.g. the database does not answer)",
}

/// The three bearer keys: `admin_key`, a tenant's `msk_…` key (`tenant_key`), and `edge_token`.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for (name, description) in [
            ("admin_key", "The admin key (`--admin-key`): creates tenants and manages certificates and signing keys."),
            ("tenant_key", "A tenant's API key (`msk_…`, shown once when the tenant is created): acts on that tenant only."),
            ("edge_token", "The edge token (`--edge-token`) edges use for the feed and their look-ups."),
        ] {
            let scheme = HttpBuilder::new().scheme(HttpAuthScheme::Bearer).description(Some(description)).build();
            components.add_security_scheme(name, SecurityScheme::Http(scheme));
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Portico control API",
        description = "Tenants, sandboxes, previews, credentials, deployments and certificates of a Portico \
                       edge proxy, and the endpoints its edges call. All bodies are JSON unless stated; every \
                       error is `{\"error\":{\"code\",\"message\"}}`. Authenticate with `Authorization: Bearer <key>`."
    ),
    modifiers(&SecuritySchemes),
    components(
        schemas(ErrorBody),
        responses(
            BadRequest, Unauthorized, Forbidden, NotFound, Conflict, InvalidField, PayloadTooLarge, Internal,
            WakeConflict, WakeFailed, WakeTimeout, RateLimited, Busy, NotReady
        )
    ),
    tags(
        (name = "tenants", description = "Tenants (admin key) and a tenant's own settings (tenant key)"),
        (name = "sandboxes", description = "Sandboxes: where the edge dials, and whether it sleeps"),
        (name = "previews", description = "Preview hosts of one sandbox port"),
        (name = "shares", description = "Share links (`ms_…`) of a preview"),
        (name = "preview-tokens", description = "Signed preview tokens (`mp_…`) and their signing keys"),
        (name = "deployments", description = "Published apps, their versions and custom domains"),
        (name = "releases", description = "Static release archives"),
        (name = "usage", description = "Request and byte counts"),
        (name = "certificates", description = "TLS certificates (admin key)"),
        (name = "edge", description = "What edges call (edge token)"),
        (name = "meta", description = "This document, health and metrics")
    )
)]
pub struct ApiDoc;

/// The whole document, built once from the same routes the router serves.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOC.get_or_init(|| super::routes().into_openapi())
}

/// This document.
#[utoipa::path(
    get,
    operation_id = "openapi_json",
    path = "/v1/openapi.json",
    tag = "meta",
    summary = "The OpenAPI 3.1 document of this API",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object))
)]
pub async fn openapi_json() -> Json<&'static utoipa::openapi::OpenApi> {
    Json(document())
}

/// `{"ok": true}` while the process answers.
#[derive(Serialize, ToSchema)]
pub struct Health {
    pub ok: bool,
}

#[utoipa::path(
    get,
    operation_id = "healthz",
    path = "/healthz",
    tag = "meta",
    summary = "Liveness",
    responses((status = 200, description = "The service answers", body = Health))
)]
pub async fn healthz() -> Json<Health> {
    Json(Health { ok: true })
}

#[utoipa::path(
    get,
    operation_id = "readyz",
    path = "/readyz",
    tag = "meta",
    summary = "Readiness: the database answers",
    responses(
        (status = 200, description = "The database answers `SELECT 1`: this replica can serve the API", body = Health),
        (status = 503, response = NotReady),
    )
)]
pub async fn readyz(State(app): State<crate::state::App>) -> Result<Json<Health>, crate::error::ApiError> {
    match sqlx::query("SELECT 1").execute(&app.pool).await {
        Ok(_) => Ok(Json(Health { ok: true })),
        Err(e) => {
            tracing::warn!(error = %e, "readiness: the database does not answer");
            Err(crate::error::ApiError::NotReady("the database does not answer".into()))
        }
    }
}
