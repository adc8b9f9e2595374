//! Portico's control service: the JSON API platforms configure Portico with (SPEC §3), its database, and
//! the feed that edges follow.

mod api;
mod auth;
mod db;
mod error;
mod feed;
mod keys;
mod validate;

use std::path::PathBuf;
use std::sync::Arc;

use portico_wire::{HostTemplate, Settings, TemplateKind};
use sqlx::AnyPool;
use tokio::sync::watch;

pub use error::ApiError;

/// What the binary hands to control; secrets come from the environment.
#[derive(Clone, Debug)]
pub struct ControlConfig {
    pub database_url: String,
    /// Holds `admin.key` / `edge.token` when they are generated.
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
}

/// State shared by every request handler.
pub(crate) struct AppState {
    pub pool: AnyPool,
    pub notify: watch::Sender<u64>,
    pub admin_key_sha256: String,
    pub edge_token_sha256: String,
    /// The template preview URLs are rendered with.
    pub url_template: Option<HostTemplate>,
    pub public_scheme: String,
    pub public_port: Option<u16>,
    pub cname_target: String,
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

        let pool = db::open(&config.database_url).await?;
        let version: i64 = sqlx::query_scalar("SELECT version FROM feed_state WHERE id = 1")
            .fetch_one(&pool)
            .await
            .map_err(|e| ControlError::Database(e.to_string()))?;
        let (notify, _) = watch::channel(u64::try_from(version).unwrap_or_default());
        let settings = Settings {
            host_templates: templates.iter().map(|t| t.as_str().to_string()).collect(),
            default_frame_ancestors,
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
            public_scheme: config.public_scheme,
            public_port: config.public_port,
            cname_target: config.cname_target,
        });
        // The pruner holds a weak reference: it stops once the Control and every router are gone.
        tokio::spawn(feed::prune_forever(Arc::downgrade(&state)));
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
