//! Flags (every one also read from `PORTICO_<FLAG>`), and how each command starts its parts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use portico_control::{Control, ControlConfig};
use portico_edge::EdgeConfig;
use portico_wire::{HostTemplate, PerMinute, Rate, RateLimits, DEFAULT_HOST_TEMPLATES};

#[derive(Parser, Debug)]
#[command(name = "portico", version, about = "The front door of a cloud-sandbox platform")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Control and edge in one process, for one node and for trying Portico out.
    Up(UpArgs),
    /// The control service: JSON API, database, and the feed that edges follow.
    Control(ControlArgs),
    /// An edge node: routes preview hosts to sandboxes, fed by control.
    Edge(EdgeArgs),
}

#[derive(Args, Debug)]
pub struct Common {
    /// Host template mapping hosts to routes (repeatable; the first `{slug}` one makes preview URLs).
    #[arg(long = "host-template", env = "PORTICO_HOST_TEMPLATE", value_delimiter = ',', global = true)]
    host_templates: Vec<String>,
    /// CSP frame-ancestors sources for tenants that set none, space-separated.
    #[arg(long, env = "PORTICO_DEFAULT_FRAME_ANCESTORS", default_value = "'self'", global = true)]
    default_frame_ancestors: String,
    /// Log format.
    #[arg(long, env = "PORTICO_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// Log level (`error`, `warn`, `info`, `debug`, `trace`) or a `RUST_LOG`-style filter such as
    /// `info,portico_edge=debug`; unset: `RUST_LOG`, else `info`.
    #[arg(long, env = "PORTICO_LOG_LEVEL", value_name = "LEVEL|FILTER", value_parser = parse_log_filter, global = true)]
    pub log_level: Option<String>,
    /// Validate the flags and exit.
    #[arg(long, env = "PORTICO_CHECK", global = true)]
    check: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Args, Debug)]
struct UpArgs {
    /// Where the database, keys and the edge's saved state live.
    #[arg(long, env = "PORTICO_DATA_DIR", default_value = "./portico-data")]
    data_dir: PathBuf,
    /// The edge's HTTP listener.
    #[arg(long, env = "PORTICO_HTTP", default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// The control API's listener.
    #[arg(long, env = "PORTICO_CONTROL_LISTEN", default_value = "127.0.0.1:7070")]
    control_listen: SocketAddr,
    /// The metrics listener (`GET /metrics`).
    #[arg(long, env = "PORTICO_METRICS", default_value = "127.0.0.1:9090")]
    metrics: SocketAddr,
    #[command(flatten)]
    wake: WakeArgs,
    /// How long requests wait for a hibernated sandbox to wake before the edge answers 503 `wake_timeout`
    /// (`30s`, `500ms`, `2m`; a bare number is seconds).
    #[arg(long, env = "PORTICO_WAKE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    wake_timeout: Duration,
    /// A proxy in front of the edge, as a CIDR (repeatable): from these peers the client is the right-most
    /// untrusted `X-Forwarded-For` address. Others are their own client, whatever they forward.
    #[arg(long = "trusted-proxy", env = "PORTICO_TRUSTED_PROXY", value_name = "CIDR", value_delimiter = ',')]
    trusted_proxies: Vec<portico_edge::client::Cidr>,
    /// The port a preview token's `embed_url` opens when the token names none and the sandbox has no
    /// preview.
    #[arg(long, env = "PORTICO_DEFAULT_EMBED_PORT", default_value_t = 3000,
          value_parser = clap::value_parser!(u16).range(1..))]
    default_embed_port: u16,
    #[command(flatten)]
    acme: AcmeArgs,
    #[command(flatten)]
    upstream: UpstreamArgs,
    #[command(flatten)]
    quotas: QuotaArgs,
    #[command(flatten)]
    https: HttpsArgs,
    #[command(flatten)]
    ready: ReadyArgs,
    #[command(flatten)]
    access_log: AccessLogArgs,
    #[command(flatten)]
    releases: ReleaseArgs,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    common: Common,
}

/// The edge's readiness probe (`edge` and `up`).
#[derive(Args, Debug, Clone)]
struct ReadyArgs {
    /// `GET /readyz` on the metrics listener answers 503 once control last confirmed the routing state
    /// this long ago (or never did); the edge keeps serving its state either way (`60s`, `5m`).
    #[arg(long, env = "PORTICO_READY_MAX_AGE", default_value = "60s", value_parser = parse_duration)]
    ready_max_age: Duration,
}

