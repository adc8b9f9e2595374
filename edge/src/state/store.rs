//! The state dir (`--state-dir`): the last routing state, so an edge serves through a control outage and
//! across its own restarts, written in proportion to what changed.
//!
//! Two files:
//! - the base, a whole snapshot: `snapshot.bin` packed (`wire::packed`: a fifth of the JSON's parsing time
//!   at a million sandboxes; zstd-compressed when it is control's answer as sent), or `snapshot.json`, a
//!   [`wire::Snapshot`] as JSON (what older edges wrote and read, and what this one writes when control
//!   answered in JSON). Writing one removes the other; when both are there, the one written last is the
//!   base.
//! - `changes.log`, append-only: one line per batch of changes the feed applied, `<crc32 hex> <json>\n`,
//!   the JSON a [`Record`] `{since, version, changes}`. Its first line is a marker `since == version ==`
//!   the base's version, so that an edge sharing the dir can tell where a log it did not write starts.
//!
//! Loading replays, on top of the base, each record that continues the state (`since` = the version so
//! far), skips records already contained (`version` ≤ it: duplicates from a second edge, or a log older
//! than a new base), and stops at the first line that is torn, fails its checksum or leaves a gap: the
//! valid prefix is used, what follows is logged and ignored. A base that cannot be read is logged and the
//! edge starts from control.
//!
//! Compaction writes a new base (from the current snapshot, in a blocking thread, off the feed and the
//! request path) and a new log holding only the marker, when the log grows past a quarter of the base, or
//! when the log cannot be continued (a gap, a damaged tail). A whole snapshot from control becomes the new
//! base as control sent it (no serialisation: at a million sandboxes writing JSON cost more than parsing it).
//!
//! Every file is written under a unique temporary name (pid, a per-process counter and a random suffix,
//! created exclusively) with mode 0600 (certificates' private keys are in the state), synced, then renamed
//! into place and the directory synced. Blue/green edge units share one dir: neither can clobber the
//! other's temporary file, the last rename wins with a complete file, and an edge that finds the log
//! replaced under it re-reads where the new log ends before appending. Appends are single `write`s on an
//! `O_APPEND` file; a torn interleaving is caught by the checksum and costs only the tail.
//!
//! Why not an embedded store (`redb`, `sled`): the state is replayed in full at start and never queried
//! on disk, so a B-tree buys nothing; the base is the same packed form control sends, and the log plain
//! JSON lines.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use portico_wire::{self as wire, packed};
use serde::{Deserialize, Serialize};

use super::{unix_ms, Snapshot};

/// The base, packed: what this edge writes.
pub const BASE_FILE: &str = "snapshot.bin";
/// The base as JSON: what earlier edges wrote, and this one when control answered in JSON.
pub const JSON_BASE_FILE: &str = "snapshot.json";
pub const LOG_FILE: &str = "changes.log";
/// The log is compacted into a new base once it is larger than base / `COMPACT_FRACTION`...
const COMPACT_FRACTION: u64 = 4;
/// ...and larger than this (a small state would otherwise be rewritten for every few changes).
const COMPACT_MIN_BYTES: u64 = 1 << 20;

/// A whole snapshot in the form control sent it.
#[derive(Clone, Debug)]
pub enum Sent {
    /// `wire::packed`, zstd-compressed (as control sends it) or not.
    Packed(bytes::Bytes),
    /// A [`wire::Snapshot`]'s JSON text.
    Json(bytes::Bytes),
}

/// One batch of changes, as the feed applied it.
#[derive(Serialize, Deserialize)]
pub struct Record {
    pub since: u64,
    pub version: u64,
    #[serde(default)]
    pub changes: Vec<wire::Change>,
}

/// What the state dir holds, as found by [`load`].
#[derive(Debug)]
pub struct Loaded {
    pub snapshot: Snapshot,
    /// When it was last written (unix ms), for `portico_config_age_seconds`.
    pub saved_at: u64,
    pub disk: Disk,
}

/// Where the files on disk stand, so the writer knows whether it can append.
#[derive(Clone, Copy, Debug, Default)]
pub struct Disk {
    /// The version the dir replays to; `None`: nothing usable (the next write is a base).
    pub version: Option<u64>,
    pub base_len: u64,
    pub log_len: u64,
    /// The log ends in a valid record (no torn or corrupt tail to append after).
    pub log_clean: bool,
}

