//! The edge feed: a snapshot, then the changes after the edge's version, long-polled.
//!
//! Change rows only name objects; each answer resolves them to the objects' current rows inside one
//! read transaction, so an answer is always a consistent state at its `version`.

use std::collections::HashSet;
use std::sync::Weak;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use portico_wire::{Change, FeedMessage, Settings, Snapshot};
use serde::Deserialize;
use sqlx::{AnyConnection, AnyPool};
use tokio::time::Instant;

use crate::auth::EdgeKey;
use crate::credentials;
use crate::db::{self, now_ms, Kind, PreviewRow, SandboxRow, TenantRow};
use crate::db::{PREVIEW_COLUMNS, SANDBOX_COLUMNS, TENANT_COLUMNS};
use crate::error::ApiQuery;
use crate::error::ApiResult;
use crate::state::{App, AppState};

const DEFAULT_WAIT: u64 = 25;
const MAX_WAIT: u64 = 60;
/// Rows per answer; one version is never split, however many rows it has.
const MAX_ROWS: usize = 5_000;
/// A long-poll re-reads the version this often too, so changes committed by another control replica
/// sharing the database arrive without that replica's in-process signal.
const RECHECK: Duration = Duration::from_secs(1);
const RETAIN_ROWS: i64 = 10_000;
const RETAIN_MS: i64 = 24 * 60 * 60 * 1000;
const PRUNE_EVERY: Duration = Duration::from_secs(60);

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FeedQuery {
    /// The version the edge has; 0 (or absent) for a snapshot.
    #[serde(default)]
    since: u64,
    /// Seconds to wait for a change: 25 when absent, at most 60.
    #[serde(default)]
    wait: Option<u64>,
}

#[utoipa::path(
    get,
    operation_id = "edge_feed",
    path = "/v1/edge/feed",
    tag = "edge",
    summary = "The state as a snapshot, then the changes after `since`, long-polled",
    security(("edge_token" = [])),
    params(FeedQuery),
    responses(
        (status = 200, description = "A snapshot, or the changes (none when the wait ran out). A snapshot is packed (`wire::packed`, its own media type) when the edge's `Accept` names `application/vnd.portico.snapshot.v1`", body = FeedMessage),
        (status = 400, response = crate::api::doc::BadRequest),
        (status = 401, response = crate::api::doc::Unauthorized),
        (status = 500, response = crate::api::doc::Internal),
    )
)]
pub async fn handler(
    State(app): State<App>,
    _: EdgeKey,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<FeedQuery>,
) -> ApiResult<Response> {
    let wait = Duration::from_secs(query.wait.unwrap_or(DEFAULT_WAIT).min(MAX_WAIT));
    let _open = crate::metrics::FeedPoll::open();
    match long_poll(&app, query.since, wait).await? {
        Next::Changes(message) => Ok(Json(message).into_response()),
        Next::Snapshot => {
            let form = if accepts(&headers, header::ACCEPT, portico_wire::packed::MEDIA_TYPE) {
                snapshots::Form::Packed
            } else {
                snapshots::Form::Json
            };
            let compressed = app.snapshots.latest(&app.pool, form).await?;
            let mut resp = if accepts(&headers, header::ACCEPT_ENCODING, form.encoding()) {
                let mut resp = Response::new(Body::from(compressed));
                let encoding = HeaderValue::from_static(form.encoding());
                resp.headers_mut().insert(header::CONTENT_ENCODING, encoding);
                resp
            } else {
                // An edge that does not read this compression: decompress this one answer for it.
                Response::new(Body::from(snapshots::decompress(form, &compressed)?))
            };
            resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(form.media_type()));
            Ok(resp)
        }
    }
}

/// Whether a list header (`Accept`, `Accept-Encoding`) names `what`, and not with `q=0` (RFC 9110
/// §12.4.2: "not acceptable").
fn accepts(headers: &HeaderMap, name: header::HeaderName, what: &str) -> bool {
    headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(|item| {
        let mut parts = item.split(';').map(str::trim);
        let refused =
            |p: &str| p.strip_prefix("q=").is_some_and(|q| q.parse::<f32>().is_ok_and(|q| q <= 0.0));
        parts.next().is_some_and(|m| m.eq_ignore_ascii_case(what)) && !parts.any(refused)
    })
}

