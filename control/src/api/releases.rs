//! `PUT /v1/releases/{sha256}`: a static release (`.tar.gz`), checked while it streams and stored
//! content-addressed in the database; and `GET /v1/edge/releases/{sha256}`, where edges fetch it (from any replica) when a version
//! using it is promoted.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::TryStreamExt;
use http_body_util::BodyExt;
use serde::Serialize;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::ToSchema;

use super::doc::{Conflict, Forbidden, Internal, InvalidField, NotFound, Unauthorized};
use crate::auth::{EdgeKey, TenantKey};
use crate::db::now_ms;
use crate::error::{ApiError, ApiResult, PathId};
use crate::releases::{self, is_release_id, Checked, Intake, ReleaseError, ReleaseLimits, Spool, Stored};
use crate::state::App;

/// A `.tar.gz` archive, as bytes: in OpenAPI 3.1, a string whose content is `application/gzip`.
pub struct Archive;

impl utoipa::PartialSchema for Archive {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new().schema_type(Type::String).content_media_type("application/gzip").into()
    }
}

impl ToSchema for Archive {}

/// A release as stored.
#[derive(Serialize, ToSchema)]
pub struct Release {
    /// The SHA-256 (hex) of the `.tar.gz`: what a deployment version names.
    id: String,
    sha256: String,
    /// Files in the archive.
    files: u64,
    /// Unpacked size.
    bytes: u64,
}

#[utoipa::path(
    put,
    operation_id = "releases_upload",
    path = "/v1/releases/{sha256}",
    tag = "releases",
    summary = "Upload a static release (.tar.gz), named by its SHA-256",
    security(("tenant_key" = [])),
    params(("sha256" = String, Path, description = "The SHA-256 (hex) of the body")),
    request_body(content = Archive, content_type = "application/gzip", description = "A `.tar.gz` of static files"),
    responses(
        (status = 201, description = "Stored", body = Release),
        (status = 200, description = "Already uploaded by this tenant", body = Release),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 422, response = InvalidField),
        (status = 500, response = Internal),
    )
)]
pub async fn upload(
    State(app): State<App>,
    key: TenantKey,
    PathId(sha256): PathId,
    body: Body,
) -> ApiResult<Response> {
    let sha256 = sha256.to_ascii_lowercase();
    if !is_release_id(&sha256) {
        return Err(ApiError::NotFound("a release is named by the SHA-256 (hex) of its .tar.gz".into()));
    }
    let limits = app.release_limits;
    let (mut spool, checked) = receive(body, &sha256, limits).await?;
    // The tenant's `release_bytes` quota (SPEC §7), before anything is stored.
    let size = checked.unpacked_bytes;
    crate::quotas::release_fits(&app.pool, app.quotas, &key.tenant_id, &sha256, size).await?;
    // The archive first, then the tenant's row: a release a tenant may name is always there to fetch.
    releases::store(&app.pool, &sha256, &mut spool, now_ms()).await?;
    drop(spool);
    let inserted = sqlx::query(
        "INSERT INTO releases (sha256, tenant_id, size, files, created_at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (sha256, tenant_id) DO NOTHING",
    )
    .bind(&sha256)
    .bind(&key.tenant_id)
    .bind(i64::try_from(checked.unpacked_bytes).unwrap_or(i64::MAX))
    .bind(i64::try_from(checked.files).unwrap_or(i64::MAX))
    .bind(now_ms())
    .execute(&app.pool)
    .await?;
    if inserted.rows_affected() > 0 {
        crate::quotas::release_recheck(&app.pool, app.quotas, &key.tenant_id, &sha256, size).await?;
    }
    let status = if inserted.rows_affected() > 0 { StatusCode::CREATED } else { StatusCode::OK };
    let body = Release { id: sha256.clone(), sha256, files: checked.files, bytes: checked.unpacked_bytes };
    Ok((status, Json(body)).into_response())
}