/// The last saved state, if the dir holds a usable one. Never an error: what cannot be used is logged,
/// and the edge starts from control (a damaged base) or from the valid prefix of the log.
pub fn load(dir: &Path) -> Option<Loaded> {
    let base_path = current_base(dir)?;
    let bytes = match std::fs::read(&base_path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::error!(error = %e, file = %base_path.display(), "cannot read the saved routing state; starting from control");
            return None;
        }
    };
    let base = if bytes.starts_with(&packed::MAGIC) || bytes.starts_with(&super::ZSTD_MAGIC) {
        Snapshot::from_packed(&bytes).map_err(|e| e.to_string())
    } else {
        serde_json::from_slice::<wire::Snapshot>(&bytes)
            .map_err(|e| e.to_string())
            .and_then(|w| Snapshot::from_wire(w).map_err(|e| e.to_string()))
    };
    let mut snapshot = match base {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, file = %base_path.display(), bytes = bytes.len(), "the saved routing state is damaged; ignored, starting from control");
            return None;
        }
    };
    let base_len = bytes.len() as u64;
    drop(bytes);
    let mut saved_at = mtime(&base_path);
    let log_path = dir.join(LOG_FILE);
    let (log_len, log_clean) = match std::fs::read(&log_path) {
        Ok(log) => {
            saved_at = saved_at.max(mtime(&log_path));
            let from = snapshot.version;
            let scan = replay(&log, Some(&mut snapshot), from);
            if let Some(problem) = &scan.problem {
                tracing::warn!(
                    file = %log_path.display(), problem, valid_bytes = scan.valid_len, bytes = log.len(),
                    version = snapshot.version, "the saved change log has a damaged tail; using its valid prefix"
                );
            }
            (scan.valid_len, scan.problem.is_none())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (0, false),
        Err(e) => {
            tracing::warn!(error = %e, file = %log_path.display(), "cannot read the saved change log; using the base only");
            (0, false)
        }
    };
    let disk = Disk { version: Some(snapshot.version), base_len, log_len, log_clean };
    Some(Loaded { snapshot, saved_at, disk })
}

/// The base the dir holds: of the two forms, the one written last (each write of one removes the other,
/// but an edge may stop between the two, and an older edge sharing the dir writes only JSON).
fn current_base(dir: &Path) -> Option<PathBuf> {
    // On a tie (a file system with coarse times), the last of the maxima: packed.
    [JSON_BASE_FILE, BASE_FILE]
        .into_iter()
        .filter_map(|name| {
            let path = dir.join(name);
            let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok()?;
            Some((modified, path))
        })
        .max_by_key(|(modified, _)| *modified)
        .map(|(_, path)| path)
}

fn base_len(dir: &Path) -> u64 {
    current_base(dir).and_then(|p| std::fs::metadata(p).ok()).map_or(0, |m| m.len())
}

fn mtime(path: &Path) -> u64 {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .map(unix_ms)
        .unwrap_or_else(|_| unix_ms(SystemTime::now()))
}

struct Scan {
    /// Bytes up to the end of the last valid line.
    valid_len: u64,
    /// The version the valid records reach from the starting version.
    version: u64,
    /// Why the scan stopped before the end, if it did.
    problem: Option<String>,
}

/// Walks the log from `version`: applies (when given a snapshot) each record that continues it, skips
/// those already contained, stops at the first damaged line or gap.
fn replay(log: &[u8], mut snapshot: Option<&mut Snapshot>, mut version: u64) -> Scan {
    let mut valid_len = 0u64;
    let mut rest = log;
    while !rest.is_empty() {
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            return Scan {
                valid_len,
                version,
                problem: Some(format!("torn last line ({} bytes)", rest.len())),
            };
        };
        let line = &rest[..end];
        let record = match parse_line(line) {
            Ok(r) => r,
            Err(problem) => return Scan { valid_len, version, problem: Some(problem) },
        };
        if record.version > version {
            if record.since != version {
                let problem = format!("gap: a record from {} after version {version}", record.since);
                return Scan { valid_len, version, problem: Some(problem) };
            }
            if let Some(snap) = snapshot.as_deref_mut() {
                match snap.apply_in_place(record.version, record.changes) {
                    Ok(()) => {}
                    Err(e) => {
                        let problem = format!("a record the edge cannot apply: {e}");
                        return Scan { valid_len, version, problem: Some(problem) };
                    }
                }
            }
            version = record.version;
        }
        valid_len += end as u64 + 1;
        rest = &rest[end + 1..];
    }
    Scan { valid_len, version, problem: None }
}

fn parse_line(line: &[u8]) -> Result<Record, String> {
    let (crc, json) = match line.iter().position(|&b| b == b' ') {
        Some(8) => (&line[..8], &line[9..]),
        _ => return Err("a line without its checksum".into()),
    };
    let crc = std::str::from_utf8(crc).ok().and_then(|c| u32::from_str_radix(c, 16).ok());
    if crc != Some(crc32fast::hash(json)) {
        return Err("a line that fails its checksum".into());
    }
    serde_json::from_slice(json).map_err(|e| format!("a record that does not parse: {e}"))
}

