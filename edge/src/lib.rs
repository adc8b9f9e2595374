//! `portico edge`: a Pingora server that routes preview hosts to sandbox ports. Follow one request through
//! `proxy.rs`; the state it reads is in `state.rs` and arrives through `feed.rs`.

pub mod accesslog;
pub mod acme;
pub mod activity;
pub mod auth;
pub mod client;
pub mod control;
pub mod deploy;
pub mod error;
pub mod feed;
pub mod headers;
pub mod lookup;
pub mod memory;
pub mod metrics;
pub mod pages;
pub mod proxy;
pub mod ratelimit;
pub mod request_id;
pub mod resolve;
pub mod route;
pub mod state;
pub mod statics;
pub mod timers;
pub mod tls;
pub mod upstream;
pub mod usage;
pub mod wake;

use std::path::PathBuf;
use std::sync::Arc;

use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::background::{background_service, GenBackgroundService};
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
    /// How long requests wait for a hibernated sandbox to wake (`--wake-timeout`).
    pub wake_timeout: std::time::Duration,
    /// Peers whose `X-Forwarded-For` names the client (`--trusted-proxy`).
    pub trusted_proxies: Vec<client::Cidr>,
    /// The HTTPS listener (`--https`); `None`: plain HTTP only.
    pub https: Option<String>,
    /// PEM certificates followed at run time (`--certs-dir`), beside those control sends.
    pub certs_dir: Option<PathBuf>,
    /// Send plain-HTTP requests for hosts that have a certificate to HTTPS (`--redirect-https`).
    pub redirect_https: bool,
    /// `/readyz` on the metrics listener answers 503 once control last confirmed the state this long ago.
    pub ready_max_age: std::time::Duration,
    /// Where the access log goes (`--access-log`).
    pub access_log: accesslog::Destination,
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
    #[error("no control service accepts this edge:\n{0}")]
    Check(String),
    #[error("building the HTTP client for control: {0}")]
    Http(#[from] reqwest::Error),
    #[error("--https {0:?} is not an address with a port")]
    HttpsAddr(String),
    #[error("--redirect-https needs --https")]
    RedirectWithoutHttps,
    #[error("setting up the HTTPS listener: {0}")]
    Tls(Box<pingora::Error>),
    #[error("opening the access log {0}: {1}")]
    AccessLog(accesslog::Destination, std::io::Error),
    #[error("setting up DNS for sandbox host names: {0}")]
    Dns(#[from] hickory_resolver::net::NetError),
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
                memory::release_freed();
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
        // Measured with `benches/proxies.sh`, one worker: each worker thread runs its own runtime and keeps
        // the connections it was handed (spread at random) — 10–12 % less CPU per proxied request than
        // Tokio's work-stealing scheduler, and the upstream time-outs below stop costing ~2 µs each.
        work_stealing: false,
        // Time-outs of a second or more (every upstream and WebSocket one) on Tokio's timer wheel, which
        // forgets a cancelled one at once, rather than Pingora's shared 10 ms timer map, which keeps it
        // until its deadline (a minute for the upstream's) and costs more to enter per request.
        fast_timeout_to_tokio_threshold_seconds: Some(0),
        ..ServerConf::default()
    };
    if let Some(dir) = &config.state_dir {
        conf.upgrade_sock = dir.join("upgrade.sock").to_string_lossy().into_owned();
        conf.pid_file = dir.join("edge.pid").to_string_lossy().into_owned();
    }
    let opt = Opt { upgrade: config.upgrade, ..Opt::default() };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();
    // After taking over the sockets (an upgrade) and before accepting: new connections wait in the
    // backlog for the moment it takes, and never see a state older than control's.
    let feed = FeedClient::new(
        config.control_urls.clone(),
        config.edge_token.clone(),
        state.clone(),
        config.state_dir.clone(),
    )?;
    // With a saved state, a slow control must not hold up serving it. With none there is nothing to serve
    // but 404s: wait for the first snapshot instead of cancelling it at 2 s (a million sandboxes take
    // longer to fetch) and fetching it all again in the background.
    let catch_up = if state.load().version == 0 { 60 } else { 2 };
    feed.catch_up(std::time::Duration::from_secs(catch_up));

    let control = Arc::new(control::Control::new(config.control_urls.clone(), config.edge_token.clone())?);
    let activity = Arc::new(activity::Activity::default());
    let waker = Arc::new(wake::Waker::new(control.clone(), config.wake_timeout, state.clone()));
    let clients = client::TrustedProxies::new(config.trusted_proxies.clone());
    let limiter = Arc::new(ratelimit::Limiter::new());
    let authenticator = Arc::new(auth::Authenticator::new(
        lookup::Lookup::new(control.clone()),
        auth::password::Sessions::new(&config.edge_token),
    ));
    let resolver = Arc::new(portico_certs::Resolver::default());
    let https_redirect = match (config.redirect_https, &config.https) {
        (false, _) => None,
        (true, None) => return Err(StartError::RedirectWithoutHttps),
        (true, Some(addr)) => {
            let port =
                addr.parse::<std::net::SocketAddr>().map_err(|_| StartError::HttpsAddr(addr.clone()))?.port();
            Some(Arc::new(tls::HttpsRedirect { resolver: resolver.clone(), port }))
        }
    };
    let deployments = Arc::new(deploy::Registry::default());
    // Releases live beside the saved state; an edge without a state dir keeps them in a temporary one.
    let releases_dir = match &config.state_dir {
        Some(dir) => dir.join("releases"),
        None => std::env::temp_dir().join(format!("portico-releases-{}", std::process::id())),
    };
    let releases = Arc::new(statics::Releases::new(releases_dir, control.clone()));
    let usage = Arc::new(usage::Usage::default());
    let dns = Arc::new(resolve::Resolver::from_system()?);
    let access_log = Arc::new(
        accesslog::AccessLog::start(&config.access_log)
            .map_err(|e| StartError::AccessLog(config.access_log.clone(), e))?,
    );
    // One pipeline for both listeners: limits, credentials and wakes are shared; only the scheme differs.
    let edge = |scheme: &'static str, https_redirect: Option<Arc<tls::HttpsRedirect>>| proxy::Edge {
        waker: waker.clone(),
        activity: activity.clone(),
        state: state.clone(),
        scheme,
        upstream_timeout: config.upstream_timeout,
        clients: clients.clone(),
        limiter: limiter.clone(),
        auth: authenticator.clone(),
        https_redirect,
        deployments: deployments.clone(),
        releases: releases.clone(),
        usage: usage.clone(),
        dns: dns.clone(),
        access_log: access_log.clone(),
    };
    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        edge("http", https_redirect),
        "portico edge",
    );
    proxy.add_listener(downstream(&config.http));
    server.add_service(proxy);

    if let Some(addr) = &config.https {
        let mut https = pingora::proxy::http_proxy_service_with_name(
            &server.configuration,
            edge("https", None),
            "portico edge https",
        );
        https.add_listener(downstream(addr).tls(tls::settings(resolver.clone()).map_err(StartError::Tls)?));
        server.add_service(https);
        let watcher = tls::CertWatcher::new(state.clone(), resolver, config.certs_dir.clone());
        // The first store is in place before the listener accepts: a saved state's certificates serve at once.
        watcher.refresh();
        server.add_service(background_service("certificates", watcher));
    }

    if let Some(addr) = &config.metrics {
        let app = metrics::MetricsApp { state: state.clone(), ready_max_age: config.ready_max_age };
        let mut svc = Service::new("metrics".to_string(), app);
        svc.add_tcp(addr);
        server.add_service(svc);
    }

    let sync = deploy::DeploymentSync { state: state.clone(), registry: deployments, releases };
    server.add_service(background_service("deployments", sync));
    let usage_reporter = usage::UsageReporter::new(usage, config.state_dir.clone(), control.clone());
    server.add_service(background_service("usage", usage_reporter));
    server.add_service(background_service("feed", feed));
    let reporter = activity::ActivityReporter::new(activity, control);
    server.add_service(background_service("activity", reporter));
    // Only to hear the shutdown: the access log's writer stops resting between batches.
    server.add_service(GenBackgroundService::new("BG access log".into(), access_log));
    Ok(server)
}

