//! Following control: a long-polling client of `GET /v1/edge/feed` that applies each answer to the
//! snapshot and swaps it in, fails over between control URLs, and keeps the last state on disk so the edge
//! serves through a control outage and across its own restarts. What reaches the disk is what changed: an
//! append to the state dir's change log, with a new base now and then (see `state/store.rs`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use portico_wire::{packed, FeedAnswer};
use tokio::sync::mpsc;

use crate::state::store::{self, Record, Sent, Store, StoreError};
use crate::state::{EdgeState, Snapshot, StateError, MAX_SNAPSHOT_BYTES};

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
    #[error("control at {url} sent a feed answer that does not parse: {source}")]
    Parse { url: String, source: serde_json::Error },
    #[error("control at {url} sent an answer larger than the edge accepts")]
    TooLarge { url: String },
    #[error("control at {url} sent an answer that does not decompress: {source}")]
    Decompress { url: String, source: std::io::Error },
    #[error("control sent a state the edge cannot use: {0}")]
    State(#[from] StateError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the feed hands the writer of the state dir after each swap.
enum Saved {
    /// Control sent a whole snapshot: the dir gets it as a new base, as control sent it (writing it costs
    /// no serialisation: at a million sandboxes writing JSON took as long as parsing it).
    Full { version: u64, sent: Sent },
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
        // A snapshot packed, if control writes this edge's format; JSON otherwise (and always for changes).
        let resp = http
            .get(&endpoint)
            .bearer_auth(&self.edge_token)
            .header(reqwest::header::ACCEPT, ACCEPT)
            .header(reqwest::header::ACCEPT_ENCODING, "zstd, gzip")
            .send()
            .await
            .map_err(err)?;
        if !resp.status().is_success() {
            return Err(FeedError::Status { url: url.to_string(), status: resp.status().as_u16() });
        }
        let is_packed = is_packed(resp.headers().get(reqwest::header::CONTENT_TYPE));
        // gzip the client undoes itself. zstd (the packed form's): a packed snapshot is decompressed as
        // it is decoded, and kept compressed for the state dir; anything else is decompressed here.
        let zstd =
            resp.headers().get(reqwest::header::CONTENT_ENCODING).is_some_and(|e| e.as_bytes() == b"zstd");
        let mut body = read_body(resp, url, MAX_SNAPSHOT_BYTES).await?;
        if zstd && !is_packed {
            body = unzstd(&body).map_err(|source| FeedError::Decompress { url: url.to_string(), source })?;
        }
        let answer = if is_packed {
            Answer::Packed(body)
        } else {
            read_answer(&body).map_err(|source| FeedError::Parse { url: url.to_string(), source })?
        };
        let polled = match answer {
            Answer::Snapshot { .. } | Answer::Packed(_) => Polled::Snapshot,
            Answer::Changes { .. } => Polled::Changes,
        };
        let next = match answer {
            Answer::Packed(body) => {
                let snapshot = Snapshot::from_packed(&body)?;
                let version = snapshot.version;
                Some((snapshot, Saved::Full { version, sent: Sent::Packed(body) }))
            }
            Answer::Snapshot { snapshot, sent } => {
                let version = snapshot.version;
                Some((Snapshot::from_wire(snapshot)?, Saved::Full { version, sent }))
            }
            Answer::Changes { version, changes } if version != since || !changes.is_empty() => {
                let current = self.state.load();
                let record = Record { since: current.version, version, changes: changes.clone() };
                Some((current.apply(version, changes)?, Saved::Changes(record)))
            }
            Answer::Changes { .. } => None,
        };
        if let Some((next, saved)) = next {
            tracing::debug!(version = next.version, "routing state updated");
            self.state.store(next);
            // With a state dir, its writer does this once the body is on disk.
            if matches!(saved, Saved::Full { .. }) && self.saved.is_none() {
                crate::memory::release_freed();
            }
            if let Some(tx) = &self.saved {
                // The writer stops only with the process; it releases the body once it is on disk.
                let _ = tx.send(saved);
            }
        }
        self.state.mark_synced();
        Ok(polled)
    }
}