fn encode(record: &Record, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    let json = serde_json::to_vec(record)?;
    out.extend_from_slice(format!("{:08x} ", crc32fast::hash(&json)).as_bytes());
    out.extend_from_slice(&json);
    out.push(b'\n');
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state dir {dir}: {source}")]
    Io { dir: PathBuf, source: std::io::Error },
    #[error("state dir: encoding: {0}")]
    Json(#[from] serde_json::Error),
}

/// The writer of one edge process.
pub struct Store {
    dir: PathBuf,
    disk: Disk,
    /// The log this process appends to, and its identity, to notice another edge replacing it.
    log: Option<(File, (u64, u64))>,
}

impl Store {
    /// `disk` is what [`load`] found (`Disk::default()` when it found nothing).
    pub fn new(dir: PathBuf, disk: Disk) -> Self {
        Self { dir, disk, log: None }
    }

    /// The writer of an edge whose state was loaded from `dir` at `version` (0: nothing loaded). It
    /// appends to the log only if the log ends exactly there; otherwise its first write is a new base.
    pub fn resume(dir: PathBuf, version: u64) -> Self {
        let mut store = Self::new(dir, Disk::default());
        if version == 0 {
            return store;
        }
        let path = store.dir.join(LOG_FILE);
        let Ok(file) = OpenOptions::new().append(true).open(&path) else { return store };
        let Ok(log) = std::fs::read(&path) else { return store };
        let Some(first) = log.split(|&b| b == b'\n').next().and_then(|l| parse_line(l).ok()) else {
            return store;
        };
        let scan = replay(&log, None, first.since);
        let id = file.metadata().map(|m| (m.dev(), m.ino()));
        if let (None, true, Ok(id)) = (&scan.problem, scan.version == version, id) {
            store.disk = Disk {
                version: Some(version),
                base_len: base_len(&store.dir),
                log_len: scan.valid_len,
                log_clean: true,
            };
            store.log = Some((file, id));
        }
        store
    }

    pub fn disk(&self) -> Disk {
        self.disk
    }

    /// The version the dir replays to, as far as this writer knows (following a log another edge
    /// sharing the dir put in place).
    pub fn disk_version(&mut self) -> Option<u64> {
        self.follow_replaced_log();
        self.disk.version
    }

    fn io(&self, source: std::io::Error) -> StoreError {
        StoreError::Io { dir: self.dir.clone(), source }
    }

    /// Whether `since → version` can be appended: it continues what the dir replays to.
    pub fn continues(&mut self, since: u64) -> bool {
        self.follow_replaced_log();
        self.disk.log_clean && self.disk.version == Some(since)
    }

    /// Whether the log has grown enough to be folded into a new base.
    pub fn wants_compaction(&self) -> bool {
        self.disk.log_len > COMPACT_MIN_BYTES && self.disk.log_len > self.disk.base_len / COMPACT_FRACTION
    }

    /// Appends records (each continuing the previous one and [`Self::continues`] the dir) in one write.
    pub fn append(&mut self, records: &[Record]) -> Result<(), StoreError> {
        let Some(last) = records.last() else { return Ok(()) };
        let mut buf = Vec::new();
        for r in records {
            encode(r, &mut buf)?;
        }
        if self.log.is_none() {
            let path = self.dir.join(LOG_FILE);
            let file = OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| self.io(e))?;
            let id = file.metadata().map(|m| (m.dev(), m.ino())).map_err(|e| self.io(e))?;
            self.log = Some((file, id));
        }
        if let Some((file, _)) = &mut self.log {
            let written = file.write_all(&buf).and_then(|()| file.sync_data());
            if let Err(e) = written {
                // What reached the file is unknown: the next write is a new base.
                self.disk.log_clean = false;
                return Err(self.io(e));
            }
        }
        self.disk.version = Some(last.version);
        self.disk.log_len += buf.len() as u64;
        Ok(())
    }

    /// Another edge sharing the dir replaced the log (it wrote a base): find where the new one ends.
    fn follow_replaced_log(&mut self) {
        let Some((_, id)) = &self.log else { return };
        let path = self.dir.join(LOG_FILE);
        let now = std::fs::metadata(&path).map(|m| (m.dev(), m.ino())).ok();
        if now == Some(*id) {
            return;
        }
        self.log = None;
        self.disk = Disk::default();
        let Ok(log) = std::fs::read(&path) else { return };
        // The marker line names the base it follows; walk the records from there.
        let Some(first) = log.split(|&b| b == b'\n').next().and_then(|l| parse_line(l).ok()) else { return };
        let scan = replay(&log, None, first.since);
        self.disk = Disk {
            version: Some(scan.version),
            base_len: base_len(&self.dir),
            log_len: scan.valid_len,
            log_clean: scan.problem.is_none(),
        };
    }

    /// Writes `snapshot` as the new base (packed) and starts a new log after it.
    pub fn write_base(&mut self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let dir = self.dir.clone();
        self.new_base(snapshot.version, BASE_FILE, |w| {
            write_packed(snapshot, w).map_err(|source| StoreError::Io { dir, source })
        })
    }

    /// Writes a whole snapshot as control sent it, packed or as JSON text, at `version` as the new base
    /// and starts a new log after it.
    pub fn write_base_as_sent(&mut self, version: u64, sent: &Sent) -> Result<(), StoreError> {
        let dir = self.dir.clone();
        let (name, bytes) = match sent {
            Sent::Packed(b) => (BASE_FILE, b),
            Sent::Json(b) => (JSON_BASE_FILE, b),
        };
        self.new_base(version, name, |w| w.write_all(bytes).map_err(|source| StoreError::Io { dir, source }))
    }

    fn new_base(
        &mut self,
        version: u64,
        name: &str,
        write: impl FnOnce(&mut BufWriter<&File>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| self.io(e))?;
        self.log = None;
        self.disk = Disk::default();
        let (base_len, _) = write_atomically(&self.dir, name, write)?;
        // The other form is older now; left in place it would only be read if this one were lost.
        let other = if name == BASE_FILE { JSON_BASE_FILE } else { BASE_FILE };
        match std::fs::remove_file(self.dir.join(other)) {
            // Harmless: the base just written is the newer one, and loading takes the newer.
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(error = %e, file = other, "cannot remove the state dir's older base")
            }
            _ => {}
        }
        let marker = Record { since: version, version, changes: Vec::new() };
        let mut line = Vec::new();
        encode(&marker, &mut line)?;
        let (log_len, written) =
            write_atomically(&self.dir, LOG_FILE, |w| w.write_all(&line).map_err(|e| self.io(e)))?;
        // Append to the log just put in place, unless another edge has replaced it already.
        let path = self.dir.join(LOG_FILE);
        let file = OpenOptions::new().append(true).open(&path).map_err(|e| self.io(e))?;
        if file.metadata().map(|m| (m.dev(), m.ino())).ok() == Some(written) {
            self.log = Some((file, written));
            self.disk = Disk { version: Some(version), base_len, log_len, log_clean: true };
        }
        Ok(())
    }
}

