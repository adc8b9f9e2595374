//! `portico edge`: a Pingora server that routes preview hosts to sandbox ports. Follow one request through
//! `proxy.rs`; the state it reads is in `state.rs` and arrives through `feed.rs`.

pub mod auth;
pub mod error;
pub mod feed;
pub mod headers;
pub mod metrics;
pub mod pages;
pub mod proxy;
pub mod route;
pub mod state;

use std::path::PathBuf;
use std::sync::Arc;

use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;

pub use error::EdgeError;
use feed::{FeedClient, FeedError};
use state::{EdgeState, Snapshot};

/// Everything `portico edge` needs, already validated by the command line.
#[derive(Clone, Debug)]
pub struct EdgeConfig {
    pub control_urls: Vec<String>,
    pub edge_token: String,
    pub http: String,
    pub metrics: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub upgrade: bool,
    pub threads: usize,
    pub upstream_timeout: std::time::Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("at least one --control-url is required")]
    NoControl,
    #[error("PORTICO_EDGE_TOKEN is required: the edge authenticates to control with it")]
    NoEdgeToken,
    #[error("reading the saved state in {dir}: {source}")]
    State { dir: PathBuf, source: FeedError },
    #[error(transparent)]
    Feed(#[from] FeedError),
}

/// Builds the Pingora server: the proxy on `--http`, metrics on `--metrics`, the feed in the background.
pub fn server(config: EdgeConfig) -> Result<Server, StartError> {
    if config.control_urls.is_empty() {
        return Err(StartError::NoControl);
    }
    if config.edge_token.is_empty() {
        return Err(StartError::NoEdgeToken);
    }
    let state = Arc::new(EdgeState::new(Snapshot::empty()));
    if let Some(dir) = &config.state_dir {
        match feed::load(dir) {
            Ok(Some((snapshot, saved_at))) => {
                tracing::info!(
                    version = snapshot.version,
                    "serving the saved routing state until control answers"
                );
                state.store(snapshot);
                state.set_synced_at(saved_at);
            }
            Ok(None) => {}
            Err(source) => return Err(StartError::State { dir: dir.clone(), source }),
        }
    }
    metrics::init();

    let mut conf = ServerConf {
        threads: config.threads.max(1),
        // SIGTERM drains for a moment and then stops: tests and `portico up` must not wait 5 minutes.
        grace_period_seconds: Some(1),
        graceful_shutdown_timeout_seconds: Some(2),
        ..ServerConf::default()
    };
    if let Some(dir) = &config.state_dir {
        conf.upgrade_sock = dir.join("upgrade.sock").to_string_lossy().into_owned();
        conf.pid_file = dir.join("edge.pid").to_string_lossy().into_owned();
    }
    let opt = Opt { upgrade: config.upgrade, ..Opt::default() };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let edge =
        proxy::Edge { state: state.clone(), scheme: "http", upstream_timeout: config.upstream_timeout };
    let mut proxy = pingora::proxy::http_proxy_service_with_name(&server.configuration, edge, "portico edge");
    proxy.add_tcp(&config.http);
    server.add_service(proxy);

    if let Some(addr) = &config.metrics {
        let mut svc = Service::new("metrics".to_string(), metrics::MetricsApp { state: state.clone() });
        svc.add_tcp(addr);
        server.add_service(svc);
    }

    let feed = FeedClient::new(config.control_urls, config.edge_token, state, config.state_dir)?;
    server.add_service(background_service("feed", feed));
    Ok(server)
}
