//! Starting control: flags checked, database opened and migrated, secrets bootstrapped, background tasks.

use std::sync::Arc;

use portico_wire::{HostTemplate, Settings, TemplateKind};
use tokio::sync::watch;

use crate::config::{ControlConfig, ControlError};
use crate::state::{App, AppState};
use crate::{acme, api, credentials, db, dns, feed, guessing, keys, notify, validate, wake};

/// A running control service: its database, keys and the feed's change signal.
#[derive(Clone)]
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
        // Only the path: the token itself would linger in terminal scroll-back and service logs.
        if let keys::Bootstrapped::Generated { path, .. } = &edge {
            println!("edge token generated, stored in {}", path.display());
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
            upstream_allow: config.upstream_allow.clone(),
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
            default_embed_port: config.default_embed_port,
            cname_target: config.cname_target,
            default_rate_limits: config.default_rate_limits,
            upstream_allow: config.upstream_allow.clone(),
            quotas: config.quotas,
            waker,
            app_template: templates.iter().find(|t| t.kind() == TemplateKind::Deployment).cloned(),
            release_limits: config.release_limits,
            dns: dns::Dns::new(config.dns_resolver),
            templates,
            shutdown: watch::channel(false).0,
            snapshots: feed::snapshots::Snapshots::new(config.feed_snapshot_lag),
            // PBKDF2 is CPU-bound and runs on the blocking pool: no more at once than there are cores.
            guessing: guessing::Guessing::new(
                std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get),
            ),
        });
        credentials::ensure_key(&state.pool, &state.notify)
            .await
            .map_err(|e| ControlError::Database(format!("creating the token signing key: {e}")))?;
        if let Some(listener) = listener {
            tokio::spawn(notify::forward(config.database_url.clone(), listener, Arc::downgrade(&state)));
        }
        // The pruner holds a weak reference: it stops once the Control and every router are gone.
        tokio::spawn(feed::prune_forever(Arc::downgrade(&state)));
        tokio::spawn(feed::snapshots::warm(Arc::downgrade(&state)));
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

    /// Ends pending and later feed long-polls at once (each answers "no changes"), so a graceful HTTP
    /// shutdown does not wait out their timers. Call it when the shutdown signal arrives.
    pub fn begin_shutdown(&self) {
        self.state.shutdown.send_replace(true);
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
    Ok(Some(acme::AcmeConfig {
        directory: directory.clone(),
        ca_file: config.acme_ca_file.clone(),
        orders_per_hour: config.acme_orders_per_hour,
    }))
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
