//! One error type for the API, turned into `{"error":{"code","message"}}` in one place, and the
//! extractors whose rejections must come out in the same shape.

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::BytesMut;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// A custom domain's TXT proof is not (yet) in DNS; the message says what was found.
    #[error("{0}")]
    NotVerified(String),
    /// Over one of the tenant's quotas (SPEC §7); the message names the quota and its limit.
    #[error("{0}")]
    QuotaExceeded(String),
    /// The message names the field: `accent_color: must be #rrggbb`.
    #[error("{0}")]
    InvalidField(String),
    /// `/readyz`: this replica cannot serve now; the message says why without details.
    #[error("{0}")]
    NotReady(String),
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    /// Too many attempts; `Retry-After` says when the next one is counted.
    #[error("too many attempts; try again in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    /// Control is at its bound of expensive work in flight (password hashes): retry shortly.
    #[error("busy; try again in a moment")]
    Busy,
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(field: &str, why: impl std::fmt::Display) -> Self {
        Self::InvalidField(format!("{field}: {why}"))
    }

    pub fn not_found(what: &str) -> Self {
        Self::NotFound(format!("{what} not found"))
    }

    fn parts(&self) -> (StatusCode, &'static str, String) {
        match self {
            Self::BadRequest(m) => (StatusCode::BAD_REQUEST, "bad_request", m.clone()),
            Self::Unauthorized(m) => (StatusCode::UNAUTHORIZED, "unauthorized", m.clone()),
            Self::Forbidden(m) => (StatusCode::FORBIDDEN, "forbidden", m.clone()),
            Self::NotFound(m) => (StatusCode::NOT_FOUND, "not_found", m.clone()),
            Self::Conflict(m) => (StatusCode::CONFLICT, "conflict", m.clone()),
            Self::NotVerified(m) => (StatusCode::CONFLICT, "not_verified", m.clone()),
            Self::QuotaExceeded(m) => (StatusCode::CONFLICT, "quota_exceeded", m.clone()),
            Self::InvalidField(m) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", m.clone()),
            Self::NotReady(m) => (StatusCode::SERVICE_UNAVAILABLE, "not_ready", m.clone()),
            Self::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", self.to_string()),
            Self::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited", self.to_string()),
            Self::Busy => (StatusCode::SERVICE_UNAVAILABLE, "busy", self.to_string()),
            // A race lost to a concurrent insert of the same unique value is a conflict, not a failure.
            Self::Database(e) if e.as_database_error().is_some_and(|d| d.is_unique_violation()) => {
                (StatusCode::CONFLICT, "conflict", "already exists".into())
            }
            // The database is contended (a writer held the lock past the busy timeout, every pooled
            // connection is in use): nothing was written, and the same request shortly after will pass.
            Self::Database(e) if is_contention(e) => {
                (StatusCode::SERVICE_UNAVAILABLE, "busy", ApiError::Busy.to_string())
            }
            Self::Database(_) | Self::Internal(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error".into())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message) = self.parts();
        if status.is_server_error() {
            // Details go to the log only: they may name tables, paths or values.
            tracing::error!(error = %self, "control API request failed");
        }
        let body = serde_json::json!({ "error": { "code": code, "message": message } });
        let retry_after = match self {
            Self::RateLimited { retry_after_secs } => Some(retry_after_secs),
            Self::Busy => Some(1),
            Self::Database(ref e) if is_contention(e) => Some(1),
            _ => None,
        };
        let mut resp = (status, Json(body)).into_response();
        if let Some(secs) = retry_after {
            resp.headers_mut().insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        resp
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// Lock and pool contention, which a retry resolves: SQLite's `SQLITE_BUSY` and `SQLITE_LOCKED` (with their
/// extended codes), PostgreSQL's serialization failure, deadlock and lock-not-available, a pool with no
/// free connection in time.
fn is_contention(e: &sqlx::Error) -> bool {
    if matches!(e, sqlx::Error::PoolTimedOut) {
        return true;
    }
    let Some(code) = e.as_database_error().and_then(|d| d.code()) else { return false };
    // PostgreSQL's SQLSTATEs are five characters; SQLite's codes are numbers below 10,000, the primary
    // code in the low byte of the extended one.
    if code.len() == 5 {
        return matches!(&*code, "40001" | "40P01" | "55P03");
    }
    code.parse::<u32>().is_ok_and(|n| matches!(n & 0xff, 5 | 6))
}

/// Request bodies are small JSON documents; metadata, the largest field, is capped at 16 KiB.
pub const BODY_LIMIT: usize = 64 * 1024;

/// A JSON body whose every rejection is an [`ApiError`]: broken JSON → 400, a well-formed body that does
/// not fit the type (missing, unknown or mistyped field) → 422 naming the field. The content type is not
/// checked: `curl -d` sends form encoding by default and the body is what matters.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Self, ApiError> {
        let bytes = read_body(req.into_body()).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// How much of an oversized body is read (and dropped) before the 413 goes out. Answering while the
/// client is still sending makes hyper close the connection with the rest unread, and the client sees a
/// broken pipe instead of the 413; reading it to the end keeps the answer readable. Past this bound (or
/// [`DRAIN_TIME`]) the connection is closed anyway, so a huge upload cannot keep control busy.
const DRAIN_LIMIT: usize = 16 * 1024 * 1024;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// The body, at most [`BODY_LIMIT`] bytes; a larger one is drained (bounded) and refused with 413.
async fn read_body(mut body: Body) -> ApiResult<Bytes> {
    use http_body_util::BodyExt;
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::BadRequest(format!("reading the request body: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        if buf.len() + data.len() > BODY_LIMIT {
            let mut seen = buf.len() + data.len();
            let drain = async {
                while seen <= DRAIN_LIMIT {
                    match body.frame().await {
                        Some(Ok(frame)) => seen += frame.data_ref().map_or(0, |d| d.len()),
                        Some(Err(_)) | None => return,
                    }
                }
            };
            let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
            return Err(ApiError::TooLarge(BODY_LIMIT));
        }
        buf.extend_from_slice(&data);
    }
    Ok(buf.freeze())
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> ApiResult<T> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                if path == "." {
                    ApiError::InvalidField(format!("body: {inner}"))
                } else {
                    ApiError::InvalidField(format!("{path}: {inner}"))
                }
            }
            _ => ApiError::BadRequest(format!("malformed JSON body: {inner}")),
        }
    })?;
    Ok(value)
}

