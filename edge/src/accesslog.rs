//! The access log, off the request path: `logging()` hands each request's line to a bounded channel and
//! one writer thread formats and writes it. A request never waits on the disk or on a slow stderr reader:
//! when the writer falls behind and the channel is full, the line is dropped and counted
//! (`portico_access_log_dropped_total`).
//!
//! One JSON object per line: `time` (RFC 3339, UTC), `client_ip`, `method`, `host`, `path` (never the
//! query: it may hold a credential), `status` (0: no response written), `bytes` (body bytes sent),
//! `duration_ms`, `upstream_ms` (null when the request never reached an upstream), `tenant`, `route`,
//! `error` (the edge's error code, null when none) and `request_id`.

use std::io::{self, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use prometheus::IntCounter;
use serde::Serialize;

/// Lines waiting for the writer; beyond this they are dropped.
pub const CAPACITY: usize = 65_536;

/// How long the writer rests after writing what had queued: lines reach the log at most this much later,
/// and at 100,000 requests a second 2,000 of them wait, well within [`CAPACITY`].
const BATCH_PAUSE: Duration = Duration::from_millis(20);

/// Where the access log goes (`--access-log off|stderr|PATH`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Destination {
    Off,
    #[default]
    Stderr,
    /// Appended to; created (mode 0640) when missing.
    File(PathBuf),
}

impl FromStr for Destination {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "" => Err("expected off, stderr or a file path".into()),
            "off" => Ok(Destination::Off),
            "stderr" | "-" => Ok(Destination::Stderr),
            path => Ok(Destination::File(path.into())),
        }
    }
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Off => f.write_str("off"),
            Destination::Stderr => f.write_str("stderr"),
            Destination::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// One request, as `logging()` saw it: only owned, cheap-to-move values; formatting happens on the writer.
#[derive(Debug)]
pub struct Line {
    pub time: SystemTime,
    pub client_ip: Option<IpAddr>,
    pub method: http::Method,
    pub host: String,
    /// The path only: callers must never put the query here.
    pub path: String,
    pub status: u16,
    pub bytes: u64,
    pub duration: Duration,
    pub upstream: Option<Duration>,
    pub tenant: Option<String>,
    pub route: &'static str,
    pub error: Option<&'static str>,
    /// The request's `X-Request-Id`, once the edge assigns one.
    pub request_id: Option<crate::request_id::RequestId>,
}

/// The sending side, shared by every listener's pipeline.
pub struct AccessLog {
    tx: Option<SyncSender<Line>>,
    dropped: IntCounter,
    /// Set when the server starts shutting down: from then on the writer writes each line as it comes,
    /// so that none is still waiting out a rest when the process exits.
    stopping: Arc<AtomicBool>,
}

impl AccessLog {
    /// No access log: `send` is never worth calling ([`AccessLog::enabled`] is false).
    pub fn off() -> AccessLog {
        AccessLog { tx: None, dropped: crate::metrics::ACCESS_LOG_DROPPED.clone(), stopping: Arc::default() }
    }

    /// Opens the destination (an unwritable file is an error at start-up, not a silent loss) and starts
    /// the writer thread.
    pub fn start(destination: &Destination) -> io::Result<AccessLog> {
        let dropped = crate::metrics::ACCESS_LOG_DROPPED.clone();
        let out: Box<dyn Write + Send> = match destination {
            Destination::Off => return Ok(AccessLog::off()),
            Destination::Stderr => Box::new(io::stderr()),
            Destination::File(path) => {
                use std::os::unix::fs::OpenOptionsExt;
                Box::new(std::fs::OpenOptions::new().create(true).append(true).mode(0o640).open(path)?)
            }
        };
        AccessLog::with_writer(out, CAPACITY, dropped)
    }

