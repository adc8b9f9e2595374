//! Previews: a slug host routed to one port of a sandbox. Re-creating one on the same port replaces it,
//! which is how a leaked URL is rotated.

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use portico_wire::Visibility;
use serde::{Deserialize, Serialize};
use sqlx::AnyConnection;
use utoipa::{IntoParams, ToSchema};

use super::doc::{
    BadRequest, Conflict, Forbidden, Internal, InvalidField, NotFound, PayloadTooLarge, Unauthorized,
};
use super::page::Page;
use super::{owned, sandboxes, timestamp, ApiQuery};
use crate::auth::TenantKey;
use crate::db::{self, enum_parse, enum_text, now_ms, Kind, PreviewRow, Write, PREVIEW_COLUMNS};
use crate::error::{ApiError, ApiJson, ApiResult, PathId};
use crate::keys;
use crate::quotas::{self, Resource};
use crate::state::App;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePreview {
    /// 1 to 65535.
    port: u16,
    /// The sandbox's `default_visibility` when absent.
    #[serde(default)]
    visibility: Option<Visibility>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this sandbox's previews.
    #[serde(default)]
    sandbox_id: Option<String>,
    /// Rows per page, 1 to 1000 (default 1000); the next page is in the `Link` header.
    #[serde(default)]
    limit: Option<u32>,
    /// Where the page starts: the `X-Next-Cursor` of the page before.
    #[serde(default)]
    cursor: Option<String>,
}

/// A preview as the API shows it.
#[derive(Serialize, ToSchema)]
pub struct PreviewView {
    id: String,
    /// The random host label it is reached at.
    slug: String,
    sandbox_id: String,
    port: u16,
    visibility: Visibility,
    /// Where it is reached; empty when no preview host template is configured.
    url: String,
    /// Always `active`.
    status: &'static str,
    created_at: String,
}

pub fn url(app: &App, row: &PreviewRow) -> ApiResult<String> {
    let Some(template) = &app.url_template else { return Ok(String::new()) };
    let host = template.render(Some(row.port()?), &row.sandbox_id, &row.slug, "", "");
    Ok(match app.public_port {
        Some(port) => format!("{}://{host}:{port}/", app.public_scheme),
        None => format!("{}://{host}/", app.public_scheme),
    })
}

fn view(app: &App, row: &PreviewRow) -> ApiResult<PreviewView> {
    Ok(PreviewView {
        id: row.id.clone(),
        slug: row.slug.clone(),
        sandbox_id: row.sandbox_id.clone(),
        port: row.port()?,
        visibility: enum_parse::<Visibility>("visibility", &row.visibility)?,
        url: url(app, row)?,
        status: "active",
        created_at: timestamp(row.created_at),
    })
}

pub async fn load_owned(conn: &mut AnyConnection, tenant_id: &str, id: &str) -> ApiResult<PreviewRow> {
    owned(db::preview(conn, id).await?, |p| p.tenant_id.as_str(), tenant_id, "preview")
}

async fn slug_taken(conn: &mut AnyConnection, slug: &str) -> ApiResult<bool> {
    let found: Option<String> =
        sqlx::query_scalar("SELECT id FROM previews WHERE slug = $1").bind(slug).fetch_optional(conn).await?;
    Ok(found.is_some())
}

/// Creating one again on the same port replaces it: the new one has a new slug, the old slug stops routing.
#[utoipa::path(
    post,
    operation_id = "previews_create",
    path = "/v1/sandboxes/{id}/previews",
    tag = "previews",
    summary = "Create (or replace) the preview of a sandbox port",
    security(("tenant_key" = [])),
    params(("id" = String, Path, description = "The sandbox's id")),
    request_body = CreatePreview,
    responses(
        (status = 201, description = "Created", body = PreviewView),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 413, response = PayloadTooLarge),
        (status = 422, response = InvalidField),
        (status = 500, response = Internal),
    )
)]
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
    // Counted after the replaced one went: replacing a preview needs no free slot.
    quotas::check(write.conn(), app.quotas, &key.tenant_id, Resource::Previews, 1).await?;
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

#[utoipa::path(
    get,
    operation_id = "previews_list",
    path = "/v1/previews",
    tag = "previews",
    summary = "List the caller's previews",
    security(("tenant_key" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "The previews, oldest first; more pages: `Link: <…>; rel=\"next\"`", body = [PreviewView]),
        (status = 422, response = InvalidField),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 500, response = Internal),
    )
)]
pub async fn list(
    State(app): State<App>,
    key: TenantKey,
    uri: Uri,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<Response> {
    let page = Page::new(query.limit, query.cursor.as_deref())?;
    let rows: Vec<PreviewRow> = match &query.sandbox_id {
        Some(sandbox) => {
            let sql = format!(
                "SELECT {PREVIEW_COLUMNS} FROM previews WHERE tenant_id = $1 AND sandbox_id = $2{}",
                page.sql(3)
            );
            page.bind(sqlx::query_as(&sql).bind(&key.tenant_id).bind(sandbox)).fetch_all(&app.pool).await?
        }
        None => {
            let sql = format!("SELECT {PREVIEW_COLUMNS} FROM previews WHERE tenant_id = $1{}", page.sql(2));
            page.bind(sqlx::query_as(&sql).bind(&key.tenant_id)).fetch_all(&app.pool).await?
        }
    };
    page.respond(&uri, rows, |r| (r.created_at, r.id.as_str()), |r| view(&app, r))
}

#[utoipa::path(
    get,
    operation_id = "previews_show",
    path = "/v1/previews/{id}",
    tag = "previews",
    summary = "Show a preview",
    security(("tenant_key" = [])),
    params(("id" = String, Path, description = "The preview's id (`pv_…`)")),
    responses(
        (status = 200, description = "The preview", body = PreviewView),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 500, response = Internal),
    )
)]
pub async fn show(
    State(app): State<App>,
    key: TenantKey,
    PathId(id): PathId,
) -> ApiResult<Json<PreviewView>> {
    let mut conn = app.pool.acquire().await?;
    Ok(Json(view(&app, &load_owned(&mut conn, &key.tenant_id, &id).await?)?))
}

#[utoipa::path(
    delete,
    operation_id = "previews_delete",
    path = "/v1/previews/{id}",
    tag = "previews",
    summary = "Delete a preview: its host stops routing",
    security(("tenant_key" = [])),
    params(("id" = String, Path, description = "The preview's id (`pv_…`)")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 500, response = Internal),
    )
)]
pub async fn delete(State(app): State<App>, key: TenantKey, PathId(id): PathId) -> ApiResult<StatusCode> {
    let mut write = Write::begin(&app.pool).await?;
    load_owned(write.conn(), &key.tenant_id, &id).await?;
    sqlx::query("DELETE FROM previews WHERE id = $1").bind(&id).execute(write.conn()).await?;
    write.touch(Kind::Preview, &id);
    write.commit(&app.notify).await?;
    Ok(StatusCode::NO_CONTENT)
}
