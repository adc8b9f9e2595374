//! Previews: a slug host routed to one port of a sandbox. Re-creating one on the same port replaces it,
//! which is how a leaked URL is rotated.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use portico_wire::Visibility;
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::AnyConnection;

use super::{owned, sandboxes, timestamp, ApiQuery};
use crate::auth::TenantKey;
use crate::db::{self, enum_parse, enum_text, now_ms, Kind, PreviewRow, Write, PREVIEW_COLUMNS};
use crate::error::{ApiError, ApiJson, ApiResult, PathId};
use crate::{keys, App};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreatePreview {
    port: u16,
    #[serde(default)]
    visibility: Option<Visibility>,
}

#[derive(Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    sandbox_id: Option<String>,
}

pub fn url(app: &App, row: &PreviewRow) -> ApiResult<String> {
    let Some(template) = &app.url_template else { return Ok(String::new()) };
    let host = template.render(Some(row.port()?), &row.sandbox_id, &row.slug, "", "");
    Ok(match app.public_port {
        Some(port) => format!("{}://{host}:{port}/", app.public_scheme),
        None => format!("{}://{host}/", app.public_scheme),
    })
}

fn view(app: &App, row: &PreviewRow) -> ApiResult<Value> {
    Ok(json!({
        "id": row.id,
        "slug": row.slug,
        "sandbox_id": row.sandbox_id,
        "port": row.port()?,
        "visibility": enum_parse::<Visibility>("visibility", &row.visibility)?,
        "url": url(app, row)?,
        "status": "active",
        "created_at": timestamp(row.created_at),
    }))
}

pub async fn load_owned(conn: &mut AnyConnection, tenant_id: &str, id: &str) -> ApiResult<PreviewRow> {
    owned(db::preview(conn, id).await?, |p| p.tenant_id.as_str(), tenant_id, "preview")
}

async fn slug_taken(conn: &mut AnyConnection, slug: &str) -> ApiResult<bool> {
    let found: Option<String> =
        sqlx::query_scalar("SELECT id FROM previews WHERE slug = $1").bind(slug).fetch_optional(conn).await?;
    Ok(found.is_some())
}

pub async fn create(
    State(app): State<App>,
    key: TenantKey,
    PathId(sandbox_id): PathId,
    ApiJson(body): ApiJson<CreatePreview>,
) -> ApiResult<Response> {
    if body.port == 0 {
        return Err(ApiError::invalid("port", "must be between 1 and 65535"));
    }
    let mut write = Write::begin(&app.pool).await?;
    let sandbox = sandboxes::load_owned(write.conn(), &key.tenant_id, &sandbox_id).await?;
    let visibility = match body.visibility {
        Some(v) => enum_text(v),
        None => sandbox.default_visibility.clone(),
    };
    // Replacing, in this same transaction: the old slug stops routing in the version the new one starts.
    let old: Option<String> =
        sqlx::query_scalar("SELECT id FROM previews WHERE sandbox_id = $1 AND port = $2")
            .bind(&sandbox_id)
            .bind(i64::from(body.port))
            .fetch_optional(write.conn())
            .await?;
    if let Some(old) = &old {
        sqlx::query("DELETE FROM previews WHERE id = $1").bind(old).execute(write.conn()).await?;
        write.touch(Kind::Preview, old);
    }
    let mut slug = keys::random_label(12);
    for _ in 0..8 {
        if !slug_taken(write.conn(), &slug).await? {
            break;
        }
        slug = keys::random_label(12);
    }
    let row = PreviewRow {
        id: format!("pv_{}", keys::random_alnum(16)),
        slug,
        tenant_id: key.tenant_id.clone(),
        sandbox_id,
        port: i64::from(body.port),
        visibility,
        created_at: now_ms(),
    };
    let sql = format!("INSERT INTO previews ({PREVIEW_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)");
    sqlx::query(&sql)
        .bind(&row.id)
        .bind(&row.slug)
        .bind(&row.tenant_id)
        .bind(&row.sandbox_id)
        .bind(row.port)
        .bind(&row.visibility)
        .bind(row.created_at)
        .execute(write.conn())
        .await?;
    write.touch(Kind::Preview, &row.id);
    write.commit(&app.notify).await?;
    Ok((StatusCode::CREATED, Json(view(&app, &row)?)).into_response())
}

pub async fn list(
    State(app): State<App>,
    key: TenantKey,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<Json<Vec<Value>>> {
    let rows: Vec<PreviewRow> = match &query.sandbox_id {
        Some(sandbox) => {
            let sql = format!(
                "SELECT {PREVIEW_COLUMNS} FROM previews WHERE tenant_id = $1 AND sandbox_id = $2 \
                 ORDER BY created_at, id"
            );
            sqlx::query_as(&sql).bind(&key.tenant_id).bind(sandbox).fetch_all(&app.pool).await?
        }
        None => {
            let sql = format!(
                "SELECT {PREVIEW_COLUMNS} FROM previews WHERE tenant_id = $1 ORDER BY created_at, id"
            );
            sqlx::query_as(&sql).bind(&key.tenant_id).fetch_all(&app.pool).await?
        }
    };
    Ok(Json(rows.iter().map(|r| view(&app, r)).collect::<ApiResult<_>>()?))
}

pub async fn show(State(app): State<App>, key: TenantKey, PathId(id): PathId) -> ApiResult<Json<Value>> {
    let mut conn = app.pool.acquire().await?;
    Ok(Json(view(&app, &load_owned(&mut conn, &key.tenant_id, &id).await?)?))
}

pub async fn delete(State(app): State<App>, key: TenantKey, PathId(id): PathId) -> ApiResult<StatusCode> {
    let mut write = Write::begin(&app.pool).await?;
    load_owned(write.conn(), &key.tenant_id, &id).await?;
    sqlx::query("DELETE FROM previews WHERE id = $1").bind(&id).execute(write.conn()).await?;
    write.touch(Kind::Preview, &id);
    write.commit(&app.notify).await?;
    Ok(StatusCode::NO_CONTENT)
}
