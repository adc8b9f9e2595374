//! Runtime versions of deployments: one `LoadBalancer<RoundRobin>` per active version, with its own
//! health-check task. The snapshot says which version is active; this registry only caches the balancer
//! built for it, keyed by version id, so a promote swaps the backend set in the same store that swaps the
//! snapshot (a request that sees the new version builds or finds the new balancer) and requests already
//! sent to an instance of the old version finish there.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::lb::health_check::{HttpHealthCheck, TcpHealthCheck};
use pingora::lb::selection::RoundRobin;
use pingora::lb::LoadBalancer;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use portico_wire::{self as wire, VersionTarget};

use crate::error::EdgeError;
use crate::state::EdgeState;
use crate::statics::Releases;

/// Health-check interval of a version that names none: a TCP connect every second.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// How often the registry compares itself with the snapshot in force.
const SYNC_EVERY: Duration = Duration::from_millis(200);

type Balancer = LoadBalancer<RoundRobin>;

/// One active runtime version: its balancer and the task checking its instances.
struct Runtime {
    lb: Arc<Balancer>,
    checks: tokio::task::JoinHandle<()>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        // The version is no longer active anywhere in the snapshot: stop probing its instances.
        self.checks.abort();
    }
}

/// Per-request attempts on a deployment's instances, for the one retry after a refused connection.
#[derive(Debug, Default)]
pub struct Attempts {
    pub tried: Vec<SocketAddr>,
}

#[derive(Default)]
pub struct Registry {
    versions: RwLock<HashMap<Arc<str>, Arc<Runtime>>>,
}

impl Registry {
    /// The next healthy instance of the deployment's active runtime version, skipping those this request
    /// already tried. `AppUnavailable` when none is left.
    pub fn pick(&self, deployment: &wire::Deployment, tried: &[SocketAddr]) -> Result<SocketAddr, EdgeError> {
        let active = deployment.active.as_ref().ok_or(EdgeError::NotFound)?;
        let VersionTarget::Runtime { instances, health_check } = &active.target else {
            return Err(EdgeError::NotFound);
        };
        let lb = self.balancer(&active.id, instances, health_check.as_ref(), &host_of(deployment))?;
        let backend = lb.select_with(b"", instances.len() * 2 + 1, |b, healthy| {
            healthy && b.addr.as_inet().is_some_and(|a| !tried.contains(a))
        });
        backend.and_then(|b| b.addr.as_inet().copied()).ok_or(EdgeError::AppUnavailable)
    }

