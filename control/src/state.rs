//! The state every request handler shares: the database, the feed's change signal, keys and settings.

use std::sync::Arc;

use portico_wire::HostTemplate;
use sqlx::AnyPool;
use tokio::sync::watch;

use crate::releases::ReleaseLimits;
use crate::{dns, feed, guessing, wake};

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
    /// The port a preview token's `embed_url` opens when the token names none and the sandbox has no
    /// preview (`--default-embed-port`).
    pub default_embed_port: u16,
    pub cname_target: String,
    pub default_rate_limits: portico_wire::RateLimits,
    /// Where sandboxes and deployment instances may live (`--upstream-allow`).
    pub upstream_allow: Vec<portico_wire::Cidr>,
    /// Quotas of tenants the admin set none for (`--quota-*`).
    pub quotas: crate::Quotas,
    pub waker: wake::Waker,
    /// The template deployment hosts are rendered with (`{app}.{workspace}` form).
    pub app_template: Option<HostTemplate>,
    /// Every host template: a custom domain must not be a host they already route.
    pub templates: Vec<HostTemplate>,
    /// Limits on static release archives; the archives themselves are in the database.
    pub release_limits: ReleaseLimits,
    /// Resolves preview-domain CNAMEs for verification.
    pub dns: dns::Dns,
    /// Turns `true` when the process starts shutting down: pending long-polls answer at once instead of
    /// holding the graceful shutdown open for their whole wait (SPEC §1: exit within 5 s).
    pub shutdown: watch::Sender<bool>,
    /// Share-password attempts per share and per client IP, and the bound on hashes at once.
    pub guessing: guessing::Guessing,
    /// The latest feed snapshot, compressed once and shared by every edge that starts.
    pub snapshots: feed::snapshots::Snapshots,
}

pub(crate) type App = Arc<AppState>;