/// Rate limits for tenants that set none of their own (`PUT /v1/tenant/rate-limits`).
#[derive(Args, Debug)]
struct LimitArgs {
    /// Public routes, per client IP: `RPS/BURST`.
    #[arg(long, env = "PORTICO_DEFAULT_PUBLIC_PER_IP", default_value = "100/400", value_parser = parse_rate)]
    default_public_per_ip: Rate,
    /// Private routes, per credential: `RPS/BURST`.
    #[arg(long, env = "PORTICO_DEFAULT_PRIVATE_PER_TOKEN", default_value = "200/800", value_parser = parse_rate)]
    default_private_per_token: Rate,
    /// Failed credential checks per client IP and minute before it is locked out.
    #[arg(long, env = "PORTICO_DEFAULT_AUTH_FAILURES_PER_MINUTE", default_value_t = 30,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    default_auth_failures_per_minute: u32,
}

impl LimitArgs {
    fn rate_limits(&self) -> RateLimits {
        RateLimits {
            public_per_ip: self.default_public_per_ip,
            private_per_token: self.default_private_per_token,
            auth_failures_per_ip: PerMinute { per_minute: self.default_auth_failures_per_minute },
        }
    }
}

fn parse_rate(s: &str) -> Result<Rate, String> {
    let bad = || format!("{s:?}: expected RPS/BURST, two whole numbers from 1 to 1000000, e.g. 100/400");
    let (rps, burst) = s.split_once('/').ok_or_else(bad)?;
    let (rps, burst) =
        (rps.trim().parse::<u32>().map_err(|_| bad())?, burst.trim().parse::<u32>().map_err(|_| bad())?);
    if !(1..=1_000_000).contains(&rps) || !(1..=1_000_000).contains(&burst) {
        return Err(bad());
    }
    Ok(Rate { rps, burst })
}

#[derive(Args, Debug)]
struct ControlArgs {
    /// The control API's listener.
    #[arg(long, env = "PORTICO_LISTEN", default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// `sqlite://PATH` or `postgres://…`; default `sqlite://<data-dir>/portico.db`.
    #[arg(long, env = "PORTICO_DATABASE")]
    database: Option<String>,
    /// Where generated keys (and the default SQLite database) are kept.
    #[arg(long, env = "PORTICO_DATA_DIR", default_value = "./portico-data")]
    data_dir: PathBuf,
    /// Scheme of the preview URLs control hands out.
    #[arg(long, env = "PORTICO_PUBLIC_SCHEME", default_value = "http")]
    public_scheme: String,
    /// Port of the preview URLs control hands out, when not the scheme's default.
    #[arg(long, env = "PORTICO_PUBLIC_PORT")]
    public_port: Option<u16>,
    /// The port a preview token's `embed_url` opens when the token names none and the sandbox has no
    /// preview.
    #[arg(long, env = "PORTICO_DEFAULT_EMBED_PORT", default_value_t = 3000,
          value_parser = clap::value_parser!(u16).range(1..))]
    default_embed_port: u16,
    /// Host name that tenant preview domains must CNAME to.
    #[arg(long, env = "PORTICO_CNAME_TARGET", default_value = "edge.portico.localhost")]
    cname_target: String,
    /// Versions the snapshot served to starting edges may lag behind the database before control
    /// rebuilds it; a starting edge catches up through the changes after it. 0: always rebuilt when
    /// behind (costs seconds per cold start at a million sandboxes while changes flow).
    #[arg(long, env = "PORTICO_FEED_SNAPSHOT_LAG", value_name = "VERSIONS",
          default_value_t = portico_control::DEFAULT_FEED_SNAPSHOT_LAG)]
    feed_snapshot_lag: u64,
    #[command(flatten)]
    wake: WakeArgs,
    #[command(flatten)]
    acme: AcmeArgs,
    #[command(flatten)]
    upstream: UpstreamArgs,
    #[command(flatten)]
    quotas: QuotaArgs,
    /// Added to the default upstream policy (`up`: loopback); not a flag.
    #[arg(skip)]
    upstream_extra: &'static [&'static str],
    #[command(flatten)]
    releases: ReleaseArgs,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    common: Common,
}

