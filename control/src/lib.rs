//! Portico's control service: the JSON API platforms configure Portico with (SPEC §3), its database, and
//! the feed that edges follow.

mod acme;
mod api;
mod auth;
mod certificates;
mod credentials;
mod db;
mod deployments;
mod dns;
mod error;
mod feed;
mod keys;
mod metrics;
mod notify;
mod releases;
mod validate;
mod wake;

use std::path::PathBuf;
use std::sync::Arc;

use portico_wire::{HostTemplate, Settings, TemplateKind};
use sqlx::AnyPool;
use tokio::sync::watch;

pub use error::ApiError;
pub use releases::ReleaseLimits;

/// What the binary hands to control; secrets come from the environment.
#[derive(Clone, Debug)]
pub struct ControlConfig {
    pub database_url: String,
    /// Holds `admin.key` / `edge.token` when they are generated (release archives are in the database).
    pub data_dir: PathBuf,
    pub admin_key: Option<String>,
    pub edge_token: Option<String>,
    pub host_templates: Vec<String>,
    pub default_frame_ancestors: Vec<String>,
    /// `http` or `https`, for URLs shown in responses.
    pub public_scheme: String,
    /// Appended to URLs shown in responses when set.
    pub public_port: Option<u16>,
    /// What tenant preview domains must CNAME to.
    pub cname_target: String,
    /// Rate limits for tenants that set none.
    pub default_rate_limits: portico_wire::RateLimits,
    /// The orchestrator control calls to wake sandboxes (`--wake-url`); `None`: wakes are refused.
    pub wake_url: Option<String>,
    /// The key wake calls are signed with (`PORTICO_WAKE_SECRET`); generated into the data dir if unset.
    pub wake_secret: Option<String>,
    /// How long one orchestrator call may take before the wake counts as failed.
    pub wake_url_timeout: std::time::Duration,
    /// Limits on static release archives (`--release-max-bytes`, `--release-max-files`).
    pub release_limits: ReleaseLimits,
    /// ACME directory URL (`--acme-directory`); `None`: no certificates are ordered.
    pub acme_directory: Option<String>,
    /// CA of the ACME server's HTTPS certificate (`--acme-ca-file`, for a test CA).
    pub acme_ca_file: Option<PathBuf>,
    /// DNS server preview-domain verification asks (`--dns-resolver`); `None`: the system's.
    pub dns_resolver: Option<std::net::SocketAddr>,
}