/// Frames waiting for the checker: with hyper's frames of at most a few hundred KiB, a few MiB at most.
const IN_FLIGHT: usize = 8;
/// How long a refused upload is read on (and dropped) so the client can read its 422.
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// Reads the body frame by frame: each frame is hashed, counted, spooled to a temporary file (memory holds
/// only the frames in flight) and handed to the streaming check on a blocking thread. The first refusal
/// from either side ends it; nothing is returned for a refused archive, so nothing of it is stored.
async fn receive(mut body: Body, sha256: &str, limits: ReleaseLimits) -> ApiResult<(Spool, Checked)> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(IN_FLIGHT);
    let mut checker = tokio::task::spawn_blocking(move || {
        releases::check_stream(Frames { rx, current: Bytes::new() }, limits)
    });
    let mut tx = Some(tx);
    let mut outcome = None;
    let mut intake = Intake::new(limits);
    let mut spool = Spool::new().await.map_err(spooling)?;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::BadRequest(format!("reading the request body: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        if let Err(e) = intake.push(&data) {
            return Err(drained(body, e, limits).await);
        }
        spool.write(&data).await.map_err(spooling)?;
        let Some(sender) = &tx else { continue };
        if sender.send(data).await.is_err() {
            // The checker has stopped reading: refused, or past the end-of-archive marker (the rest is
            // trailing bytes no edge reads, still part of what is hashed and stored).
            tx = None;
            match (&mut checker).await.map_err(panicked)? {
                Err(e) => return Err(drained(body, e, limits).await),
                Ok(checked) => outcome = Some(checked),
            }
        }
    }
    drop(tx);
    let checked = match outcome {
        Some(checked) => checked,
        None => checker.await.map_err(panicked)?.map_err(refused)?,
    };
    intake.finish(sha256).map_err(refused)?;
    Ok((spool, checked))
}

fn spooling(e: std::io::Error) -> ApiError {
    ApiError::Internal(format!("spooling a release to a temporary file: {e}"))
}

/// Reads on (and drops) what is left of a refused upload, within `--release-max-bytes` and
/// [`DRAIN_TIME`]: answering while the client is still sending makes hyper close the connection with the
/// rest unread, and the client would see a broken pipe instead of the 422.
async fn drained(mut body: Body, why: ReleaseError, limits: ReleaseLimits) -> ApiError {
    let drain = async {
        let mut seen = 0u64;
        while seen <= limits.max_bytes {
            match body.frame().await {
                Some(Ok(frame)) => seen += frame.data_ref().map_or(0, |d| d.len() as u64),
                Some(Err(_)) | None => return,
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
    refused(why)
}

fn panicked(e: tokio::task::JoinError) -> ApiError {
    ApiError::Internal(format!("checking a release: {e}"))
}

/// The body's frames as a blocking reader, for the checker's gzip decoder.
struct Frames {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl std::io::Read for Frames {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(frame) => self.current = frame,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

fn refused(e: ReleaseError) -> ApiError {
    ApiError::InvalidField(format!("release: {e}"))
}

/// The archive as uploaded, streamed a chunk at a time; the edge checks its hash again before unpacking.
#[utoipa::path(
    get,
    operation_id = "edge_release_fetch",
    path = "/v1/edge/releases/{sha256}",
    tag = "edge",
    summary = "Download a release archive",
    security(("edge_token" = [])),
    params(("sha256" = String, Path, description = "The release's SHA-256 (hex)")),
    responses(
        (status = 200, description = "The `.tar.gz` as uploaded", content_type = "application/gzip", body = Archive),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 500, response = Internal),
    )
)]
pub async fn fetch(State(app): State<App>, _: EdgeKey, PathId(sha256): PathId) -> ApiResult<Response> {
    if !is_release_id(&sha256) {
        return Err(ApiError::not_found("release"));
    }
    let gzip = (header::CONTENT_TYPE, "application/gzip");
    match releases::find(&app.pool, &sha256).await? {
        Some(Stored::Chunks { count, len }) => {
            let chunks = releases::chunks(app.pool.clone(), sha256.clone(), count).inspect_err(move |e| {
                // The response has begun: all that is left is to cut it short. The edge sees a body
                // shorter than its Content-Length, keeps nothing of it and fetches the release again later.
                tracing::error!(release = %sha256, error = %e, "release chunk unavailable mid-download");
            });
            Ok(([gzip, (header::CONTENT_LENGTH, &len.to_string())], Body::from_stream(chunks))
                .into_response())
        }
        // Stored before chunks: one value, as it was always served.
        Some(Stored::Whole(bytes)) => Ok(([gzip], bytes).into_response()),
        None => Err(ApiError::not_found("release")),
    }
}