/// Limits on static release archives (`control` and `up`).
#[derive(Args, Debug, Clone)]
struct ReleaseArgs {
    /// Largest `.tar.gz` accepted by `PUT /v1/releases/{sha256}`, in bytes (larger: 422).
    #[arg(long, env = "PORTICO_RELEASE_MAX_BYTES", default_value_t = 100 * 1024 * 1024)]
    release_max_bytes: u64,
    /// Most files one release may hold (more: 422).
    #[arg(long, env = "PORTICO_RELEASE_MAX_FILES", default_value_t = 10_000)]
    release_max_files: u64,
}

/// Quotas of tenants the admin set none for (`PATCH /v1/tenants/{id}` overrides them); over → 409
/// `quota_exceeded`. Only live objects count: a deleted one frees its slot.
#[derive(Args, Debug, Clone)]
struct QuotaArgs {
    /// Sandboxes per tenant.
    #[arg(long, env = "PORTICO_QUOTA_SANDBOXES", default_value_t = 1000)]
    quota_sandboxes: u64,
    /// Previews per tenant.
    #[arg(long, env = "PORTICO_QUOTA_PREVIEWS", default_value_t = 10_000)]
    quota_previews: u64,
    /// Deployments per tenant.
    #[arg(long, env = "PORTICO_QUOTA_DEPLOYMENTS", default_value_t = 100)]
    quota_deployments: u64,
    /// Custom domains per tenant (all its deployments together).
    #[arg(long, env = "PORTICO_QUOTA_CUSTOM_DOMAINS", default_value_t = 100)]
    quota_custom_domains: u64,
    /// Bytes of uploaded releases per tenant (default 10 GiB).
    #[arg(long, env = "PORTICO_QUOTA_RELEASE_BYTES", default_value_t = 10 * 1024 * 1024 * 1024)]
    quota_release_bytes: u64,
}

impl QuotaArgs {
    fn quotas(&self) -> portico_control::Quotas {
        portico_control::Quotas {
            sandboxes: self.quota_sandboxes,
            previews: self.quota_previews,
            deployments: self.quota_deployments,
            custom_domains: self.quota_custom_domains,
            release_bytes: self.quota_release_bytes,
        }
    }
}

/// Certificates by ACME and preview-domain checks (`control` and `up`).
#[derive(Args, Debug, Clone)]
struct AcmeArgs {
    /// ACME directory URL (e.g. Let's Encrypt's); unset: no certificates are ordered.
    #[arg(long, env = "PORTICO_ACME_DIRECTORY", value_name = "URL")]
    acme_directory: Option<String>,
    /// PEM file of the CA that signs the ACME server's own HTTPS certificate (a test CA); default: the
    /// system's roots.
    #[arg(long, env = "PORTICO_ACME_CA_FILE", value_name = "FILE", requires = "acme_directory")]
    acme_ca_file: Option<PathBuf>,
    /// DNS server (`IP:PORT`) that preview-domain verification asks; default: the system's resolvers.
    #[arg(long, env = "PORTICO_DNS_RESOLVER", value_name = "ADDR")]
    dns_resolver: Option<SocketAddr>,
    /// ACME orders each tenant's names may cause per hour, failed ones included; over: the name's
    /// certificate is `failed` with reason `rate_limited` and is ordered once the budget allows.
    #[arg(long, env = "PORTICO_ACME_ORDERS_PER_HOUR", default_value_t = 20)]
    acme_orders_per_hour: u32,
}

/// Where sandboxes and deployment instances may live (`control` and `up`).
#[derive(Args, Debug, Clone)]
struct UpstreamArgs {
    /// CIDR sandboxes and deployment instances may live in (repeatable); default: the private ranges
    /// (`up` adds loopback). Loopback and link-local are refused unless a CIDR names them.
    #[arg(
        long = "upstream-allow",
        env = "PORTICO_UPSTREAM_ALLOW",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    upstream_allow: Vec<portico_wire::Cidr>,
}

/// HTTPS at the edge (`edge` and `up`).
#[derive(Args, Debug, Clone)]
struct HttpsArgs {
    /// HTTPS listener; certificates are chosen by SNI from control's and `--certs-dir`'s.
    #[arg(long, env = "PORTICO_HTTPS", value_name = "ADDR")]
    https: Option<SocketAddr>,
    /// Directory of PEM certificates (`<name>.crt` + `<name>.key`, or `<name>.pem`), followed while running.
    #[arg(long, env = "PORTICO_CERTS_DIR", value_name = "DIR", requires = "https")]
    certs_dir: Option<PathBuf>,
    /// Answer plain-HTTP requests for hosts that have a certificate with a redirect to HTTPS.
    #[arg(long, env = "PORTICO_REDIRECT_HTTPS", requires = "https")]
    redirect_https: bool,
}

