//! `POST /v1/sandboxes/{id}/wake` (edge token or tenant key) and `POST /v1/edge/activity` (edge token):
//! the HTTP side of `crate::wake`, and where edges report when sandboxes last served a request.

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use portico_wire::{SandboxState, WakePolicy};
use serde::Deserialize;
use serde_json::json;
use utoipa::ToSchema;

use super::doc::{
    BadRequest, Forbidden, Internal, InvalidField, NotFound, PayloadTooLarge, Unauthorized, WakeConflict,
    WakeFailed, WakeTimeout,
};
use super::sandboxes::{load_owned, view, SandboxView};
use crate::auth::{EdgeKey, TenantKey};
use crate::db::{self, enum_text, now_ms};
use crate::error::{ApiError, ApiJson, ApiResult, PathId};
use crate::state::App;
use crate::wake::{self, WakeError};

/// Who asks for a wake: an edge (on a request for the sandbox) or the sandbox's tenant.
pub enum Caller {
    Edge,
    Tenant(String),
}

impl FromRequestParts<App> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, ApiError> {
        if EdgeKey::from_request_parts(parts, app).await.is_ok() {
            return Ok(Caller::Edge);
        }
        TenantKey::from_request_parts(parts, app).await.map(|k| Caller::Tenant(k.tenant_id))
    }
}

fn wake_error(e: &WakeError) -> Response {
    let (code, status) = e.code_and_status();
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = json!({ "error": { "code": code, "message": e.to_string() } });
    (status, Json(body)).into_response()
}

/// Wakes the sandbox and answers with it once running (`200`, the sandbox as `GET` shows it), or with
/// `wake_failed` (502) / `wake_timeout` (504) once it is `hibernated` again. A running sandbox answers at
/// once, without calling the orchestrator.
#[utoipa::path(
    post,
    operation_id = "sandboxes_wake",
    path = "/v1/sandboxes/{id}/wake",
    tag = "sandboxes",
    summary = "Wake a sandbox and wait until it runs",
    security(("tenant_key" = []), ("edge_token" = [])),
    params(("id" = String, Path, description = "The sandbox's id")),
    responses(
        (status = 200, description = "The sandbox, running", body = SandboxView),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, response = WakeConflict),
        (status = 500, response = Internal),
        (status = 502, response = WakeFailed),
        (status = 504, response = WakeTimeout),
    )
)]
pub async fn wake(State(app): State<App>, caller: Caller, PathId(id): PathId) -> ApiResult<Response> {
    let row = {
        let mut conn = app.pool.acquire().await?;
        match &caller {
            Caller::Tenant(tenant_id) => load_owned(&mut conn, tenant_id, &id).await?,
            Caller::Edge => {
                db::sandbox(&mut conn, &id).await?.ok_or_else(|| ApiError::not_found("sandbox"))?
            }
        }
    };
    if row.state != enum_text(SandboxState::Running) {
        // The tenant may wake any of its sandboxes; an edge only those that wake on request.
        let policy_off = row.wake_policy == enum_text(WakePolicy::Off);
        let result = if policy_off && matches!(caller, Caller::Edge) {
            Err(WakeError::PolicyOff)
        } else {
            wake::wake(&app, &id).await
        };
        if let Err(e) = result {
            return Ok(wake_error(&e));
        }
    }
    let mut conn = app.pool.acquire().await?;
    let row = db::sandbox(&mut conn, &id).await?.ok_or_else(|| ApiError::not_found("sandbox"))?;
    Ok(Json(view(&row)?).into_response())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActivityReport {
    sandboxes: Vec<SandboxActivity>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxActivity {
    id: String,
    /// Unix milliseconds of the sandbox's last request at that edge.
    last_request_at: i64,
}

/// Moves each sandbox's `last_request_at` forward (never back, never past now). Not a feed change: edges
/// do not route by it.
#[utoipa::path(
    post,
    operation_id = "edge_activity",
    path = "/v1/edge/activity",
    tag = "edge",
    summary = "Report when sandboxes last served a request",
    security(("edge_token" = [])),
    request_body = ActivityReport,
    responses(
        (status = 204, description = "Recorded"),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 413, response = PayloadTooLarge),
        (status = 422, response = InvalidField),
        (status = 500, response = Internal),
    )
)]
pub async fn activity(
    State(app): State<App>,
    _: EdgeKey,
    ApiJson(report): ApiJson<ActivityReport>,
) -> ApiResult<StatusCode> {
    let now = now_ms();
    let mut tx = app.pool.begin().await?;
    for seen in report.sandboxes.iter().filter(|s| portico_wire::ids::is_host_id(&s.id)) {
        sqlx::query(
            "UPDATE sandboxes SET last_request_at = $1 \
             WHERE id = $2 AND (last_request_at IS NULL OR last_request_at < $1)",
        )
        .bind(seen.last_request_at.min(now))
        .bind(&seen.id)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