/// An id taken from the path. Anything that cannot be extracted cannot name an object: 404.
pub struct PathId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(id)| PathId(id))
            .map_err(|_| ApiError::not_found("object"))
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_locked_sqlite_database_is_busy_not_an_internal_error() {
        // Two connections to one file: the second cannot write while the first holds the write lock.
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("db").display());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            use sqlx::{ConnectOptions, Connection};
            let opts = url
                .parse::<sqlx::sqlite::SqliteConnectOptions>()
                .expect("url")
                .busy_timeout(std::time::Duration::from_millis(10));
            let mut a = opts.connect().await.expect("first");
            let mut b = opts.connect().await.expect("second");
            sqlx::query("CREATE TABLE t (x INTEGER)").execute(&mut a).await.expect("table");
            let mut tx = a.begin().await.expect("begin");
            sqlx::query("INSERT INTO t VALUES (1)").execute(&mut *tx).await.expect("insert");
            let err = sqlx::query("INSERT INTO t VALUES (2)").execute(&mut b).await.expect_err("locked");
            let (status, code, _) = ApiError::Database(err).parts();
            assert_eq!((status, code), (StatusCode::SERVICE_UNAVAILABLE, "busy"));
            tx.rollback().await.expect("rollback");
        });
        let (status, code, _) = ApiError::Database(sqlx::Error::PoolTimedOut).parts();
        assert_eq!((status, code), (StatusCode::SERVICE_UNAVAILABLE, "busy"));
        let (status, _, _) = ApiError::Database(sqlx::Error::RowNotFound).parts();
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    }
}