/// The most a feed answer's stated length reserves up front (a compressed answer at 1M sandboxes is ~40 MB).
const PRESIZE_MAX: u64 = 256 << 20;

/// A feed answer's body, read up to `limit` bytes: control is trusted with the state, not with the
/// edge's memory.
async fn read_body(mut resp: reqwest::Response, url: &str, limit: u64) -> Result<Bytes, FeedError> {
    let too_large = || FeedError::TooLarge { url: url.to_string() };
    let stated = resp.content_length();
    if stated.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    // Sized once when the length is stated, rather than grown by doubling (a snapshot's body would be
    // copied a dozen times over); a stated length is not trusted with more than `PRESIZE_MAX` before the
    // bytes arrive.
    let mut body = bytes::BytesMut::with_capacity(stated.map_or(0, |n| n.min(PRESIZE_MAX) as usize));
    while let Some(chunk) =
        resp.chunk().await.map_err(|source| FeedError::Http { url: url.to_string(), source })?
    {
        if (body.len() + chunk.len()) as u64 > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// A zstd body other than a packed snapshot (control compresses only those, but a proxy between may
/// compress anything), decompressed up to the limit.
fn unzstd(body: &[u8]) -> std::io::Result<Bytes> {
    use std::io::Read;
    let mut out = Vec::new();
    zstd::stream::read::Decoder::new(body)?.take(MAX_SNAPSHOT_BYTES + 1).read_to_end(&mut out)?;
    if out.len() as u64 > MAX_SNAPSHOT_BYTES {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "an answer over 4 GiB"));
    }
    Ok(Bytes::from(out))
}

/// Whether a `Content-Type` names the packed form (parameters, if anything between added some, aside).
fn is_packed(content_type: Option<&reqwest::header::HeaderValue>) -> bool {
    let media = content_type.and_then(|t| t.to_str().ok()).and_then(|t| t.split(';').next());
    media.is_some_and(|m| m.trim().eq_ignore_ascii_case(packed::MEDIA_TYPE))
}

/// What the edge asks the feed for: its packed format (`packed::MEDIA_TYPE`, a test checks) first.
const ACCEPT: &str = "application/vnd.portico.snapshot.v1, application/json";

/// A feed answer: a snapshot with the bytes it came in (a packed body, or a parsed snapshot and its own
/// JSON text, a slice of the body), or changes.
// One per poll, moved once (as `wire::FeedMessage`): the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
enum Answer {
    /// A packed snapshot (`wire::packed`, zstd-compressed or not), compiled straight from these bytes.
    Packed(Bytes),
    Snapshot {
        snapshot: portico_wire::Snapshot,
        sent: Sent,
    },
    Changes {
        version: u64,
        changes: Vec<portico_wire::Change>,
    },
}

/// How control lays out a snapshot answer: its text is then what lies between this and the final `}`.
const SNAPSHOT_ANSWER_PREFIX: &[u8] = br#"{"type":"snapshot","snapshot":"#;