/// The edge's access log (`edge` and `up`).
#[derive(Args, Debug, Clone)]
struct AccessLogArgs {
    /// The access log: `off`, `stderr`, or a file PATH (appended to). One JSON line per request: time,
    /// client_ip, method, host, path (never the query), status, bytes, duration_ms, upstream_ms, tenant,
    /// route, error, request_id. Written by its own thread, off the request path: lines it cannot keep up
    /// with are dropped and counted in `portico_access_log_dropped_total`.
    #[arg(long, env = "PORTICO_ACCESS_LOG", value_name = "off|stderr|PATH", default_value = "stderr")]
    access_log: portico_edge::accesslog::Destination,
}

/// How control wakes hibernated sandboxes (`control` and `up`).
#[derive(Args, Debug)]
struct WakeArgs {
    /// The orchestrator control asks to wake a hibernated sandbox: `POST {"sandbox_id"}`, signed with
    /// `PORTICO_WAKE_SECRET` (generated into the data dir if unset), answered `200 {"address"}`.
    #[arg(long, env = "PORTICO_WAKE_URL")]
    wake_url: Option<String>,
    /// How long one orchestrator call may take before the wake counts as failed (`120s`, `2m`; a bare
    /// number is seconds).
    #[arg(long, env = "PORTICO_WAKE_URL_TIMEOUT", default_value = "120s", value_parser = parse_duration)]
    wake_url_timeout: Duration,
}

#[derive(Args, Debug)]
struct EdgeArgs {
    /// Control service URL (repeatable: the edge fails over between them).
    #[arg(
        long = "control-url",
        env = "PORTICO_CONTROL_URL",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:7070"
    )]
    control_urls: Vec<String>,
    /// HTTP listener.
    #[arg(long, env = "PORTICO_HTTP", default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// Metrics listener (`GET /metrics`).
    #[arg(long, env = "PORTICO_METRICS", default_value = "127.0.0.1:9090")]
    metrics: SocketAddr,
    /// Where the last routing state is kept, to serve through control outages and restarts.
    #[arg(long, env = "PORTICO_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Worker threads (default: one per core).
    #[arg(long, env = "PORTICO_THREADS")]
    threads: Option<usize>,
    /// How long an upstream may take to send its response header before the edge answers 504
    /// (`60s`, `500ms`, `2m`; a bare number is seconds).
    #[arg(long, env = "PORTICO_UPSTREAM_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    upstream_timeout: Duration,
    /// How long requests wait for a hibernated sandbox to wake before the edge answers 503 `wake_timeout`
    /// (`30s`, `500ms`, `2m`; a bare number is seconds).
    #[arg(long, env = "PORTICO_WAKE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    wake_timeout: Duration,
    /// Take over the listening sockets of a running edge (zero-downtime upgrade).
    #[arg(long, env = "PORTICO_UPGRADE")]
    upgrade: bool,
    #[command(flatten)]
    ready: ReadyArgs,
    /// A proxy in front of the edge, as a CIDR (repeatable): from these peers the client is the right-most
    /// untrusted `X-Forwarded-For` address. Others are their own client, whatever they forward.
    #[arg(long = "trusted-proxy", env = "PORTICO_TRUSTED_PROXY", value_name = "CIDR", value_delimiter = ',')]
    trusted_proxies: Vec<portico_edge::client::Cidr>,
    #[command(flatten)]
    https: HttpsArgs,
    #[command(flatten)]
    access_log: AccessLogArgs,
    #[command(flatten)]
    common: Common,
}

impl Cli {
    pub fn common(&self) -> &Common {
        match &self.command {
            Command::Up(a) => &a.common,
            Command::Control(a) => &a.common,
            Command::Edge(a) => &a.common,
        }
    }
}

