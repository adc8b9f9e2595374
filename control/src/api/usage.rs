//! Usage: edges post counts in idempotent batches (`POST /v1/edge/usage`); tenants read totals with
//! `GET /v1/usage?group_by=external_user_id|sandbox|deployment[&from=&to=]`.

use axum::extract::State;
use axum::Json;
use portico_wire::usage::{UsageBatch, UsageSubject};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};

use super::doc::{BadRequest, Forbidden, Internal, InvalidField, PayloadTooLarge, Unauthorized};
use super::ApiQuery;
use crate::auth::{EdgeKey, TenantKey};
use crate::db::{enum_text, now_ms};
use crate::error::{ApiError, ApiJson, ApiResult};
use crate::state::App;

/// The acknowledgement of a usage batch.
#[derive(Serialize, ToSchema)]
pub struct UsageAck {
    /// Whether this `(edge_id, seq)` had been counted already (and was not counted again).
    duplicate: bool,
}

/// Applies a batch once: its `(edge_id, seq)` is recorded in the same transaction as its counts, so a
/// batch resent after a lost answer is acknowledged without being counted again.
#[utoipa::path(
    post,
    operation_id = "edge_usage_ingest",
    path = "/v1/edge/usage",
    tag = "edge",
    summary = "Report a batch of usage counts (idempotent by edge_id and seq)",
    security(("edge_token" = [])),
    request_body = UsageBatch,
    responses(
        (status = 200, description = "Acknowledged", body = UsageAck),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 413, response = PayloadTooLarge),
        (status = 422, response = InvalidField),
        (status = 500, response = Internal),
    )
)]
pub async fn ingest(
    State(app): State<App>,
    _: EdgeKey,
    ApiJson(batch): ApiJson<UsageBatch>,
) -> ApiResult<Json<UsageAck>> {
    if batch.edge_id.is_empty() || batch.edge_id.len() > 64 {
        return Err(ApiError::invalid("edge_id", "must be 1 to 64 characters"));
    }
    let seq = i64::try_from(batch.seq).map_err(|_| ApiError::invalid("seq", "too large"))?;
    let mut tx = app.pool.begin().await?;
    let fresh = sqlx::query(
        "INSERT INTO usage_batches (edge_id, seq, received_at) VALUES ($1, $2, $3) ON CONFLICT (edge_id, seq) DO NOTHING",
    )
    .bind(&batch.edge_id)
    .bind(seq)
    .bind(now_ms())
    .execute(&mut *tx)
    .await?;
    if fresh.rows_affected() == 0 {
        tx.rollback().await?;
        return Ok(Json(UsageAck { duplicate: true }));
    }
    for e in &batch.entries {
        let external_user_id: Option<String> = match e.subject {
            UsageSubject::Sandbox => {
                sqlx::query_scalar("SELECT external_user_id FROM sandboxes WHERE id = $1 AND tenant_id = $2")
                    .bind(&e.id)
                    .bind(&e.tenant_id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .flatten()
            }
            UsageSubject::Deployment => None,
        };
        let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        sqlx::query(
            "INSERT INTO usage_counts (tenant_id, subject, subject_id, external_user_id, minute, requests, bytes_out) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&e.tenant_id)
        .bind(enum_text(e.subject))
        .bind(&e.id)
        .bind(external_user_id)
        .bind(int(e.minute))
        .bind(int(e.requests))
        .bind(int(e.bytes_out))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(Json(UsageAck { duplicate: false }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// `external_user_id`, `sandbox` or `deployment`.
    group_by: String,
    /// RFC 3339 or unix seconds: counts from this minute on.
    #[serde(default)]
    from: Option<String>,
    /// RFC 3339 or unix seconds: counts before this minute.
    #[serde(default)]
    to: Option<String>,
}

/// The totals of one group. The group's key is named after `group_by`: exactly one of `external_user_id`
/// (`null` for sandboxes without one), `sandbox_id` or `deployment_id` is present.
#[derive(ToSchema)]
#[allow(dead_code)] // Documents the rows `show` builds: their key's name depends on the query.
pub struct UsageTotal {
    external_user_id: Option<Option<String>>,
    sandbox_id: Option<String>,
    deployment_id: Option<String>,
    requests: i64,
    bytes_out: i64,
}

/// RFC 3339 or unix seconds, as unix milliseconds.
fn instant(field: &str, text: &str) -> ApiResult<i64> {
    if let Ok(secs) = text.parse::<i64>() {
        return Ok(secs.saturating_mul(1000));
    }
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(|t| i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX))
        .map_err(|_| ApiError::BadRequest(format!("{field}: expected RFC 3339 or unix seconds")))
}

/// Totals from the counts edges sent, per group. Counts are kept per minute: `from` and `to` select the
/// minutes that start in `[from, to)`.
#[utoipa::path(
    get,
    operation_id = "usage_show",
    path = "/v1/usage",
    tag = "usage",
    summary = "Request and byte totals per user, sandbox or deployment",
    security(("tenant_key" = [])),
    params(UsageQuery),
    responses(
        (status = 200, description = "One row per group", body = [UsageTotal]),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 500, response = Internal),
    )
)]
pub async fn show(
    State(app): State<App>,
    key: TenantKey,
    ApiQuery(q): ApiQuery<UsageQuery>,
) -> ApiResult<Json<Vec<Value>>> {
    let (column, name, subject) = match q.group_by.as_str() {
        "external_user_id" => ("external_user_id", "external_user_id", None),
        "sandbox" => ("subject_id", "sandbox_id", Some("sandbox")),
        "deployment" => ("subject_id", "deployment_id", Some("deployment")),
        _ => {
            return Err(ApiError::BadRequest(
                "group_by must be external_user_id, sandbox or deployment".into(),
            ))
        }
    };
    let from = q.from.as_deref().map(|t| instant("from", t)).transpose()?.unwrap_or(i64::MIN);
    let to = q.to.as_deref().map(|t| instant("to", t)).transpose()?.unwrap_or(i64::MAX);
    let subject_filter = if subject.is_some() { "AND subject = $4" } else { "AND $4 = $4" };
    let sql = format!(
        "SELECT {column}, CAST(SUM(requests) AS BIGINT), CAST(SUM(bytes_out) AS BIGINT) FROM usage_counts \
         WHERE tenant_id = $1 AND minute >= $2 AND minute < $3 {subject_filter} GROUP BY {column} ORDER BY {column}"
    );
    let rows: Vec<(Option<String>, i64, i64)> = sqlx::query_as(&sql)
        .bind(&key.tenant_id)
        .bind(from)
        .bind(to)
        .bind(subject.unwrap_or(""))
        .fetch_all(&app.pool)
        .await?;
    Ok(Json(
        rows.into_iter()
            .map(|(group, requests, bytes_out)| json!({ name: group, "requests": requests, "bytes_out": bytes_out }))
            .collect(),
    ))
}