    fn balancer(
        &self,
        version: &str,
        instances: &[String],
        check: Option<&wire::HealthCheck>,
        host: &str,
    ) -> Result<Arc<Balancer>, EdgeError> {
        if let Some(rt) = self.read().get(version) {
            return Ok(rt.lb.clone());
        }
        let mut versions = self.versions.write().unwrap_or_else(|p| p.into_inner());
        if let Some(rt) = versions.get(version) {
            return Ok(rt.lb.clone());
        }
        let rt = build(instances, check, host).map_err(|e| {
            tracing::error!(version, error = %e, "cannot build the instances of a deployment version");
            EdgeError::AppUnavailable
        })?;
        let lb = rt.lb.clone();
        versions.insert(version.into(), Arc::new(rt));
        Ok(lb)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Arc<str>, Arc<Runtime>>> {
        // The map is only ever replaced whole per key: a panicking writer leaves it consistent.
        self.versions.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Brings the registry in line with the snapshot: balancers (and health checks) for every active
    /// runtime version, none for the others.
    pub fn sync(&self, snap: &crate::state::Snapshot) {
        let mut active = HashMap::new();
        for d in snap.deployments.values() {
            if let Some(v) = &d.active {
                if let VersionTarget::Runtime { instances, health_check } = &v.target {
                    active.insert(v.id.as_str(), (d, instances, health_check.as_ref()));
                }
            }
        }
        let stale: Vec<Arc<str>> =
            self.read().keys().filter(|k| !active.contains_key(&***k)).cloned().collect();
        if !stale.is_empty() {
            let mut versions = self.versions.write().unwrap_or_else(|p| p.into_inner());
            for k in stale {
                versions.remove(&k);
            }
        }
        for (id, (d, instances, check)) in active {
            // Errors are logged inside; requests for that version answer 502.
            let _ = self.balancer(id, instances, check, &host_of(d));
        }
    }

    /// How many versions have a running balancer (for tests).
    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The `Host` health checks send: the deployment's first custom domain, else its app host key.
fn host_of(d: &wire::Deployment) -> String {
    d.domains.first().cloned().unwrap_or_else(|| format!("{}.{}", d.app, d.workspace))
}

#[derive(Debug, thiserror::Error)]
enum BuildError {
    #[error("instance {0:?} is not ip:port")]
    Instance(String),
    #[error("health check: {0}")]
    Check(String),
}

fn build(instances: &[String], check: Option<&wire::HealthCheck>, host: &str) -> Result<Runtime, BuildError> {
    let addrs: Vec<SocketAddr> = instances
        .iter()
        .map(|i| i.parse().map_err(|_| BuildError::Instance(i.clone())))
        .collect::<Result<_, _>>()?;
    let mut lb = Balancer::try_from_iter(addrs).map_err(|e| BuildError::Instance(e.to_string()))?;
    let interval = check.map_or(DEFAULT_INTERVAL, |c| Duration::from_millis(c.interval_ms.max(50)));
    // A probe must not outlive its interval much, or a hung instance delays noticing the others.
    let timeout = interval.clamp(Duration::from_millis(200), Duration::from_secs(2));
    match check.and_then(|c| c.path.as_deref()) {
        Some(path) => {
            let mut hc = HttpHealthCheck::new(host, false);
            let mut req = RequestHeader::build("GET", path.as_bytes(), None)
                .map_err(|e| BuildError::Check(e.to_string()))?;
            req.insert_header("Host", host).map_err(|e| BuildError::Check(e.to_string()))?;
            hc.req = req;
            hc.peer_template.options.connection_timeout = Some(timeout);
            hc.peer_template.options.read_timeout = Some(timeout);
            hc.validator = Some(Box::new(expect_2xx_or_3xx));
            lb.set_health_check(Box::new(hc));
        }
        None => {
            let mut hc = TcpHealthCheck::new();
            hc.peer_template.options.connection_timeout = Some(timeout);
            lb.set_health_check(hc);
        }
    }
    lb.parallel_health_check = true;
    let lb = Arc::new(lb);
    let probing = lb.clone();
    let checks = tokio::spawn(async move {
        loop {
            probing.backends().run_health_check(true).await;
            tokio::time::sleep(interval).await;
        }
    });
    Ok(Runtime { lb, checks })
}

fn expect_2xx_or_3xx(resp: &ResponseHeader) -> pingora::Result<()> {
    if resp.status.is_success() || resp.status.is_redirection() {
        Ok(())
    } else {
        pingora::Error::e_explain(pingora::ErrorType::HTTPStatus(resp.status.as_u16()), "health check status")
    }
}

/// Follows the snapshot: keeps the registry's balancers (and health checks) to the active runtime
/// versions, and fetches the releases of active static versions before their first request.
pub struct DeploymentSync {
    pub state: Arc<EdgeState>,
    pub registry: Arc<Registry>,
    pub releases: Arc<Releases>,
}

#[async_trait]
impl BackgroundService for DeploymentSync {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut seen = None;
        loop {
            let snap = self.state.load();
            if seen != Some(snap.version) {
                seen = Some(snap.version);
                self.registry.sync(&snap);
                self.releases.prefetch(&snap);
            }
            tokio::select! {
                _ = tokio::time::sleep(SYNC_EVERY) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