/// Logs to stderr: `--log-level` (already checked by [`parse_log_filter`]), else `RUST_LOG`, else `info`.
/// JSON lines are flat (`{"timestamp","level","message","path",…}`): log pipelines index top-level keys.
pub fn init_logs(format: LogFormat, level: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(level) => EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info")),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// `--log-level`: a level or a `RUST_LOG`-style filter, refused at parse time when it does not parse.
fn parse_log_filter(s: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(s)
        .map(|_| s.to_string())
        .map_err(|e| format!("{s:?}: expected a level (error, warn, info, debug, trace) or a filter: {e}"))
}

/// Every duration flag: `30s`, `500ms`, `2m`, `1h`, or a bare number of seconds; never zero.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad =
        || format!("{s:?}: expected a duration such as 30s, 500ms, 2m or 1h (a bare number is seconds)");
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let d = match unit.trim() {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(bad)?),
        "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(bad)?),
        _ => return Err(bad()),
    };
    if d.is_zero() {
        return Err(format!("{s:?}: must be longer than zero"));
    }
    Ok(d)
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Up(a) => up(a),
        Command::Control(a) => control(a),
        Command::Edge(a) => edge(a),
    }
}

impl Common {
    /// Host templates, defaulted and validated.
    fn host_templates(&self) -> anyhow::Result<Vec<String>> {
        let templates: Vec<String> = if self.host_templates.is_empty() {
            DEFAULT_HOST_TEMPLATES.iter().map(|t| t.to_string()).collect()
        } else {
            self.host_templates.clone()
        };
        for t in &templates {
            HostTemplate::parse(t)?;
        }
        Ok(templates)
    }

    fn frame_ancestors(&self) -> Vec<String> {
        self.default_frame_ancestors.split_ascii_whitespace().map(str::to_string).collect()
    }
}

/// Secrets shorter than this are refused at start-up: a short key or token can be guessed.
const MIN_SECRET_LEN: usize = 16;

/// A secret from `NAME`, else from the file `NAME_FILE` names (systemd credentials, container secrets),
/// trailing newline trimmed; at least [`MIN_SECRET_LEN`] characters.
fn env_secret(name: &str) -> anyhow::Result<Option<String>> {
    let secret = match std::env::var(name).ok().filter(|v| !v.trim().is_empty()) {
        Some(v) => v.trim().to_string(),
        None => match std::env::var_os(format!("{name}_FILE")).filter(|p| !p.is_empty()) {
            Some(path) => {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("{name}_FILE: reading {}", Path::new(&path).display()))?;
                text.trim_end_matches(['\r', '\n']).to_string()
            }
            None => return Ok(None),
        },
    };
    if secret.chars().count() < MIN_SECRET_LEN {
        bail!("{name} must be at least {MIN_SECRET_LEN} characters");
    }
    Ok(Some(secret))
}

/// The listed CIDRs, or the default (plus `extra`, which `up` uses for loopback) when none are.
fn upstream_allow(a: &UpstreamArgs, extra: &[&str]) -> anyhow::Result<Vec<portico_wire::Cidr>> {
    if !a.upstream_allow.is_empty() {
        return Ok(a.upstream_allow.clone());
    }
    let defaults = portico_wire::upstream::DEFAULT_UPSTREAM_ALLOW.iter().chain(extra);
    Ok(defaults.map(|s| s.parse()).collect::<Result<_, _>>()?)
}

fn control_config(a: &ControlArgs, public_port: Option<u16>) -> anyhow::Result<ControlConfig> {
    if !matches!(a.public_scheme.as_str(), "http" | "https") {
        bail!("--public-scheme must be http or https");
    }
    if let Some(url) = &a.wake.wake_url {
        portico_control::check_wake_url(url)?;
    }
    let database_url = match &a.database {
        Some(url) => url.clone(),
        None => format!("sqlite://{}?mode=rwc", a.data_dir.join("portico.db").display()),
    };
    Ok(ControlConfig {
        database_url,
        data_dir: a.data_dir.clone(),
        admin_key: env_secret("PORTICO_ADMIN_KEY")?,
        edge_token: env_secret("PORTICO_EDGE_TOKEN")?,
        host_templates: a.common.host_templates()?,
        default_frame_ancestors: a.common.frame_ancestors(),
        public_scheme: a.public_scheme.clone(),
        public_port: public_port.or(a.public_port),
        default_embed_port: a.default_embed_port,
        cname_target: a.cname_target.clone(),
        wake_url: a.wake.wake_url.clone(),
        wake_secret: std::env::var("PORTICO_WAKE_SECRET").ok().filter(|v| !v.trim().is_empty()),
        wake_url_timeout: a.wake.wake_url_timeout,
        release_limits: portico_control::ReleaseLimits {
            max_bytes: a.releases.release_max_bytes,
            max_files: a.releases.release_max_files,
        },
        default_rate_limits: a.limits.rate_limits(),
        acme_directory: a.acme.acme_directory.clone(),
        acme_ca_file: a.acme.acme_ca_file.clone(),
        dns_resolver: a.acme.dns_resolver,
        upstream_allow: upstream_allow(&a.upstream, a.upstream_extra)?,
        quotas: a.quotas.quotas(),
        acme_orders_per_hour: a.acme.acme_orders_per_hour,
        feed_snapshot_lag: a.feed_snapshot_lag,
    })
}