    /// The writer thread writing to `out`, with `capacity` lines of slack, counting drops in `dropped`.
    pub fn with_writer<W: Write + Send + 'static>(
        out: W,
        capacity: usize,
        dropped: IntCounter,
    ) -> io::Result<AccessLog> {
        let (tx, rx) = mpsc::sync_channel(capacity);
        let stopping = Arc::new(AtomicBool::new(false));
        let rest_until_stopping = stopping.clone();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(rx, out, &rest_until_stopping))?;
        Ok(AccessLog { tx: Some(tx), dropped, stopping })
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues `line` for the writer, or drops and counts it when the writer is behind. Never blocks.
    pub fn send(&self, line: Line) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }
}

/// The writer thread: blocks for a line, writes it and everything else already queued, flushes whenever
/// the queue is empty (an idle edge's log is complete), then rests [`BATCH_PAUSE`] unless the server is
/// stopping (a busy one writes in large chunks and is not woken per line).
fn write_lines<W: Write>(rx: Receiver<Line>, out: W, stopping: &AtomicBool) {
    let mut out = io::BufWriter::with_capacity(64 * 1024, out);
    let mut buf = Vec::with_capacity(512);
    let mut failing = false;
    while let Ok(mut line) = rx.recv() {
        loop {
            buf.clear();
            line.write_json(&mut buf);
            let written = out.write_all(&buf);
            match rx.try_recv() {
                Ok(next) => line = next,
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => {
                    let result = written.and_then(|()| out.flush());
                    report(&mut failing, result);
                    break;
                }
            }
        }
        // Lines gather while the writer rests: a writer blocked in `recv` is woken by every request's
        // line (a futex wake for the worker, a context switch for the machine), one that rests is not.
        if !stopping.load(Ordering::Relaxed) {
            std::thread::sleep(BATCH_PAUSE);
        }
    }
    let _ = out.flush();
}

/// Watches for the server's shutdown, which starts with a grace period while requests still finish: their
/// lines are written as they come, so the last ones are not lost waiting out a rest when the process exits.
#[async_trait::async_trait]
impl BackgroundService for AccessLog {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let _ = shutdown.changed().await;
        self.stopping.store(true, Ordering::Relaxed);
    }
}

/// A failing destination (disk full, closed stderr) is reported once, not once per line.
fn report(failing: &mut bool, result: io::Result<()>) {
    match result {
        Ok(()) if *failing => {
            *failing = false;
            tracing::info!("access log writable again");
        }
        Err(e) if !*failing => {
            *failing = true;
            tracing::warn!(error = %e, "writing the access log; lines are lost until it is writable again");
        }
        _ => {}
    }
}

#[derive(Serialize)]
struct Json<'a> {
    time: String,
    client_ip: Option<IpAddr>,
    method: &'a str,
    host: &'a str,
    path: &'a str,
    status: u16,
    bytes: u64,
    duration_ms: f64,
    upstream_ms: Option<f64>,
    tenant: Option<&'a str>,
    route: &'a str,
    error: Option<&'a str>,
    request_id: Option<&'a str>,
}

impl Line {
    /// The JSON line, newline included.
    pub fn write_json(&self, buf: &mut Vec<u8>) {
        let json = Json {
            time: rfc3339(self.time),
            client_ip: self.client_ip,
            method: self.method.as_str(),
            host: &self.host,
            path: &self.path,
            status: self.status,
            bytes: self.bytes,
            duration_ms: millis(self.duration),
            upstream_ms: self.upstream.map(millis),
            tenant: self.tenant.as_deref(),
            route: self.route,
            error: self.error,
            request_id: self.request_id.as_ref().map(crate::request_id::RequestId::as_str),
        };
        // Serializing plain strings and numbers into a Vec cannot fail.
        if serde_json::to_writer(&mut *buf, &json).is_ok() {
            buf.push(b'\n');
        }
    }
}

/// Milliseconds with microsecond precision: proxying takes well under one.
fn millis(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

/// `2026-12-06T03:50:00.123Z`.
fn rfc3339(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    let t = t.replace_millisecond(t.millisecond()).unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

#[cfg(test)]
mod tests;
