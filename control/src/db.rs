//! The database: opening it, the rows it holds, and write transactions that record feed changes.
//!
//! Every mutation goes through [`Write`], which bumps the single feed counter first. On SQLite that takes
//! the write lock up front (no lock upgrade to fail midway); on PostgreSQL the row lock serialises
//! writers, so version order is commit order.

use std::path::PathBuf;

use portico_wire as wire;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyConnection, AnyPool, Transaction};
use tokio::sync::watch;

use crate::config::ControlError;
use crate::error::{ApiError, ApiResult};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

pub fn now_ms() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

/// Unix milliseconds as RFC 3339, the form shown in responses.
pub fn timestamp(ms: i64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

/// The file behind a `sqlite:` URL, or `None` for an in-memory database or another backend.
fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" || url.contains("mode=memory") {
        return None;
    }
    Some(PathBuf::from(path))
}

/// Opens the database (creating an SQLite file 0600 first), applies the migrations.
pub async fn open(url: &str) -> Result<AnyPool, ControlError> {
    sqlx::any::install_default_drivers();
    let is_sqlite = url.starts_with("sqlite:");
    if let Some(path) = sqlite_path(url) {
        create_private_file(&path)?;
    }
    // An in-memory SQLite database exists per connection: one connection, or each sees a different db.
    let in_memory = is_sqlite && sqlite_path(url).is_none();
    let max = if in_memory {
        1
    } else if is_sqlite {
        8
    } else {
        16
    };
    let pool = AnyPoolOptions::new()
        .max_connections(max)
        .connect(url)
        .await
        .map_err(|e| ControlError::Database(format!("cannot open {}: {e}", redact(url))))?;
    if is_sqlite && !in_memory {
        // WAL lets the feed's long reads run beside writers; the setting persists in the file.
        sqlx::query("PRAGMA journal_mode=WAL")
            .execute(&pool)
            .await
            .map_err(|e| ControlError::Database(format!("cannot enable WAL: {e}")))?;
    }
    MIGRATOR.run(&pool).await.map_err(|e| ControlError::Database(format!("migration failed: {e}")))?;
    Ok(pool)
}

/// Connects once and runs `SELECT 1`: what `--check` needs to know the database is there.
pub async fn ping(url: &str) -> Result<(), ControlError> {
    sqlx::any::install_default_drivers();
    let fail = |e: sqlx::Error| ControlError::Database(format!("cannot reach {}: {e}", redact(url)));
    let pool = AnyPoolOptions::new().max_connections(1).connect(url).await.map_err(fail)?;
    sqlx::query("SELECT 1").execute(&pool).await.map_err(fail)?;
    pool.close().await;
    Ok(())
}

/// Database URLs may carry a password; keep only the scheme in messages.
fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) if rest.contains('@') => format!("{scheme}://…"),
        _ => url.to_string(),
    }
}

fn create_private_file(path: &std::path::Path) -> Result<(), ControlError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| ControlError::Io(parent.to_path_buf(), e))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path).map_err(|e| ControlError::Io(path.to_path_buf(), e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| ControlError::Io(path.to_path_buf(), e))?;
    }
    Ok(())
}

/// Starts a transaction whose reads all see one state (PostgreSQL's default sees a new one per statement).
pub async fn begin_read(pool: &AnyPool) -> ApiResult<Transaction<'static, sqlx::Any>> {
    let mut tx = pool.begin().await?;
    if tx.backend_name() == "PostgreSQL" {
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY").execute(&mut *tx).await?;
    }
    Ok(tx)
}

