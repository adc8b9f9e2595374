//! Following control: a long-polling client of `GET /v1/edge/feed` that applies each answer to the
//! snapshot and swaps it in, fails over between control URLs, and keeps the last state on disk so the edge
//! serves through a control outage and across its own restarts. What reaches the disk is what changed: an
//! append to the state dir's change log, with a new base now and then (see `state/store.rs`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use portico_wire::FeedMessage;
use tokio::sync::mpsc;

use crate::state::store::{self, Record, Store, StoreError};
use crate::state::{EdgeState, Snapshot, StateError};

/// How long control may hold a long-poll open before answering "no change".
const WAIT_SECS: u64 = 25;
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A control that does not accept within this is down, however long an answer may take once it does.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("control at {url}: {source}")]
    Http { url: String, source: reqwest::Error },
    #[error("control at {url} answered {status}")]
    Status { url: String, status: u16 },
    #[error("control sent a state the edge cannot use: {0}")]
    State(#[from] StateError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the feed hands the writer of the state dir after each swap.
enum Saved {
    /// Control sent a whole snapshot: the dir gets a new base.
    Full,
    /// A batch of changes, as applied.
    Changes(Record),
}

type Writer = (mpsc::UnboundedReceiver<Saved>, Store);

pub struct FeedClient {
    control_urls: Vec<String>,
    edge_token: String,
    state: Arc<EdgeState>,
    /// To the state dir's writer, when there is a state dir.
    saved: Option<mpsc::UnboundedSender<Saved>>,
    /// The writer, until the background service starts it (the catch-up before it already sends).
    writer: Mutex<Option<Writer>>,
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
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(Duration::from_secs(WAIT_SECS + 10))
            .build()
            .map_err(|source| FeedError::Http { url: String::new(), source })?;
        let control_urls = control_urls.into_iter().map(|u| u.trim_end_matches('/').to_string()).collect();
        let (saved, writer) = match state_dir {
            Some(dir) => {
                let (tx, rx) = mpsc::unbounded_channel();
                // Appends continue the log only if it ends exactly where the state loaded from it does.
                let store = Store::resume(dir, state.load().version);
                (Some(tx), Some((rx, store)))
            }
            None => (None, None),
        };
        Ok(Self { control_urls, edge_token, state, saved, writer: Mutex::new(writer), http })
    }

    /// Before the edge starts accepting (a restart, or an upgrade taking over the sockets), brings the
    /// saved state up to date when control answers within `timeout`: the state dir may be a second old.
    /// Runs on its own short-lived runtime and client, before Pingora's runtimes exist.
    pub fn catch_up(&self, timeout: Duration) {
        let caught_up = tokio::runtime::Builder::new_current_thread().enable_all().build().map(|rt| {
            rt.block_on(async {
                let http = reqwest::Client::builder()
                    .connect_timeout(timeout.min(CONNECT_TIMEOUT))
                    .timeout(timeout)
                    .build()
                    .ok()?;
                let deadline = tokio::time::Instant::now() + timeout;
                for url in &self.control_urls {
                    // A snapshot may be a little behind (control serves the one it has built while it is
                    // recent): the changes after it follow at once, before the edge serves anything.
                    for _ in 0..3 {
                        match tokio::time::timeout_at(deadline, self.poll(&http, url, 0)).await {
                            Ok(Ok(Polled::Snapshot)) => continue,
                            Ok(Ok(Polled::Changes)) => return Some(()),
                            Ok(Err(_)) | Err(_) => break,
                        }
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
    async fn poll(&self, http: &reqwest::Client, url: &str, wait: u64) -> Result<Polled, FeedError> {
        let since = self.state.load().version;
        let endpoint = format!("{url}/v1/edge/feed?since={since}&wait={wait}");
        let err = |source| FeedError::Http { url: url.to_string(), source };
        let resp = http.get(&endpoint).bearer_auth(&self.edge_token).send().await.map_err(err)?;
        if !resp.status().is_success() {
            return Err(FeedError::Status { url: url.to_string(), status: resp.status().as_u16() });
        }
        let msg: FeedMessage = resp.json().await.map_err(err)?;
        let polled = match msg {
            FeedMessage::Snapshot { .. } => Polled::Snapshot,
            FeedMessage::Changes { .. } => Polled::Changes,
        };
        let next = match msg {
            FeedMessage::Snapshot { snapshot } => Some((Snapshot::from_wire(snapshot)?, Saved::Full)),
            FeedMessage::Changes { version, changes } if version != since || !changes.is_empty() => {
                let current = self.state.load();
                let record = Record { since: current.version, version, changes: changes.clone() };
                Some((current.apply(version, changes)?, Saved::Changes(record)))
            }
            FeedMessage::Changes { .. } => None,
        };
        if let Some((next, saved)) = next {
            tracing::debug!(version = next.version, "routing state updated");
            self.state.store(next);
            if matches!(saved, Saved::Full) {
                crate::memory::release_freed();
            }
            if let Some(tx) = &self.saved {
                // The writer stops only with the process.
                let _ = tx.send(saved);
            }
        }
        self.state.mark_synced();
        Ok(polled)
    }
}

/// What a poll brought.
enum Polled {
    Snapshot,
    /// Changes, or none.
    Changes,
}

#[async_trait]
impl BackgroundService for FeedClient {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let writer = self.writer.lock().ok().and_then(|mut w| w.take());
        if let Some((rx, store)) = writer {
            tokio::spawn(persist_loop(store, self.state.clone(), rx));
        }
        let mut which = 0usize;
        let mut backoff = Duration::from_millis(100);
        let mut failing = false;
        let mut failed_in_row = 0usize;
        loop {
            let url = &self.control_urls[which % self.control_urls.len()];
            let result = tokio::select! {
                r = self.poll(&self.http, url, WAIT_SECS) => r.map(drop),
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

/// Writes what the feed applied to the state dir, a batch at a time: whatever arrived while the previous
/// write ran costs one append (and one fsync). The files are written in a blocking thread.
async fn persist_loop(mut store: Store, state: Arc<EdgeState>, mut saved: mpsc::UnboundedReceiver<Saved>) {
    while let Some(first) = saved.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = saved.try_recv() {
            batch.push(more);
        }
        // At least as new as every record in the batch: they were sent after it was stored.
        let current = state.load();
        let done = tokio::task::spawn_blocking(move || {
            let result = persist(&mut store, batch, &current);
            (store, result)
        })
        .await;
        match done {
            Ok((s, result)) => {
                store = s;
                if let Err(e) = result {
                    tracing::error!(error = %e, "saving routing state");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "saving routing state: the writer stopped");
                return;
            }
        }
    }
}

/// Appends the batch when it continues what the dir holds; otherwise, or when the log has grown past
/// its share of the base, writes `current` as a new base.
fn persist(store: &mut Store, batch: Vec<Saved>, current: &Snapshot) -> Result<(), StoreError> {
    let mut full = false;
    let mut records = Vec::new();
    for saved in batch {
        match saved {
            Saved::Full => full = true,
            Saved::Changes(r) => records.push(r),
        }
    }
    if !full {
        let on_disk = store.disk_version();
        // What the dir already holds (written by another edge sharing it, or in a base).
        records.retain(|r| on_disk.is_none_or(|v| r.version > v));
        let Some(first) = records.first() else {
            return if store.wants_compaction() { store.write_base(current) } else { Ok(()) };
        };
        let chained = records.windows(2).all(|w| w[1].since == w[0].version);
        if chained && store.continues(first.since) {
            store.append(&records)?;
            if !store.wants_compaction() {
                return Ok(());
            }
        }
    }
    store.write_base(current)
}

/// The last saved state, if the state dir holds a usable one, and when it was saved (for
/// `portico_config_age_seconds`). A damaged state dir is logged and ignored (the edge starts from control,
/// or from the valid prefix of the change log); it never stops the edge from starting.
pub fn load(dir: &Path) -> Result<Option<(Snapshot, u64)>, FeedError> {
    Ok(store::load(dir).map(|l| (l.snapshot, l.saved_at)))
}