/// Runs control until SIGINT/SIGTERM.
fn control(a: ControlArgs) -> anyhow::Result<()> {
    let config = control_config(&a, None)?;
    let rt = tokio::runtime::Runtime::new()?;
    if a.common.check {
        rt.block_on(portico_control::check(&config))?;
        println!("flags ok; database reachable");
        return Ok(());
    }
    rt.block_on(async move {
        let control = Control::start(config).await?;
        let listener =
            tokio::net::TcpListener::bind(a.listen).await.with_context(|| format!("binding {}", a.listen))?;
        tracing::info!(listen = %a.listen, "control listening");
        let stopping = control.clone();
        let signalled = async move {
            shutdown_signal().await;
            tracing::info!("shutting down: ending the edges' long-polls");
            stopping.begin_shutdown();
        };
        axum::serve(listener, control.router()).with_graceful_shutdown(signalled).await?;
        Ok(())
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

fn edge_threads(threads: Option<usize>) -> usize {
    threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}

/// Runs an edge until SIGTERM (graceful) or SIGINT (fast).
fn edge(a: EdgeArgs) -> anyhow::Result<()> {
    a.common.host_templates()?;
    let edge_token =
        env_secret("PORTICO_EDGE_TOKEN")?.context("PORTICO_EDGE_TOKEN must be set for an edge")?;
    let config = EdgeConfig {
        control_urls: a.control_urls,
        edge_token,
        http: a.http.to_string(),
        metrics: Some(a.metrics.to_string()),
        state_dir: a.state_dir,
        upgrade: a.upgrade,
        threads: edge_threads(a.threads),
        upstream_timeout: a.upstream_timeout,
        wake_timeout: a.wake_timeout,
        trusted_proxies: a.trusted_proxies,
        https: a.https.https.map(|h| h.to_string()),
        certs_dir: a.https.certs_dir,
        redirect_https: a.https.redirect_https,
        ready_max_age: a.ready.ready_max_age,
        access_log: a.access_log.access_log,
    };
    if a.common.check {
        let report = tokio::runtime::Runtime::new()?.block_on(portico_edge::check(&config))?;
        println!("flags ok\n{report}");
        return Ok(());
    }
    portico_edge::server(config)?.run_forever()
}

/// Control on its own runtime thread, then the edge on the main thread, following it over loopback.
fn up(a: UpArgs) -> anyhow::Result<()> {
    let control_args = ControlArgs {
        listen: a.control_listen,
        database: None,
        data_dir: a.data_dir.clone(),
        public_scheme: "http".into(),
        public_port: None,
        default_embed_port: a.default_embed_port,
        cname_target: "edge.portico.localhost".into(),
        feed_snapshot_lag: portico_control::DEFAULT_FEED_SNAPSHOT_LAG,
        wake: a.wake,
        acme: a.acme,
        upstream: a.upstream,
        quotas: a.quotas,
        upstream_extra: portico_wire::upstream::UP_UPSTREAM_ALLOW,
        releases: a.releases,
        limits: a.limits,
        common: a.common,
    };
    let config = control_config(&control_args, Some(a.http.port()))?;
    if control_args.common.check {
        tokio::runtime::Runtime::new()?.block_on(portico_control::check(&config))?;
        println!("flags ok; database reachable");
        return Ok(());
    }
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<anyhow::Result<String>>();
    let listen = a.control_listen;
    std::thread::Builder::new().name("control".into()).spawn(move || {
        let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                let _ = ready_tx.send(Err(e.into()));
                return;
            }
        };
        rt.block_on(async move {
            let started = async {
                let control = Control::start(config).await?;
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("binding {listen}"))?;
                anyhow::Ok((control, listener))
            };
            match started.await {
                Ok((control, listener)) => {
                    let _ = ready_tx.send(Ok(control.edge_token().to_string()));
                    tracing::info!(listen = %listen, "control listening");
                    if let Err(e) = axum::serve(listener, control.router()).await {
                        tracing::error!(error = %e, "control stopped");
                    }
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        });
    })?;
    let edge_token = ready_rx.recv().context("control did not start")??;
    let config = EdgeConfig {
        control_urls: vec![format!("http://{}", a.control_listen)],
        edge_token,
        http: a.http.to_string(),
        metrics: Some(a.metrics.to_string()),
        state_dir: Some(a.data_dir.join("edge")),
        upgrade: false,
        threads: edge_threads(None),
        upstream_timeout: std::time::Duration::from_secs(60),
        wake_timeout: a.wake_timeout,
        trusted_proxies: a.trusted_proxies,
        https: a.https.https.map(|h| h.to_string()),
        certs_dir: a.https.certs_dir,
        redirect_https: a.https.redirect_https,
        ready_max_age: a.ready.ready_max_age,
        access_log: a.access_log.access_log,
    };
    tracing::info!(http = %a.http, "edge listening; try http://3000-<sandbox>.sandbox.localhost:{}", a.http.port());
    portico_edge::server(config)?.run_forever()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_unit_or_bare_seconds() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration(" 45s "), Ok(Duration::from_secs(45)));
    }

    #[test]
    fn durations_refuse_zero_negative_fractions_and_unknown_units() {
        for bad in ["", "0", "0s", "0ms", "-5", "1.5s", "s", "10x", "5 minutes", "10sec"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(parse_duration("18446744073709551615m").is_err(), "overflow accepted");
    }

    #[test]
    fn duration_flags_accept_units_from_flags_and_environment() {
        let cli =
            Cli::try_parse_from(["portico", "edge", "--wake-timeout", "500ms", "--upstream-timeout", "2m"])
                .expect("parses");
        let Command::Edge(a) = cli.command else { panic!("not edge") };
        assert_eq!(a.wake_timeout, Duration::from_millis(500));
        assert_eq!(a.upstream_timeout, Duration::from_secs(120));
        let cli = Cli::try_parse_from(["portico", "control", "--wake-url-timeout", "90"]).expect("parses");
        let Command::Control(a) = cli.command else { panic!("not control") };
        assert_eq!(a.wake.wake_url_timeout, Duration::from_secs(90));
        assert!(Cli::try_parse_from(["portico", "up", "--wake-timeout", "soon"]).is_err());
    }

    #[test]
    fn log_level_takes_a_level_or_a_filter_on_every_command() {
        for command in ["up", "control", "edge"] {
            let cli = Cli::try_parse_from(["portico", command, "--log-level", "debug"]).expect("parses");
            assert_eq!(cli.common().log_level.as_deref(), Some("debug"));
        }
        let filter = "info,portico_edge=debug";
        let cli = Cli::try_parse_from(["portico", "edge", "--log-level", filter]).expect("parses");
        assert_eq!(cli.common().log_level.as_deref(), Some(filter));
        assert!(Cli::try_parse_from(["portico", "edge", "--log-level", "loud=[["]).is_err());
    }

    #[test]
    fn up_takes_trusted_proxies_and_a_default_embed_port() {
        let cli = Cli::try_parse_from([
            "portico",
            "up",
            "--trusted-proxy",
            "10.0.0.0/8",
            "--default-embed-port",
            "5173",
        ])
        .expect("parses");
        let Command::Up(a) = cli.command else { panic!("not up") };
        assert_eq!(a.trusted_proxies.len(), 1);
        assert_eq!(a.default_embed_port, 5173);
    }

    #[test]
    fn access_log_defaults_to_stderr_and_takes_off_or_a_path() {
        use portico_edge::accesslog::Destination;
        let cli = Cli::try_parse_from(["portico", "edge"]).expect("parses");
        let Command::Edge(a) = cli.command else { panic!("not edge") };
        assert_eq!(a.access_log.access_log, Destination::Stderr);
        let cli = Cli::try_parse_from(["portico", "up", "--access-log", "off"]).expect("parses");
        let Command::Up(a) = cli.command else { panic!("not up") };
        assert_eq!(a.access_log.access_log, Destination::Off);
        let cli = Cli::try_parse_from(["portico", "edge", "--access-log", "/tmp/a.log"]).expect("parses");
        let Command::Edge(a) = cli.command else { panic!("not edge") };
        assert_eq!(a.access_log.access_log, Destination::File("/tmp/a.log".into()));
    }
}
