//! What the binary hands to control, and the start-up errors that say what to fix.

use std::path::PathBuf;

use crate::releases::ReleaseLimits;

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
    /// The port of a preview token's `embed_url` when the token names no port and the sandbox has no
    /// preview (`--default-embed-port`, 3000).
    pub default_embed_port: u16,
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
    /// Where sandboxes and deployment instances may live (`--upstream-allow`); edges get it too.
    pub upstream_allow: Vec<portico_wire::Cidr>,
    /// Quotas of tenants the admin set none for (`--quota-*`).
    pub quotas: crate::Quotas,
    /// ACME orders each tenant may cause per hour (`--acme-orders-per-hour`).
    pub acme_orders_per_hour: u32,
    /// How many versions the snapshot served to starting edges may lag behind the database before it is
    /// rebuilt (`--feed-snapshot-lag`); the edge catches up through the changes after it.
    pub feed_snapshot_lag: u64,
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
