//! Following control: a long-polling client of `GET /v1/edge/feed` that applies each answer to the
//! snapshot and swaps it in, fails over between control URLs, and keeps the last state on disk so the edge
//! serves through a control outage and across its own restarts.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use portico_wire::{self as wire, FeedMessage};
use tokio::sync::watch;

use crate::state::{unix_ms, EdgeState, Snapshot, StateError};

const STATE_FILE: &str = "snapshot.json";
/// How long control may hold a long-poll open before answering "no change".
const WAIT_SECS: u64 = 25;
const MAX_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("control at {url}: {source}")]
    Http { url: String, source: reqwest::Error },
    #[error("control at {url} answered {status}")]
    Status { url: String, status: u16 },
    #[error("control sent a state the edge cannot use: {0}")]
    State(#[from] StateError),
    #[error("state dir: {0}")]
    Io(#[from] std::io::Error),
    #[error("state file is not a snapshot: {0}")]
    Json(#[from] serde_json::Error),
}

pub struct FeedClient {
    control_urls: Vec<String>,
    edge_token: String,
    state: Arc<EdgeState>,
    state_dir: Option<PathBuf>,
    http: reqwest::Client,
}

impl FeedClient {
    pub fn new(
        control_urls: Vec<String>,
        edge_token: String,
        state: Arc<EdgeState>,
        state_dir: Option<PathBuf>,
    ) -> Result<Self, FeedError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(WAIT_SECS + 10))
            .build()
            .map_err(|source| FeedError::Http { url: String::new(), source })?;
        let control_urls = control_urls.into_iter().map(|u| u.trim_end_matches('/').to_string()).collect();
        Ok(Self { control_urls, edge_token, state, state_dir, http })
    }

    /// Before the edge starts accepting (a restart, or an upgrade taking over the sockets), brings the
    /// saved state up to date when control answers within `timeout`: the state dir may be a second old.
    /// Runs on its own short-lived runtime and client, before Pingora's runtimes exist.
    pub fn catch_up(&self, timeout: Duration) {
        let caught_up = tokio::runtime::Builder::new_current_thread().enable_all().build().map(|rt| {
            rt.block_on(async {
                let http =
                    reqwest::Client::builder().connect_timeout(timeout).timeout(timeout).build().ok()?;
                for url in &self.control_urls {
                    if let Ok(Ok(())) = tokio::time::timeout(timeout, self.poll(&http, url, 0)).await {
                        return Some(());
                    }
                }
                None
            })
        });
        match caught_up {
            Ok(Some(())) => {
                tracing::info!(version = self.state.load().version, "routing state caught up before serving")
            }
            _ => tracing::warn!("control did not answer at start; serving the saved state until it does"),
        }
    }

    /// One round trip: asks for what happened after the current version (waiting up to `wait` seconds
    /// for something to happen) and applies it.
    async fn poll(&self, http: &reqwest::Client, url: &str, wait: u64) -> Result<(), FeedError> {
        let since = self.state.load().version;
        let endpoint = format!("{url}/v1/edge/feed?since={since}&wait={wait}");
        let err = |source| FeedError::Http { url: url.to_string(), source };
        let resp = http.get(&endpoint).bearer_auth(&self.edge_token).send().await.map_err(err)?;
        if !resp.status().is_success() {
            return Err(FeedError::Status { url: url.to_string(), status: resp.status().as_u16() });
        }
        let msg: FeedMessage = resp.json().await.map_err(err)?;
        let next = match msg {
            FeedMessage::Snapshot { snapshot } => Some(Snapshot::from_wire(snapshot)?),
            FeedMessage::Changes { version, changes } if version != since || !changes.is_empty() => {
                Some(self.state.load().apply(version, changes)?)
            }
            FeedMessage::Changes { .. } => None,
        };
        if let Some(next) = next {
            tracing::debug!(version = next.version, "routing state updated");
            self.state.store(next);
        }
        self.state.mark_synced();
        Ok(())
    }
}

#[async_trait]
impl BackgroundService for FeedClient {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let (saved_tx, saved_rx) = watch::channel(self.state.load().version);
        if let Some(dir) = self.state_dir.clone() {
            tokio::spawn(persist_loop(dir, self.state.clone(), saved_rx));
        }
        let mut which = 0usize;
        let mut backoff = Duration::from_millis(100);
        let mut failing = false;
        let mut failed_in_row = 0usize;
        loop {
            let url = &self.control_urls[which % self.control_urls.len()];
            let result = tokio::select! {
                r = self.poll(&self.http, url, WAIT_SECS) => r,
                _ = shutdown.changed() => return,
            };
            match result {
                Ok(()) => {
                    if failing {
                        tracing::info!(control = %url, version = self.state.load().version, "control reachable again");
                    }
                    failing = false;
                    failed_in_row = 0;
                    backoff = Duration::from_millis(100);
                    saved_tx.send_replace(self.state.load().version);
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "control unreachable; serving the last known state");
                    }
                    failing = true;
                    which += 1;
                    failed_in_row += 1;
                    // Another control replica at once; back off only after every URL failed in turn.
                    if !failed_in_row.is_multiple_of(self.control_urls.len()) {
                        let next = &self.control_urls[which % self.control_urls.len()];
                        tracing::info!(error = %e, next = %next, "trying the next control URL");
                        continue;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => return,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// Writes the snapshot to the state dir after changes, at most about once a second: a burst of changes
/// costs one write.
async fn persist_loop(dir: PathBuf, state: Arc<EdgeState>, mut versions: watch::Receiver<u64>) {
    let mut saved = *versions.borrow();
    while versions.changed().await.is_ok() {
        let snap = state.load();
        if snap.version == saved {
            continue;
        }
        let wire = snap.to_wire();
        let dir2 = dir.clone();
        match tokio::task::spawn_blocking(move || save(&dir2, &wire)).await {
            Ok(Ok(())) => saved = snap.version,
            Ok(Err(e)) => tracing::error!(error = %e, dir = %dir.display(), "saving routing state"),
            Err(e) => tracing::error!(error = %e, "saving routing state"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Atomically replaces the state file (write, fsync, rename), readable by the owner only.
pub fn save(dir: &Path, snapshot: &wire::Snapshot) -> Result<(), FeedError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    serde_json::to_writer(&mut f, snapshot)?;
    f.flush()?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(STATE_FILE))?;
    Ok(())
}

/// The last saved state, if any, and when it was saved (for `portico_config_age_seconds`).
pub fn load(dir: &Path) -> Result<Option<(Snapshot, u64)>, FeedError> {
    let path = dir.join(STATE_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let saved_at =
        std::fs::metadata(&path)?.modified().map(unix_ms).unwrap_or_else(|_| unix_ms(SystemTime::now()));
    let snapshot = Snapshot::from_wire(serde_json::from_slice(&bytes)?)?;
    Ok(Some((snapshot, saved_at)))
}