/// What a feed change row names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Settings,
    Tenant,
    Sandbox,
    Preview,
    VerifyKey,
    Share,
    Revocation,
    Deployment,
    Certificate,
    AcmeChallenge,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Settings => "settings",
            Self::Tenant => "tenant",
            Self::Sandbox => "sandbox",
            Self::Preview => "preview",
            Self::VerifyKey => "verify_key",
            Self::Share => "share",
            Self::Revocation => "revocation",
            Self::Deployment => "deployment",
            Self::Certificate => "certificate",
            Self::AcmeChallenge => "acme_challenge",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "settings" => Self::Settings,
            "tenant" => Self::Tenant,
            "sandbox" => Self::Sandbox,
            "preview" => Self::Preview,
            "verify_key" => Self::VerifyKey,
            "share" => Self::Share,
            "revocation" => Self::Revocation,
            "deployment" => Self::Deployment,
            "certificate" => Self::Certificate,
            "acme_challenge" => Self::AcmeChallenge,
            _ => return None,
        })
    }
}

/// A write transaction that has claimed the next feed version.
pub struct Write {
    pub tx: Transaction<'static, sqlx::Any>,
    version: i64,
    touched: Vec<(Kind, String)>,
}

impl Write {
    pub async fn begin(pool: &AnyPool) -> ApiResult<Self> {
        let mut tx = pool.begin().await?;
        if tx.backend_name() == "PostgreSQL" {
            // READ COMMITTED whatever the server's default: a writer that waited for the feed_state row
            // then reads, statement by statement, what the writers before it committed (no lost update);
            // under REPEATABLE READ it would fail with a serialization error instead.
            sqlx::query("SET TRANSACTION ISOLATION LEVEL READ COMMITTED").execute(&mut *tx).await?;
        }
        let version: i64 =
            sqlx::query_scalar("UPDATE feed_state SET version = version + 1 WHERE id = 1 RETURNING version")
                .fetch_one(&mut *tx)
                .await?;
        Ok(Self { tx, version, touched: Vec::new() })
    }

    pub fn conn(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }

    /// Notes that an object changed (or went); the edge re-reads it when it follows the feed.
    pub fn touch(&mut self, kind: Kind, id: &str) {
        if !self.touched.iter().any(|(k, i)| *k == kind && i == id) {
            self.touched.push((kind, id.to_string()));
        }
    }

    pub async fn commit(mut self, notify: &watch::Sender<u64>) -> ApiResult<()> {
        let now = now_ms();
        for (kind, id) in &self.touched {
            sqlx::query("INSERT INTO changes (version, kind, object_id, created_at) VALUES ($1, $2, $3, $4)")
                .bind(self.version)
                .bind(kind.as_str())
                .bind(id.as_str())
                .bind(now)
                .execute(&mut *self.tx)
                .await?;
        }
        if self.tx.backend_name() == "PostgreSQL" {
            // Delivered to every replica's listener on commit, and only if it commits (crate::notify).
            sqlx::query("SELECT 1 FROM pg_notify($1, $2)")
                .bind(crate::notify::CHANNEL)
                .bind(self.version.to_string())
                .execute(&mut *self.tx)
                .await?;
        }
        self.tx.commit().await?;
        let version = u64::try_from(self.version).unwrap_or_default();
        notify.send_modify(|v| *v = (*v).max(version));
        Ok(())
    }
}