/// What a long-poll answers: changes (or none), or the whole state.
// One lives per long-poll for a moment; boxing the changes would buy nothing.
#[allow(clippy::large_enum_variant)]
enum Next {
    Changes(FeedMessage),
    /// The edge is new, or too far behind: it gets the latest snapshot.
    Snapshot,
}

async fn long_poll(app: &AppState, since: u64, wait: Duration) -> ApiResult<Next> {
    // Subscribe before reading, so a commit between the read and the wait still wakes us.
    let mut rx = app.notify.subscribe();
    let mut shutdown = app.shutdown.subscribe();
    let deadline = Instant::now() + wait;
    loop {
        if let Some(next) = next(&app.pool, since).await? {
            return Ok(next);
        }
        let now = Instant::now();
        // Shutting down: "no changes" now; the edge re-polls another replica or this one once restarted.
        if now >= deadline || *shutdown.borrow_and_update() {
            return Ok(Next::Changes(FeedMessage::Changes { version: since, changes: Vec::new() }));
        }
        let tick = (deadline - now).min(RECHECK);
        tokio::select! {
            changed = tokio::time::timeout(tick, rx.changed()) => match changed {
                Ok(Ok(())) | Err(_) => {}
                // The sender lives as long as the state; if it is gone, fall back to the timed re-check.
                Ok(Err(_)) => tokio::time::sleep(tick).await,
            },
            // Woken by the shutdown signal: the check above answers on the next turn.
            _ = shutdown.changed() => {}
        }
    }
}

/// The answer for an edge at `since`, or `None` when it is up to date, with a snapshot built in place.
#[cfg(test)]
pub async fn answer(pool: &AnyPool, since: u64) -> ApiResult<Option<FeedMessage>> {
    Ok(match next(pool, since).await? {
        Some(Next::Changes(message)) => Some(message),
        Some(Next::Snapshot) => Some(FeedMessage::Snapshot { snapshot: current_snapshot(pool).await? }),
        None => None,
    })
}

/// What an edge at `since` needs, or `None` when it is up to date.
async fn next(pool: &AnyPool, since: u64) -> ApiResult<Option<Next>> {
    let mut tx = db::begin_read(pool).await?;
    let current: i64 =
        sqlx::query_scalar("SELECT version FROM feed_state WHERE id = 1").fetch_one(&mut *tx).await?;
    let since = i64::try_from(since).unwrap_or(i64::MAX);
    if since == current && since != 0 {
        return Ok(None);
    }
    let oldest: Option<i64> =
        sqlx::query_scalar("SELECT MIN(version) FROM changes").fetch_one(&mut *tx).await?;
    // 0: a new edge. Ahead of us: the database was reset. Behind what is retained: the gap is lost.
    let too_old = oldest.is_none_or(|oldest| since < oldest - 1);
    if since == 0 || since > current || too_old {
        return Ok(Some(Next::Snapshot));
    }
    let rows = change_rows(&mut tx, since).await?;
    let Some(version) = rows.last().map(|r| r.0) else { return Ok(None) };
    let changes = resolve(&mut tx, &rows).await?;
    let version = u64::try_from(version).unwrap_or_default();
    Ok(Some(Next::Changes(FeedMessage::Changes { version, changes })))
}

/// The whole state at the database's current version, read in one transaction.
pub(crate) async fn current_snapshot(pool: &AnyPool) -> ApiResult<Snapshot> {
    let mut tx = db::begin_read(pool).await?;
    let current: i64 =
        sqlx::query_scalar("SELECT version FROM feed_state WHERE id = 1").fetch_one(&mut *tx).await?;
    snapshot(&mut tx, current).await
}