/// The compiled snapshot packed (`wire::packed`), its records written straight from the maps: copying a
/// million of them into a [`wire::Snapshot`] first would take as much memory again as the state itself.
fn write_packed(snap: &Snapshot, w: &mut impl Write) -> std::io::Result<()> {
    let rest = snap.to_wire_but_records();
    let rest = packed::Rest {
        settings: &rest.settings,
        tenants: &rest.tenants,
        verify_keys: &rest.verify_keys,
        revocations: &rest.revocations,
        deployments: &rest.deployments,
        certificates: &rest.certificates,
        acme_challenges: &rest.acme_challenges,
    };
    packed::encode_parts(
        snap.version,
        &rest,
        packed::Records { len: snap.sandboxes.len(), iter: snap.sandboxes.values().map(|r| &**r) },
        packed::Records { len: snap.previews.len(), iter: snap.previews.values() },
        packed::Records { len: snap.shares.len(), iter: snap.shares.values().map(|r| &**r) },
        w,
    )
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A temporary name no other writer (thread, or process sharing the dir) uses.
pub fn temp_name(name: &str) -> String {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    // Two containers sharing the dir may both be pid 1: the random part tells them apart.
    let mut random = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random);
    format!(".{name}.{}.{n}.{}.tmp", std::process::id(), hex::encode(random))
}

/// Writes `dir/name` atomically: a new file under a unique temporary name (mode 0600), synced, renamed
/// into place, the directory synced. Returns the bytes written and the file's identity (device, inode).
pub fn write_atomically(
    dir: &Path,
    name: &str,
    write: impl FnOnce(&mut BufWriter<&File>) -> Result<(), StoreError>,
) -> Result<(u64, (u64, u64)), StoreError> {
    let io = |source| StoreError::Io { dir: dir.to_path_buf(), source };
    let tmp = dir.join(temp_name(name));
    let file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(io)?;
    let result = (|| {
        // The mode of a file created under a restrictive umask is already 0600; make sure of it otherwise.
        file.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        let mut w = BufWriter::new(&file);
        write(&mut w)?;
        w.flush().map_err(io)?;
        drop(w);
        file.sync_all().map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        std::fs::rename(&tmp, dir.join(name)).map_err(io)?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        Ok((meta.len(), (meta.dev(), meta.ino())))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests;