/// Reads a feed answer in one pass when it has control's layout (the text between is exactly one JSON
/// value if it parses: the parser refuses anything after it), otherwise through [`FeedAnswer`], which
/// finds the snapshot's text first, whatever the order of the fields.
fn read_answer(body: &Bytes) -> Result<Answer, serde_json::Error> {
    let slice = |text: &[u8]| {
        let start = text.as_ptr() as usize - body.as_ptr() as usize;
        body.slice(start..start + text.len())
    };
    let usual = body.strip_prefix(SNAPSHOT_ANSWER_PREFIX).and_then(|rest| rest.strip_suffix(b"}"));
    if let Some(text) = usual {
        if let Ok(snapshot) = serde_json::from_slice(text) {
            return Ok(Answer::Snapshot { snapshot, sent: Sent::Json(slice(text)) });
        }
    }
    Ok(match serde_json::from_slice::<FeedAnswer>(body)? {
        FeedAnswer::Snapshot(raw) => {
            let text = raw.get().as_bytes();
            Answer::Snapshot { snapshot: serde_json::from_slice(text)?, sent: Sent::Json(slice(text)) }
        }
        FeedAnswer::Changes { version, changes } => Answer::Changes { version, changes },
    })
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
/// its share of the base, writes `current` as a new base. A whole snapshot from control in the batch is
/// written as it came, and the changes after it appended.
fn persist(store: &mut Store, batch: Vec<Saved>, current: &Snapshot) -> Result<(), StoreError> {
    let mut full = None;
    let mut records = Vec::new();
    for saved in batch {
        match saved {
            Saved::Full { version, sent } => {
                full = Some((version, sent));
                records.clear();
            }
            Saved::Changes(r) => records.push(r),
        }
    }
    if let Some((version, sent)) = full {
        store.write_base_as_sent(version, &sent)?;
        drop(sent);
        crate::memory::release_freed();
        if records.is_empty() {
            return Ok(());
        }
    }
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
    store.write_base(current)
}

/// The last saved state, if the state dir holds a usable one, and when it was saved (for
/// `portico_config_age_seconds`). A damaged state dir is logged and ignored (the edge starts from control,
/// or from the valid prefix of the change log); it never stops the edge from starting.
pub fn load(dir: &Path) -> Result<Option<(Snapshot, u64)>, FeedError> {
    Ok(store::load(dir).map(|l| (l.snapshot, l.saved_at)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use portico_wire::{Change, Sandbox, SandboxState, Settings, Visibility, WakePolicy};

    fn sandbox(id: &str) -> Sandbox {
        Sandbox {
            id: id.into(),
            tenant_id: "tn_a".into(),
            address: "10.0.0.1".into(),
            state: SandboxState::Running,
            default_visibility: Visibility::Public,
            wake_policy: WakePolicy::OnRequest,
            preview_auth_sha256: None,
            allow_preflight: false,
        }
    }

    fn wire_snapshot(version: u64) -> portico_wire::Snapshot {
        let host_templates = portico_wire::DEFAULT_HOST_TEMPLATES.iter().map(|s| s.to_string()).collect();
        portico_wire::Snapshot {
            version,
            settings: Settings { host_templates, ..Default::default() },
            sandboxes: vec![sandbox("sb0001")],
            ..Default::default()
        }
    }

    #[test]
    fn a_snapshot_answer_keeps_the_snapshots_own_text_in_either_layout() {
        let snapshot = wire_snapshot(5);
        let text = serde_json::to_string(&snapshot).unwrap();
        let usual =
            serde_json::to_vec(&portico_wire::FeedMessage::Snapshot { snapshot: snapshot.clone() }).unwrap();
        let other = format!(r#"{{"snapshot":{text},"type":"snapshot","added":[1,{{"b":2}}]}}"#);
        let trailing = format!(r#"{{"type":"snapshot","snapshot":{text},"added":true}}"#);
        for body in [usual, other.into_bytes(), trailing.into_bytes()] {
            let Answer::Snapshot { snapshot: got, sent: Sent::Json(json) } =
                read_answer(&Bytes::from(body)).unwrap()
            else {
                panic!("not a snapshot's text")
            };
            assert_eq!(got, snapshot);
            assert_eq!(json, text.as_bytes());
        }
    }

    #[test]
    fn changes_and_broken_answers_are_read_as_such() {
        let body = Bytes::from_static(
            br#"{"type":"changes","version":3,"changes":[{"op":"delete_tenant","id":"x"}]}"#,
        );
        assert!(
            matches!(read_answer(&body).unwrap(), Answer::Changes { version: 3, changes } if changes.len() == 1)
        );
        for broken in [&br#"{"type":"snapshot","snapshot":{"version":1}}"#[..], b"{", b"", b"[]"] {
            assert!(read_answer(&Bytes::from_static(broken)).is_err(), "{}", String::from_utf8_lossy(broken));
        }
    }

    #[test]
    fn a_snapshot_from_control_becomes_the_base_as_sent_and_later_changes_follow_it_in_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::new(dir.path().to_path_buf(), store::Disk::default());
        let text = serde_json::to_vec(&wire_snapshot(5)).unwrap();
        let change = Change::UpsertSandbox { sandbox: sandbox("sb0002") };
        let current = Snapshot::from_wire(wire_snapshot(5)).unwrap().apply(6, vec![change.clone()]).unwrap();
        let batch = vec![
            Saved::Changes(Record { since: 1, version: 2, changes: vec![] }),
            Saved::Full { version: 5, sent: Sent::Json(Bytes::from(text.clone())) },
            Saved::Changes(Record { since: 5, version: 6, changes: vec![change] }),
        ];
        persist(&mut store, batch, &current).unwrap();
        assert_eq!(std::fs::read(dir.path().join(store::JSON_BASE_FILE)).unwrap(), text);
        let loaded = store::load(dir.path()).unwrap();
        assert_eq!(loaded.snapshot.version, 6);
        assert!(loaded.snapshot.sandboxes.get("sb0002").is_some());

        // Packed, the same: its bytes become the base, and the JSON base goes.
        let mut sent = Vec::new();
        packed::encode(&wire_snapshot(7), &mut sent).unwrap();
        // As control sends it.
        let sent = zstd::bulk::compress(&sent, 3).unwrap();
        let current = Snapshot::from_wire(wire_snapshot(7)).unwrap();
        persist(
            &mut store,
            vec![Saved::Full { version: 7, sent: Sent::Packed(Bytes::from(sent.clone())) }],
            &current,
        )
        .unwrap();
        assert_eq!(std::fs::read(dir.path().join(store::BASE_FILE)).unwrap(), sent);
        assert!(!dir.path().join(store::JSON_BASE_FILE).exists());
        let loaded = store::load(dir.path()).unwrap();
        assert_eq!(loaded.snapshot.version, 7);
        assert!(loaded.snapshot.sandboxes.get("sb0001").is_some());
    }

    #[test]
    fn zstd_answers_decompress_and_garbage_is_an_error() {
        let data = b"a feed answer, or anything".repeat(1000);
        let compressed = zstd::bulk::compress(&data, 3).unwrap();
        assert_eq!(unzstd(&compressed).unwrap(), data);
        assert!(unzstd(b"not zstd").is_err());
        assert!(unzstd(&compressed[..compressed.len() / 2]).is_err());
    }

    #[test]
    fn only_the_packed_media_type_is_read_as_packed() {
        let value = |v: &'static str| reqwest::header::HeaderValue::from_static(v);
        assert!(is_packed(Some(&value("application/vnd.portico.snapshot.v1"))));
        assert!(is_packed(Some(&value("Application/VND.portico.snapshot.v1; charset=binary"))));
        for other in
            ["application/json", "application/vnd.portico.snapshot.v2", "application/vnd.portico.snapshot"]
        {
            assert!(!is_packed(Some(&value(other))), "{other}");
        }
        assert!(!is_packed(None));
    }

    #[tokio::test]
    async fn an_answer_over_the_limit_is_refused_whether_or_not_it_states_its_length() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let heads = ["Content-Length: 100\r\n", "Transfer-Encoding: chunked\r\n"];
            for head in heads.into_iter().cycle().take(4) {
                let (mut conn, _) = listener.accept().await.unwrap();
                let _ = conn.read(&mut [0u8; 4096]).await;
                let body = if head.starts_with("Content") {
                    "x".repeat(100)
                } else {
                    format!("64\r\n{}\r\n0\r\n\r\n", "x".repeat(100))
                };
                let resp = format!("HTTP/1.1 200 OK\r\nConnection: close\r\n{head}\r\n{body}");
                conn.write_all(resp.as_bytes()).await.unwrap();
            }
        });
        for limit in [99, 99, 100, 100] {
            let resp = reqwest::get(&url).await.unwrap();
            let read = read_body(resp, &url, limit).await;
            match limit {
                99 => assert!(matches!(read, Err(FeedError::TooLarge { .. }))),
                _ => assert_eq!(read.unwrap().len(), 100),
            }
        }
    }

    #[test]
    fn the_edge_asks_for_its_own_packed_format_first() {
        assert_eq!(ACCEPT.split(',').next(), Some(packed::MEDIA_TYPE));
    }
}