/// `portico edge --check`: every control URL is asked whether it accepts this edge's token; fine when at
/// least one does (an edge fails over between them).
pub async fn check(config: &EdgeConfig) -> Result<String, StartError> {
    if config.control_urls.is_empty() {
        return Err(StartError::NoControl);
    }
    let control = control::Control::new(config.control_urls.clone(), config.edge_token.clone())?;
    let mut report = Vec::new();
    let mut reachable = 0;
    for url in control.urls() {
        let resp = control
            .at(url, |http, url| {
                http.get(format!("{url}/v1/edge/ping")).timeout(std::time::Duration::from_secs(5))
            })
            .await;
        match resp {
            Ok(r) if r.status().is_success() => {
                reachable += 1;
                report.push(format!("{url}: ok"));
            }
            Ok(r) if r.status() == 401 => {
                report.push(format!("{url}: refused the edge token (PORTICO_EDGE_TOKEN)"))
            }
            Ok(r) => report.push(format!("{url}: answered {}", r.status())),
            Err(e) => report.push(format!("{url}: unreachable ({e})")),
        }
    }
    let report = report.join("\n");
    if reachable == 0 {
        return Err(StartError::Check(report));
    }
    Ok(report)
}

/// A client-facing listener whose write buffer holds a response head and a 16 KiB body: with Pingora's
/// default (1460 bytes) the head of any larger response leaves in a packet of its own, and on loopback
/// every packet wakes the reader. What flushes is unchanged: chunked and WebSocket data chunk by chunk (so
/// server-sent events and HMR messages are not held back), a `Content-Length` body when it ends or fills
/// the buffer. The buffer is allocated per connection: 16 KiB more for each open one (idle keep-alives and
/// WebSockets included), beside the 64 KiB Pingora reads into.
fn downstream(addr: &str) -> ListenerConfig {
    ListenerConfig::tcp(addr).l4_buffer(L4BufferSettings::default().write(DOWNSTREAM_WRITE_BUFFER))
}

const DOWNSTREAM_WRITE_BUFFER: usize = 17 * 1024;