async fn snapshot(conn: &mut AnyConnection, version: i64) -> ApiResult<Snapshot> {
    let settings = db::settings(conn).await?.unwrap_or(Settings {
        host_templates: Vec::new(),
        default_frame_ancestors: Vec::new(),
        default_rate_limits: Default::default(),
        upstream_allow: Vec::new(),
    });
    let tenants: Vec<TenantRow> =
        sqlx::query_as(&format!("SELECT {TENANT_COLUMNS} FROM tenants ORDER BY id"))
            .fetch_all(&mut *conn)
            .await?;
    let sandboxes: Vec<SandboxRow> =
        sqlx::query_as(&format!("SELECT {SANDBOX_COLUMNS} FROM sandboxes ORDER BY id"))
            .fetch_all(&mut *conn)
            .await?;
    let previews: Vec<PreviewRow> =
        sqlx::query_as(&format!("SELECT {PREVIEW_COLUMNS} FROM previews ORDER BY id"))
            .fetch_all(&mut *conn)
            .await?;
    Ok(Snapshot {
        version: u64::try_from(version).unwrap_or_default(),
        settings,
        tenants: tenants.iter().map(TenantRow::to_wire).collect::<ApiResult<_>>()?,
        sandboxes: sandboxes.iter().map(SandboxRow::to_wire).collect::<ApiResult<_>>()?,
        previews: previews.iter().map(PreviewRow::to_wire).collect::<ApiResult<_>>()?,
        verify_keys: credentials::verify_keys(conn).await?.iter().map(|k| k.to_wire()).collect(),
        revocations: credentials::revocations(conn).await?,
        shares: credentials::shares(conn).await?.iter().map(|s| s.to_wire()).collect(),
        deployments: crate::deployments::all(conn).await?,
        certificates: crate::certificates::all_wire(conn).await?,
        acme_challenges: crate::certificates::challenges(conn).await?,
    })
}

/// The change rows after `since`, at most [`MAX_ROWS`] unless one version alone has more, cut on a
/// version boundary so that the answer's version is complete.
async fn change_rows(conn: &mut AnyConnection, since: i64) -> ApiResult<Vec<(i64, String, String)>> {
    let limit = i64::try_from(MAX_ROWS + 1).unwrap_or(i64::MAX);
    let mut rows: Vec<(i64, String, String)> = sqlx::query_as(
        "SELECT version, kind, object_id FROM changes WHERE version > $1 ORDER BY version LIMIT $2",
    )
    .bind(since)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    if rows.len() <= MAX_ROWS {
        return Ok(rows);
    }
    let cut = rows[MAX_ROWS].0;
    rows.retain(|r| r.0 < cut);
    if rows.is_empty() {
        // One version bigger than a page (a large tenant deleted): send it whole.
        rows = sqlx::query_as("SELECT version, kind, object_id FROM changes WHERE version = $1")
            .bind(cut)
            .fetch_all(&mut *conn)
            .await?;
    }
    Ok(rows)
}