/// Start-up failures, each saying what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{0}")]
    HostTemplate(#[from] portico_wire::TemplateError),
    #[error("--default-frame-ancestors: {0}")]
    FrameAncestors(String),
    #[error("public scheme must be \"http\" or \"https\", not {0:?}")]
    PublicScheme(String),
    #[error("{}: {}", .0.display(), .1)]
    Io(PathBuf, #[source] std::io::Error),
    #[error("{}: the file is empty; delete it to generate a new secret", .0.display())]
    EmptySecretFile(PathBuf),
    #[error("database: {0}")]
    Database(String),
    #[error("--wake-url: {0}")]
    WakeUrl(String),
    #[error("--acme-directory: {0}")]
    Acme(String),
}

/// State shared by every request handler.
pub(crate) struct AppState {
    pub pool: AnyPool,
    pub notify: watch::Sender<u64>,
    pub admin_key_sha256: String,
    pub edge_token_sha256: String,
    /// The template preview URLs are rendered with.
    pub url_template: Option<HostTemplate>,
    /// The template embed URLs of preview tokens are rendered with (`{port}-{sandbox}` form).
    pub port_template: Option<HostTemplate>,
    pub public_scheme: String,
    pub public_port: Option<u16>,
    pub cname_target: String,
    pub default_rate_limits: portico_wire::RateLimits,
    pub waker: wake::Waker,
    /// The template deployment hosts are rendered with (`{app}.{workspace}` form).
    pub app_template: Option<HostTemplate>,
    /// Every host template: a custom domain must not be a host they already route.
    pub templates: Vec<HostTemplate>,
    /// Limits on static release archives; the archives themselves are in the database.
    pub release_limits: ReleaseLimits,
    /// Resolves preview-domain CNAMEs for verification.
    pub dns: dns::Dns,
}

pub(crate) type App = Arc<AppState>;

/// A running control service: its database, keys and the feed's change signal.
pub struct Control {
    state: App,
    edge_token: String,
}

impl Control {
    /// Opens and migrates the database, bootstraps the admin key and edge token, and records the
    /// command-line settings in the feed when they changed.
    pub async fn start(config: ControlConfig) -> Result<Control, ControlError> {
        let templates =
            config.host_templates.iter().map(|t| HostTemplate::parse(t)).collect::<Result<Vec<_>, _>>()?;
        let default_frame_ancestors = if config.default_frame_ancestors.is_empty() {
            Vec::new()
        } else {
            validate::frame_ancestors("sources", &config.default_frame_ancestors)
                .map_err(|e| ControlError::FrameAncestors(e.to_string()))?
        };
        if config.public_scheme != "http" && config.public_scheme != "https" {
            return Err(ControlError::PublicScheme(config.public_scheme));
        }
        let port_template = templates.iter().find(|t| t.kind() == TemplateKind::SandboxPort).cloned();
        let url_template = templates
            .iter()
            .find(|t| t.kind() == TemplateKind::Preview)
            .or_else(|| templates.iter().find(|t| t.kind() == TemplateKind::SandboxPort))
            .cloned();

        let admin = keys::bootstrap_secret(
            config.admin_key.as_deref(),
            &config.data_dir,
            "admin.key",
            keys::new_admin_key,
        )?;
        if let keys::Bootstrapped::Generated { secret, path } = &admin {
            println!("admin key (shown once, stored in {}): {secret}", path.display());
        }
        let edge = keys::bootstrap_secret(
            config.edge_token.as_deref(),
            &config.data_dir,
            "edge.token",
            keys::random_secret,
        )?;
        if let keys::Bootstrapped::Generated { secret, path } = &edge {
            println!("edge token (stored in {}): {secret}", path.display());
        }

        let waker = waker(&config)?;
        let acme = acme_config(&config)?;

        let pool = db::open(&config.database_url).await?;
        // PostgreSQL: hear other replicas' commits (started before the version is read: no gap).
        let listener = notify::listen(&config.database_url).await?;
        let version: i64 = sqlx::query_scalar("SELECT version FROM feed_state WHERE id = 1")
            .fetch_one(&pool)
            .await
            .map_err(|e| ControlError::Database(e.to_string()))?;
        let (notify, _) = watch::channel(u64::try_from(version).unwrap_or_default());
        let settings = Settings {
            host_templates: templates.iter().map(|t| t.as_str().to_string()).collect(),
            default_frame_ancestors,
            default_rate_limits: config.default_rate_limits,
        };
        db::store_settings(&pool, &notify, &settings)
            .await
            .map_err(|e| ControlError::Database(format!("storing settings: {e}")))?;

        let state = Arc::new(AppState {
            pool,
            notify,
            admin_key_sha256: keys::sha256_hex(admin.secret()),
            edge_token_sha256: keys::sha256_hex(edge.secret()),
            url_template,
            port_template,
            public_scheme: config.public_scheme,
            public_port: config.public_port,
            cname_target: config.cname_target,
            default_rate_limits: config.default_rate_limits,
            waker,
            app_template: templates.iter().find(|t| t.kind() == TemplateKind::Deployment).cloned(),
            release_limits: config.release_limits,
            dns: dns::Dns::new(config.dns_resolver),
            templates,
        });
        credentials::ensure_key(&state.pool, &state.notify)
            .await
            .map_err(|e| ControlError::Database(format!("creating the token signing key: {e}")))?;
        if let Some(listener) = listener {
            tokio::spawn(notify::forward(config.database_url.clone(), listener, Arc::downgrade(&state)));
        }
        // The pruner holds a weak reference: it stops once the Control and every router are gone.
        tokio::spawn(feed::prune_forever(Arc::downgrade(&state)));
        if let Some(acme) = acme {
            tracing::info!(directory = %acme.directory, "ACME on: ordering certificates for custom and preview domains");
            tokio::spawn(acme::run(Arc::downgrade(&state), acme));
        }
        Ok(Control { state, edge_token: edge.secret().to_string() })
    }

    /// The whole API, control and edge-facing, as one router.
    pub fn router(&self) -> axum::Router {
        api::router(self.state.clone())
    }

    /// The token edges present on the feed; `portico up` hands it to its in-process edge.
    pub fn edge_token(&self) -> &str {
        &self.edge_token
    }
}

/// `portico control --check`: the flags as `start` reads them, and a connection to the database — without
/// creating keys, migrating or writing anything.
pub async fn check(config: &ControlConfig) -> Result<(), ControlError> {
    for t in &config.host_templates {
        HostTemplate::parse(t)?;
    }
    if !config.default_frame_ancestors.is_empty() {
        validate::frame_ancestors("sources", &config.default_frame_ancestors)
            .map_err(|e| ControlError::FrameAncestors(e.to_string()))?;
    }
    if config.public_scheme != "http" && config.public_scheme != "https" {
        return Err(ControlError::PublicScheme(config.public_scheme.clone()));
    }
    if let Some(url) = &config.wake_url {
        check_wake_url(url)?;
    }
    acme_config(config)?;
    db::ping(&config.database_url).await
}

/// `--wake-url` must be an absolute http(s) URL; also what `--check` runs.
pub fn check_wake_url(url: &str) -> Result<(), ControlError> {
    let parsed = url::Url::parse(url).map_err(|e| ControlError::WakeUrl(e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(ControlError::WakeUrl("must be an http or https URL".into()));
    }
    Ok(())
}

/// `--acme-directory` and `--acme-ca-file`, checked before anything starts.
fn acme_config(config: &ControlConfig) -> Result<Option<acme::AcmeConfig>, ControlError> {
    let Some(directory) = &config.acme_directory else {
        if config.acme_ca_file.is_some() {
            return Err(ControlError::Acme("--acme-ca-file needs --acme-directory".into()));
        }
        return Ok(None);
    };
    let parsed = url::Url::parse(directory).map_err(|e| ControlError::Acme(e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(ControlError::Acme("must be an https URL".into()));
    }
    if let Some(ca) = &config.acme_ca_file {
        std::fs::metadata(ca).map_err(|e| ControlError::Io(ca.clone(), e))?;
    }
    Ok(Some(acme::AcmeConfig { directory: directory.clone(), ca_file: config.acme_ca_file.clone() }))
}

/// The orchestrator client: `--wake-url` checked, the signing secret from the environment or the data dir.
fn waker(config: &ControlConfig) -> Result<wake::Waker, ControlError> {
    let Some(url) = &config.wake_url else {
        return wake::Waker::new(None, "", config.wake_url_timeout)
            .map_err(|e| ControlError::WakeUrl(e.to_string()));
    };
    check_wake_url(url)?;
    let secret = keys::bootstrap_secret(
        config.wake_secret.as_deref(),
        &config.data_dir,
        "wake.secret",
        keys::random_secret,
    )?;
    if let keys::Bootstrapped::Generated { path, .. } = &secret {
        // The orchestrator needs this secret to check signatures; it is not printed, only where it is.
        println!("wake signing secret generated in {}; give it to the orchestrator", path.display());
    }
    wake::Waker::new(Some(url.clone()), secret.secret(), config.wake_url_timeout)
        .map_err(|e| ControlError::WakeUrl(e.to_string()))
}