/// An enum's serde name (`"running"`), as stored in TEXT columns.
pub fn enum_text<T: Serialize>(value: T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

pub fn enum_parse<T: DeserializeOwned>(column: &str, text: &str) -> ApiResult<T> {
    serde_json::from_value(serde_json::Value::String(text.to_string()))
        .map_err(|_| ApiError::Internal(format!("bad {column} value in the database: {text:?}")))
}

fn json_parse<T: DeserializeOwned>(column: &str, text: &str) -> ApiResult<T> {
    serde_json::from_str(text)
        .map_err(|e| ApiError::Internal(format!("bad {column} JSON in the database: {e}")))
}

pub const TENANT_COLUMNS: &str = "id, name, created_at, branding, frame_ancestors, rate_limits, \
     preview_domain, preview_domain_status, upstream_cidrs, quotas";

#[derive(Debug, sqlx::FromRow)]
pub struct TenantRow {
    pub id: String,
    pub name: String,
    pub created_at: i64,
    pub branding: Option<String>,
    pub frame_ancestors: Option<String>,
    pub rate_limits: String,
    pub preview_domain: Option<String>,
    pub preview_domain_status: Option<String>,
    /// JSON array of CIDRs; NULL: the global upstream policy alone.
    pub upstream_cidrs: Option<String>,
    /// JSON object of the admin's quota overrides; NULL: the flag defaults.
    pub quotas: Option<String>,
}

impl TenantRow {
    /// The admin's narrowing of the upstream policy; `None`: the global `--upstream-allow` alone.
    pub fn upstream_cidrs(&self) -> ApiResult<Option<Vec<wire::Cidr>>> {
        parse_cidrs(self.upstream_cidrs.as_deref())
    }

    pub fn quotas(&self, defaults: crate::Quotas) -> ApiResult<crate::Quotas> {
        Ok(crate::quotas::parse(self.quotas.as_deref())?.apply(defaults))
    }

    pub fn branding(&self) -> ApiResult<Option<wire::Branding>> {
        self.branding.as_deref().map(|t| json_parse("branding", t)).transpose()
    }

    pub fn frame_ancestors(&self) -> ApiResult<Option<Vec<String>>> {
        self.frame_ancestors.as_deref().map(|t| json_parse("frame_ancestors", t)).transpose()
    }

    /// The tenant's own limits; `None` (stored as JSON `null`) means the platform default.
    pub fn rate_limits(&self) -> ApiResult<Option<wire::RateLimits>> {
        json_parse("rate_limits", &self.rate_limits)
    }

    pub fn to_wire(&self) -> ApiResult<wire::Tenant> {
        let verified = self.preview_domain_status.as_deref() == Some("verified");
        Ok(wire::Tenant {
            id: self.id.clone(),
            branding: self.branding()?,
            frame_ancestors: self.frame_ancestors()?,
            rate_limits: self.rate_limits()?,
            preview_domain: if verified { self.preview_domain.clone() } else { None },
            upstream_cidrs: self.upstream_cidrs()?,
        })
    }
}

pub const SANDBOX_COLUMNS: &str = "id, tenant_id, address, state, default_visibility, wake_policy, \
     preview_auth_sha256, external_user_id, external_project_id, metadata, created_at, last_request_at, \
     allow_preflight";

#[derive(Debug, sqlx::FromRow)]
pub struct SandboxRow {
    pub id: String,
    pub tenant_id: String,
    pub address: String,
    pub state: String,
    pub default_visibility: String,
    pub wake_policy: String,
    pub preview_auth_sha256: Option<String>,
    pub external_user_id: Option<String>,
    pub external_project_id: Option<String>,
    pub metadata: Option<String>,
    pub created_at: i64,
    pub last_request_at: Option<i64>,
    pub allow_preflight: i64,
}

impl SandboxRow {
    pub fn to_wire(&self) -> ApiResult<wire::Sandbox> {
        Ok(wire::Sandbox {
            id: self.id.as_str().into(),
            tenant_id: self.tenant_id.as_str().into(),
            address: self.address.as_str().into(),
            state: enum_parse("state", &self.state)?,
            default_visibility: enum_parse("default_visibility", &self.default_visibility)?,
            wake_policy: enum_parse("wake_policy", &self.wake_policy)?,
            // Control wrote it as hex: were it not, the sandbox would have no token the edge accepts.
            preview_auth_sha256: self.preview_auth_sha256.as_deref().and_then(wire::tokens::Sha256::from_hex),
            allow_preflight: self.allow_preflight != 0,
        })
    }

    pub fn metadata(&self) -> ApiResult<Option<serde_json::Value>> {
        self.metadata.as_deref().map(|t| json_parse("metadata", t)).transpose()
    }
}

pub const PREVIEW_COLUMNS: &str = "id, slug, tenant_id, sandbox_id, port, visibility, created_at";

#[derive(Debug, sqlx::FromRow)]
pub struct PreviewRow {
    pub id: String,
    pub slug: String,
    pub tenant_id: String,
    pub sandbox_id: String,
    pub port: i64,
    pub visibility: String,
    pub created_at: i64,
}

impl PreviewRow {
    pub fn port(&self) -> ApiResult<u16> {
        u16::try_from(self.port)
            .map_err(|_| ApiError::Internal(format!("bad port {} in the database", self.port)))
    }

    pub fn to_wire(&self) -> ApiResult<wire::Preview> {
        Ok(wire::Preview {
            id: self.id.as_str().into(),
            slug: self.slug.as_str().into(),
            tenant_id: self.tenant_id.as_str().into(),
            sandbox_id: self.sandbox_id.as_str().into(),
            port: self.port()?,
            visibility: enum_parse("visibility", &self.visibility)?,
        })
    }
}

pub async fn tenant(conn: &mut AnyConnection, id: &str) -> ApiResult<Option<TenantRow>> {
    let sql = format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE id = $1");
    Ok(sqlx::query_as(&sql).bind(id).fetch_optional(conn).await?)
}

fn parse_cidrs(text: Option<&str>) -> ApiResult<Option<Vec<wire::Cidr>>> {
    Ok(text.map(|t| json_parse::<Option<Vec<wire::Cidr>>>("upstream_cidrs", t)).transpose()?.flatten())
}

/// The tenant's narrowing of the upstream policy, for checking an address it hands control.
pub async fn tenant_upstream(
    conn: &mut AnyConnection,
    tenant_id: &str,
) -> ApiResult<Option<Vec<wire::Cidr>>> {
    let text: Option<Option<String>> = sqlx::query_scalar("SELECT upstream_cidrs FROM tenants WHERE id = $1")
        .bind(tenant_id)
        .fetch_optional(conn)
        .await?;
    parse_cidrs(text.flatten().as_deref())
}

pub async fn sandbox(conn: &mut AnyConnection, id: &str) -> ApiResult<Option<SandboxRow>> {
    let sql = format!("SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE id = $1");
    Ok(sqlx::query_as(&sql).bind(id).fetch_optional(conn).await?)
}

pub async fn preview(conn: &mut AnyConnection, id: &str) -> ApiResult<Option<PreviewRow>> {
    let sql = format!("SELECT {PREVIEW_COLUMNS} FROM previews WHERE id = $1");
    Ok(sqlx::query_as(&sql).bind(id).fetch_optional(conn).await?)
}

pub async fn settings(conn: &mut AnyConnection) -> ApiResult<Option<wire::Settings>> {
    let body: Option<String> =
        sqlx::query_scalar("SELECT body FROM settings WHERE id = 1").fetch_optional(conn).await?;
    body.as_deref().map(|b| json_parse("settings", b)).transpose()
}

/// Stores the command-line settings; records a feed change only when they differ from the stored ones.
pub async fn store_settings(
    pool: &AnyPool,
    notify: &watch::Sender<u64>,
    settings: &wire::Settings,
) -> Result<bool, ApiError> {
    let mut write = Write::begin(pool).await?;
    let stored = self::settings(write.conn()).await?;
    if stored.as_ref() == Some(settings) {
        // Nothing changed: roll back, so the version bump never happened.
        write.tx.rollback().await?;
        return Ok(false);
    }
    let body = serde_json::to_string(settings).map_err(|e| ApiError::Internal(e.to_string()))?;
    sqlx::query("DELETE FROM settings WHERE id = 1").execute(write.conn()).await?;
    sqlx::query("INSERT INTO settings (id, body) VALUES (1, $1)").bind(body).execute(write.conn()).await?;
    write.touch(Kind::Settings, "settings");
    write.commit(notify).await?;
    Ok(true)
}