/// Turns change rows into changes carrying each object's current value, each object once. Parents are
/// upserted before children and children deleted before parents.
async fn resolve(conn: &mut AnyConnection, rows: &[(i64, String, String)]) -> ApiResult<Vec<Change>> {
    let mut seen = HashSet::new();
    let mut objects: Vec<(Kind, &str)> = Vec::new();
    for (_, kind, id) in rows {
        let Some(kind) = Kind::parse(kind) else {
            tracing::warn!(kind = %kind, "unknown change kind in the database; skipped");
            continue;
        };
        if seen.insert((kind, id.as_str())) {
            objects.push((kind, id.as_str()));
        }
    }
    let mut upserts = Vec::new();
    let mut deletes = Vec::new();
    for (kind, id) in objects {
        match kind {
            Kind::Settings => {
                if let Some(settings) = db::settings(conn).await? {
                    upserts.push((kind, Change::Settings { settings }));
                }
            }
            Kind::Tenant => match db::tenant(conn, id).await? {
                Some(row) => upserts.push((kind, Change::UpsertTenant { tenant: row.to_wire()? })),
                None => deletes.push((kind, Change::DeleteTenant { id: id.to_string() })),
            },
            Kind::Sandbox => match db::sandbox(conn, id).await? {
                Some(row) => upserts.push((kind, Change::UpsertSandbox { sandbox: row.to_wire()? })),
                None => deletes.push((kind, Change::DeleteSandbox { id: id.to_string() })),
            },
            Kind::Preview => match db::preview(conn, id).await? {
                Some(row) => upserts.push((kind, Change::UpsertPreview { preview: row.to_wire()? })),
                None => deletes.push((kind, Change::DeletePreview { id: id.to_string() })),
            },
            Kind::VerifyKey => match credentials::verify_key(conn, id).await? {
                Some(row) => upserts.push((kind, Change::UpsertVerifyKey { key: row.to_wire() })),
                None => deletes.push((kind, Change::DeleteVerifyKey { kid: id.to_string() })),
            },
            Kind::Share => match credentials::share(conn, id).await? {
                Some(row) => upserts.push((kind, Change::UpsertShare { share: row.to_wire() })),
                None => deletes.push((kind, Change::DeleteShare { id: id.to_string() })),
            },
            Kind::Revocation => match credentials::revocation(conn, id).await? {
                Some(revocation) => upserts.push((kind, Change::UpsertRevocation { revocation })),
                None => deletes.push((kind, Change::DeleteRevocation { jti: id.to_string() })),
            },
            Kind::Deployment => match crate::deployments::wire_deployment(conn, id).await? {
                Some(deployment) => upserts.push((kind, Change::UpsertDeployment { deployment })),
                None => deletes.push((kind, Change::DeleteDeployment { id: id.to_string() })),
            },
            Kind::Certificate => match crate::certificates::wire(conn, id).await? {
                Some(certificate) => upserts.push((kind, Change::UpsertCertificate { certificate })),
                None => deletes.push((kind, Change::DeleteCertificate { hostname: id.to_string() })),
            },
            Kind::AcmeChallenge => match crate::certificates::challenge(conn, id).await? {
                Some(challenge) => upserts.push((kind, Change::UpsertAcmeChallenge { challenge })),
                None => deletes.push((kind, Change::DeleteAcmeChallenge { token: id.to_string() })),
            },
        }
    }
    // Stable sorts keep the commit order within one kind.
    upserts.sort_by_key(|(k, _)| *k);
    deletes.sort_by_key(|(k, _)| std::cmp::Reverse(*k));
    Ok(upserts.into_iter().chain(deletes).map(|(_, c)| c).collect())
}

/// Deletes change rows older than a day, keeping at least the last [`RETAIN_ROWS`], whole versions only.
pub async fn prune(pool: &AnyPool, now_ms: i64) -> ApiResult<u64> {
    let keep_from: Option<i64> =
        sqlx::query_scalar("SELECT version FROM changes ORDER BY version DESC LIMIT 1 OFFSET $1")
            .bind(RETAIN_ROWS - 1)
            .fetch_optional(pool)
            .await?;
    let Some(keep_from) = keep_from else { return Ok(0) };
    let old: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM changes WHERE created_at < $1")
        .bind(now_ms - RETAIN_MS)
        .fetch_one(pool)
        .await?;
    let Some(old) = old else { return Ok(0) };
    let below = (old + 1).min(keep_from);
    let done = sqlx::query("DELETE FROM changes WHERE version < $1").bind(below).execute(pool).await?;
    Ok(done.rows_affected())
}

/// Prunes every minute while the control service is alive.
pub async fn prune_forever(state: Weak<AppState>) {
    let mut interval = tokio::time::interval(PRUNE_EVERY);
    loop {
        interval.tick().await;
        let Some(state) = state.upgrade() else { return };
        if let Err(e) = prune(&state.pool, now_ms()).await {
            tracing::warn!(error = %e, "pruning old feed changes failed");
        }
        if let Err(e) = crate::credentials::prune(&state.pool, &state.notify).await {
            tracing::warn!(error = %e, "pruning expired revocations and retired keys failed");
        }
    }
}

pub mod snapshots;
#[cfg(test)]
mod tests;
