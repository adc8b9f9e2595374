//! Static releases, served by the edge itself: fetched from control by SHA-256 when a version using one
//! is promoted (or on its first request), streamed to a file while checked against that hash (never
//! held in memory whole), unpacked from that file under
//! `<state-dir>/releases/<sha256>/`, and answered with `index.html` for directories, `Content-Type` by
//! extension, a strong `ETag` (`If-None-Match` → 304), `HEAD`, single `Range`s, gzip/brotli through
//! Pingora's compression module, and the release's own `404.html`.
//!
//! A request path is percent-decoded once and refused (400) if it holds `..`, a backslash or NUL after
//! decoding; what remains is joined to the release directory segment by segment, and releases hold no
//! links, so no spelling of a path reaches outside the release.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::SeekFrom;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue};
use pingora::http::{IntoCaseHeaderName, ResponseHeader};
use pingora::modules::http::compression::ResponseCompression;
use pingora::proxy::Session;
use portico_wire::VersionTarget;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::control::Control;
use crate::error::EdgeError;
use crate::headers;
use crate::state::Snapshot;

/// Files up to this size are kept in memory once read.
const CACHE_FILE_MAX: u64 = 1024 * 1024;
const CACHE_TOTAL: u64 = 64 * 1024 * 1024;
/// Chunks larger files are streamed in.
const CHUNK: usize = 64 * 1024;
const COMPRESSION_LEVEL: u32 = 5;
/// A fetched archive may not exceed this (control enforces its own, lower, limit on upload).
const MAX_ARCHIVE: u64 = 1024 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("control: {0}")]
    Http(#[from] reqwest::Error),
    #[error("control answered {0}")]
    Status(u16),
    #[error(transparent)]
    Unreachable(#[from] crate::control::Unreachable),
    #[error("the archive's SHA-256 is {0}")]
    Hash(String),
    #[error("archive entry {0:?} is not a plain file or directory inside the release")]
    Entry(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the archive is larger than the edge accepts")]
    TooLarge,
}

/// One file of a release, as served.
struct File {
    /// `None` for a file too large to cache: read from disk per request.
    body: Option<Bytes>,
    path: PathBuf,
    len: u64,
    /// `len` as a header value, formatted once; the same for the ETag: the values every answer carries are
    /// shared, not copied and checked per request.
    content_length: HeaderValue,
    etag: HeaderValue,
    content_type: &'static str,
}

impl File {
    fn etag(&self) -> &str {
        // Made from hex digits and quotes below.
        self.etag.to_str().unwrap_or_default()
    }
}

/// `<sha256>/<path in the release>`: one key, so a look-up builds one string.
type FileKey = Box<str>;

/// Keys are release hashes and request paths, which clients choose: foldhash seeded at random per process
/// (as the snapshot's tables are, see `state/cowmap.rs`), cheaper than SipHash on maps every static request
/// touches.
type Hasher = foldhash::quality::RandomState;

/// The releases this edge holds on disk, and how it gets more.
pub struct Releases {
    root: PathBuf,
    control: Arc<Control>,
    /// Releases known to be unpacked: no disk check, and no lock, per request.
    ready: papaya::HashSet<Arc<str>, Hasher>,
    /// One fetch per release however many requests wait for it.
    flights: Mutex<HashMap<Arc<str>, Arc<tokio::sync::Mutex<()>>>>,
    files: moka::sync::Cache<FileKey, Arc<File>, Hasher>,
}

impl Releases {
    pub fn new(root: PathBuf, control: Arc<Control>) -> Self {
        let files = moka::sync::Cache::builder()
            .weigher(|_: &FileKey, f: &Arc<File>| u32::try_from(f.len).unwrap_or(u32::MAX).max(1))
            .max_capacity(CACHE_TOTAL)
            .build_with_hasher(Hasher::default());
        let ready = papaya::HashSet::with_hasher(Hasher::default());
        Self { root, control, ready, flights: Mutex::default(), files }
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        // Sets and maps of plain values: a panicking holder cannot leave them inconsistent.
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts fetching the releases of active static versions that are not on disk yet.
    pub fn prefetch(self: &Arc<Self>, snap: &Snapshot) {
        for d in snap.deployments.values() {
            if let Some(VersionTarget::Release { sha256 }) = d.active.as_ref().map(|a| &a.target) {
                if !self.ready.pin().contains(sha256.as_str()) {
                    let this = self.clone();
                    let sha256 = sha256.clone();
                    tokio::spawn(async move {
                        if let Err(e) = this.ensure(&sha256).await {
                            tracing::warn!(release = %sha256, error = %e, "fetching a release");
                        }
                    });
                }
            }
        }
    }

    /// Fetches and unpacks the release under `<root>/<sha256>` if this edge does not have it yet.
    pub async fn ensure(&self, sha256: &str) -> Result<(), ReleaseError> {
        if self.ready.pin().contains(sha256) {
            return Ok(());
        }
        let dir = self.root.join(sha256);
        let flight = Self::lock(&self.flights).entry(sha256.into()).or_default().clone();
        let _one = flight.lock().await;
        if tokio::fs::metadata(&dir).await.is_ok_and(|m| m.is_dir()) {
            self.ready.pin().insert(sha256.into());
            return Ok(());
        }
        let archive = self.download(sha256).await?;
        let (root, sha) = (self.root.clone(), sha256.to_string());
        tokio::task::spawn_blocking(move || unpack(&root, &sha, &archive))
            .await
            .map_err(|e| ReleaseError::Io(std::io::Error::other(e.to_string())))??;
        self.ready.pin().insert(sha256.into());
        Self::lock(&self.flights).remove(sha256);
        Ok(())
    }

    /// The archive on disk as `<root>/<sha256>.tar.gz`. It is streamed from control into a temporary file
    /// while hashed, and renamed to that name only when the hash matches, so the name always holds the
    /// verified archive and the edge never holds more than a chunk of it in memory.
    async fn download(&self, sha256: &str) -> Result<PathBuf, ReleaseError> {
        let archive = self.root.join(format!("{sha256}.tar.gz"));
        if tokio::fs::metadata(&archive).await.is_ok_and(|m| m.is_file()) {
            return Ok(archive);
        }
        let mut r = self
            .control
            .call(|http, url| {
                http.get(format!("{url}/v1/edge/releases/{sha256}")).timeout(Duration::from_secs(300))
            })
            .await?;
        if !r.status().is_success() {
            return Err(ReleaseError::Status(r.status().as_u16()));
        }
        if r.content_length().is_some_and(|n| n > MAX_ARCHIVE) {
            return Err(ReleaseError::TooLarge);
        }
        tokio::fs::create_dir_all(&self.root).await?;
        let tmp = self.root.join(format!(".{sha256}.{}.download", std::process::id()));
        let result = async {
            let mut file = tokio::fs::File::create(&tmp).await?;
            let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
            let mut len = 0u64;
            while let Some(chunk) = r.chunk().await? {
                len += chunk.len() as u64;
                if len > MAX_ARCHIVE {
                    return Err(ReleaseError::TooLarge);
                }
                hash.update(&chunk);
                file.write_all(&chunk).await?;
            }
            file.sync_all().await?;
            let actual = hex::encode(hash.finish());
            if actual != sha256 {
                return Err(ReleaseError::Hash(actual));
            }
            tokio::fs::rename(&tmp, &archive).await?;
            Ok(())
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result.map(|()| archive)
    }

    /// Answers the request from the release. `Err` is an edge error page (unknown file without a
    /// `404.html`, a path that tries to escape, a release that cannot be fetched).
    pub async fn serve(
        &self,
        session: &mut Session,
        sha256: &str,
        frame_ancestors: &HeaderValue,
    ) -> Result<(), EdgeError> {
        self.ensure(sha256).await.map_err(|e| {
            tracing::warn!(release = %sha256, error = %e, "release unavailable");
            EdgeError::AppUnavailable
        })?;
        let req = session.req_header();
        let head = req.method == http::Method::HEAD;
        if req.method != http::Method::GET && !head {
            return write(session, simple(405, frame_ancestors, Some(("allow", "GET, HEAD")))?, None).await;
        }
        let rel = request_path(req.uri.path())?;
        let (file, status) = match self.file(sha256, &rel).await {
            Some(f) => (f, 200),
            None => match self.file(sha256, "404.html").await {
                Some(f) => (f, 404),
                None => return Err(EdgeError::NotFound),
            },
        };
        let req = session.req_header();
        let mut resp = response(status, 8)?;
        set(&mut resp, header::CONTENT_TYPE, HeaderValue::from_static(file.content_type))?;
        headers::apply_frame_policy(&mut resp, frame_ancestors).map_err(|_| EdgeError::BadRequest)?;
        if status == 404 {
            set(&mut resp, header::CACHE_CONTROL, HeaderValue::from_static("no-store"))?;
            set(&mut resp, header::CONTENT_LENGTH, file.content_length.clone())?;
            return write_file(session, resp, &file, 0, file.len, head).await;
        }
        set(&mut resp, "etag", file.etag.clone())?;
        set(&mut resp, header::ACCEPT_RANGES, HeaderValue::from_static("bytes"))?;
        // Revalidate each time: a promote changes what the same URL serves.
        set(&mut resp, header::CACHE_CONTROL, HeaderValue::from_static("no-cache"))?;
        if none_match(req, file.etag()) {
            resp.set_status(304).map_err(|_| EdgeError::BadRequest)?;
            resp.remove_header(&header::CONTENT_TYPE);
            return write(session, resp, None).await;
        }
        let range = if if_range_ok(req, file.etag()) {
            header_str(req, header::RANGE).map(|r| parse_range(r, file.len))
        } else {
            None
        };
        match range {
            Some(RangeSpec::Unsatisfiable) => {
                let mut resp = simple(416, frame_ancestors, None)?;
                set(&mut resp, "content-range", format!("bytes */{}", file.len))?;
                write(session, resp, None).await
            }
            Some(RangeSpec::Bytes(start, end)) => {
                resp.set_status(206).map_err(|_| EdgeError::BadRequest)?;
                set(&mut resp, "content-range", format!("bytes {start}-{end}/{}", file.len))?;
                set(&mut resp, header::CONTENT_LENGTH, end + 1 - start)?;
                write_file(session, resp, &file, start, end + 1, head).await
            }
            Some(RangeSpec::Whole) | None => {
                set(&mut resp, header::CONTENT_LENGTH, file.content_length.clone())?;
                // Whole bodies only: a compressed 206 would not be the bytes the client asked for.
                if !head {
                    enable_compression(session);
                }
                write_file(session, resp, &file, 0, file.len, head).await
            }
        }
    }

    /// The file at `rel` in the release (a directory's `index.html`), or `None` when there is none.
    async fn file(&self, release: &str, rel: &str) -> Option<Arc<File>> {
        let mut key = String::with_capacity(release.len() + 1 + rel.len());
        key.push_str(release);
        key.push('/');
        key.push_str(rel);
        if let Some(f) = self.files.get(key.as_str()) {
            return Some(f);
        }
        let mut path = self.root.join(release).join(rel);
        // Releases hold no links (checked on upload and unpack); `symlink_metadata` keeps it that way.
        let mut meta = tokio::fs::symlink_metadata(&path).await.ok()?;
        if meta.is_dir() {
            path = path.join("index.html");
            meta = tokio::fs::symlink_metadata(&path).await.ok()?;
        }
        if !meta.is_file() {
            return None;
        }
        let content_type = content_type(&path);
        let file = if meta.len() <= CACHE_FILE_MAX {
            let body = Bytes::from(tokio::fs::read(&path).await.ok()?);
            let digest = ring::digest::digest(&ring::digest::SHA256, &body);
            let etag = strong_etag(&digest);
            File {
                len: body.len() as u64,
                content_length: body.len().into(),
                body: Some(body),
                path,
                etag,
                content_type,
            }
        } else {
            // Same release and path: same bytes, so this is a strong validator without hashing the file.
            let id = ring::digest::digest(&ring::digest::SHA256, format!("{release}/{rel}").as_bytes());
            let etag = strong_etag(&id);
            File { len: meta.len(), content_length: meta.len().into(), body: None, path, etag, content_type }
        };
        let file = Arc::new(file);
        self.files.insert(key.into_boxed_str(), file.clone());
        Some(file)
    }
}

/// Turns on Pingora's compression module for this response. It is off by default (proxied responses keep
/// their encoding), so it has not read `Accept-Encoding` yet: it is handed that header now.
fn enable_compression(session: &mut Session) {
    let Some(accept) = session.req_header().headers.get(header::ACCEPT_ENCODING).cloned() else { return };
    let Ok(mut req) = pingora::http::RequestHeader::build("GET", b"/", Some(1)) else { return };
    if req.insert_header(header::ACCEPT_ENCODING, accept).is_err() {
        return;
    }
    if let Some(c) = session.downstream_modules_ctx.get_mut::<ResponseCompression>() {
        if c.is_header_phase() {
            c.adjust_level(COMPRESSION_LEVEL);
            c.request_filter(&req);
        }
    }
}

fn header_str(req: &pingora::http::RequestHeader, name: http::HeaderName) -> Option<&str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

/// `If-None-Match` by weak comparison (RFC 9110 §13.1.2): a compressed response carries `W/` + our tag.
fn none_match(req: &pingora::http::RequestHeader, etag: &str) -> bool {
    header_str(req, header::IF_NONE_MATCH).is_some_and(|v| {
        v.split(',').map(str::trim).any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
    })
}

/// A `Range` applies unless an `If-Range` names another version (strong comparison).
fn if_range_ok(req: &pingora::http::RequestHeader, etag: &str) -> bool {
    header_str(req, header::IF_RANGE).is_none_or(|v| v.trim() == etag)
}

#[derive(Debug, PartialEq, Eq)]
enum RangeSpec {
    /// Inclusive byte positions.
    Bytes(u64, u64),
    Unsatisfiable,
    /// Several ranges or a form not understood: the whole file (RFC 9110 allows ignoring `Range`).
    Whole,
}

fn parse_range(value: &str, len: u64) -> RangeSpec {
    let Some(spec) = value.trim().strip_prefix("bytes=") else { return RangeSpec::Whole };
    if spec.contains(',') {
        return RangeSpec::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else { return RangeSpec::Whole };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| s.parse::<u64>().ok();
    let (start, end) = match (a.is_empty(), b.is_empty()) {
        // `bytes=-N`: the last N bytes.
        (true, false) => match num(b) {
            Some(0) => return RangeSpec::Unsatisfiable,
            Some(n) => (len.saturating_sub(n), len.saturating_sub(1)),
            None => return RangeSpec::Whole,
        },
        (false, true) => match num(a) {
            Some(s) => (s, len.saturating_sub(1)),
            None => return RangeSpec::Whole,
        },
        (false, false) => match (num(a), num(b)) {
            (Some(s), Some(e)) if s <= e => (s, e.min(len.saturating_sub(1))),
            _ => return RangeSpec::Whole,
        },
        (true, true) => return RangeSpec::Whole,
    };
    if len == 0 || start >= len {
        return RangeSpec::Unsatisfiable;
    }
    RangeSpec::Bytes(start, end)
}

/// The request path as a relative path inside the release, or 400 when it tries to leave it.
fn request_path(raw: &str) -> Result<Cow<'_, str>, EdgeError> {
    // The usual path needs no decoding and no rewriting: plain segments of unreserved characters.
    if let Some(rest) = raw.strip_prefix('/') {
        let unreserved = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/');
        if rest.is_empty()
            || (rest.bytes().all(unreserved) && rest.split('/').all(|s| !matches!(s, "" | "." | "..")))
        {
            return Ok(Cow::Borrowed(rest));
        }
    }
    let decoded: Vec<u8> = percent_encoding::percent_decode_str(raw).collect();
    let decoded = String::from_utf8(decoded).map_err(|_| EdgeError::BadRequest)?;
    if decoded.contains('\0') || decoded.contains('\\') {
        return Err(EdgeError::BadRequest);
    }
    let mut out = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => return Err(EdgeError::BadRequest),
            s => out.push(s),
        }
    }
    let rel = out.join("/");
    // Belt and braces: whatever the segments were, the result must be plain names only.
    if Path::new(&rel).components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(EdgeError::BadRequest);
    }
    Ok(Cow::Owned(rel))
}

fn content_type(path: &Path) -> &'static str {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" | "map" => "application/json",
        "webmanifest" => "application/manifest+json",
        "txt" => "text/plain; charset=utf-8",
        "md" => "text/markdown; charset=utf-8",
        "csv" => "text/csv; charset=utf-8",
        "xml" => "application/xml",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "ico" => "image/x-icon",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "otf" => "font/otf",
        "wasm" => "application/wasm",
        "pdf" => "application/pdf",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "mp3" => "audio/mpeg",
        "wav" => "audio/wav",
        _ => "application/octet-stream",
    }
}

/// A strong validator: the first 16 bytes of a digest, quoted hex.
fn strong_etag(digest: &ring::digest::Digest) -> HeaderValue {
    let mut text = [b'"'; 34];
    // 16 bytes always fit 32 digits.
    let _ = hex::encode_to_slice(&digest.as_ref()[..16], &mut text[1..33]);
    HeaderValue::from_bytes(&text).unwrap_or(HeaderValue::from_static("\"\""))
}

/// `name` as a `HeaderName` when Pingora capitalises it (`Content-Type`, …), else as lower-case text: a
/// `HeaderName` outside Pingora's short list is copied out to text and parsed back.
fn set(
    resp: &mut ResponseHeader,
    name: impl IntoCaseHeaderName,
    value: impl TryInto<HeaderValue>,
) -> Result<(), EdgeError> {
    resp.insert_header(name, value).map_err(|_| EdgeError::BadRequest)
}

/// A response head without Pingora's record of each name's case, which would double every header set:
/// names leave in lower case but for those Pingora capitalises, as they would over HTTP/2 anyway.
fn response(status: u16, headers: usize) -> Result<ResponseHeader, EdgeError> {
    ResponseHeader::build_no_case(status, Some(headers)).map_err(|_| EdgeError::BadRequest)
}

/// A bodiless answer (405, 416) carrying the tenant's CSP.
fn simple(
    status: u16,
    frame_ancestors: &HeaderValue,
    extra: Option<(&'static str, &str)>,
) -> Result<ResponseHeader, EdgeError> {
    let mut resp = response(status, 4)?;
    resp.insert_header(header::CONTENT_LENGTH, "0").map_err(|_| EdgeError::BadRequest)?;
    headers::apply_frame_policy(&mut resp, frame_ancestors).map_err(|_| EdgeError::BadRequest)?;
    if let Some((name, value)) = extra {
        resp.insert_header(name, value).map_err(|_| EdgeError::BadRequest)?;
    }
    Ok(resp)
}

async fn write(session: &mut Session, resp: ResponseHeader, body: Option<Bytes>) -> Result<(), EdgeError> {
    let result = async {
        match body {
            Some(b) => {
                session.write_response_header(Box::new(resp), false).await?;
                session.write_response_body(Some(b), true).await
            }
            None => session.write_response_header(Box::new(resp), true).await,
        }
    };
    if let Err(e) = result.await {
        tracing::debug!(error = %e, "writing a static response");
    }
    Ok(())
}

/// Writes bytes `start..end` of the file (nothing for `HEAD`).
async fn write_file(
    session: &mut Session,
    resp: ResponseHeader,
    file: &File,
    start: u64,
    end: u64,
    head: bool,
) -> Result<(), EdgeError> {
    if head || start >= end {
        return write(session, resp, None).await;
    }
    if let Some(body) = &file.body {
        let (s, e) = (usize::try_from(start).unwrap_or(0), usize::try_from(end).unwrap_or(0));
        return write(session, resp, Some(body.slice(s..e.min(body.len())))).await;
    }
    let result = async {
        session.write_response_header(Box::new(resp), false).await?;
        let mut f = tokio::fs::File::open(&file.path).await.map_err(io_err)?;
        f.seek(SeekFrom::Start(start)).await.map_err(io_err)?;
        let mut left = end - start;
        while left > 0 {
            let mut buf = vec![0u8; CHUNK.min(usize::try_from(left).unwrap_or(CHUNK))];
            let n = f.read(&mut buf).await.map_err(io_err)?;
            if n == 0 {
                break;
            }
            buf.truncate(n);
            left -= n as u64;
            session.write_response_body(Some(Bytes::from(buf)), left == 0).await?;
        }
        Ok::<(), Box<pingora::Error>>(())
    };
    if let Err(e) = result.await {
        tracing::debug!(error = %e, "streaming a static file");
    }
    Ok(())
}

fn io_err(e: std::io::Error) -> Box<pingora::Error> {
    pingora::Error::because(pingora::ErrorType::ReadError, "reading a release file", e)
}

/// Unpacks a verified archive (read from disk as it is gunzipped) beside the others and renames it into
/// place, so a release directory either is complete or does not exist; the archive is removed then.
fn unpack(root: &Path, sha256: &str, archive_path: &Path) -> Result<(), ReleaseError> {
    std::fs::create_dir_all(root)?;
    let tmp = root.join(format!(".{sha256}.{}.tmp", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    let result = (|| {
        let file = std::io::BufReader::new(std::fs::File::open(archive_path)?);
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
        for entry in archive.entries()? {
            let mut entry = entry?;
            let kind = entry.header().entry_type();
            if kind.is_pax_global_extensions() {
                continue;
            }
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let plain =
                Path::new(&name).components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
            let servable = !name.contains('\\') && !name.contains('\0');
            if !plain || !servable || !(kind.is_file() || kind.is_dir() || kind == tar::EntryType::Continuous)
            {
                return Err(ReleaseError::Entry(name));
            }
            // `unpack_in` refuses anything that would land outside `tmp`, once more.
            if !entry.unpack_in(&tmp)? {
                return Err(ReleaseError::Entry(name));
            }
        }
        Ok(())
    })();
    match result {
        Ok(()) => {
            let dir = root.join(sha256);
            if dir.exists() {
                // Another process won the race with the same content.
                std::fs::remove_dir_all(&tmp)?;
            } else {
                std::fs::rename(&tmp, dir)?;
            }
            // Unpacked: the directory is what is served, and the archive can be fetched again.
            let _ = std::fs::remove_file(archive_path);
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_spelling_of_a_parent_directory_is_refused() {
        for p in [
            "/../etc/passwd",
            "/%2e%2e/x",
            "/a/%2E%2E%2Fb",
            "/a%2f..%2f..%2fx",
            "/..%5cx",
            "/a\\b",
            "/x%00.html",
            "/%c0%ae%c0%ae/x",
        ] {
            assert_eq!(request_path(p), Err(EdgeError::BadRequest), "{p}");
        }
        assert_eq!(request_path("/").unwrap(), "");
        assert_eq!(request_path("/docs/./a%20b.html").unwrap(), "docs/a b.html");
        assert_eq!(request_path("//a//b/").unwrap(), "a/b");
    }

    #[test]
    fn a_plain_path_is_taken_as_it_is_and_anything_else_is_decoded() {
        for p in ["/index.html", "/assets/app-3F2a_x.js", "/a/b/c~d", "/.well-known/x", "/a/..b/c"] {
            let got = request_path(p).unwrap();
            assert!(matches!(got, Cow::Borrowed(_)), "{p}");
            assert_eq!(got, &p[1..]);
        }
        for (p, want) in [("/a/./b", "a/b"), ("/a/", "a"), ("/a%2Db", "a-b"), ("/a b", "a b"), ("/.", "")] {
            assert_eq!(request_path(p).unwrap(), want, "{p}");
        }
        for p in ["/a/../b", "/..", "/a/.."] {
            assert_eq!(request_path(p), Err(EdgeError::BadRequest), "{p}");
        }
    }

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(parse_range("bytes=0-9", 100), RangeSpec::Bytes(0, 9));
        assert_eq!(parse_range("bytes=90-", 100), RangeSpec::Bytes(90, 99));
        assert_eq!(parse_range("bytes=-10", 100), RangeSpec::Bytes(90, 99));
        assert_eq!(parse_range("bytes=50-500", 100), RangeSpec::Bytes(50, 99));
        assert_eq!(parse_range("bytes=100-", 100), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), RangeSpec::Whole);
        assert_eq!(parse_range("items=0-1", 100), RangeSpec::Whole);
        assert_eq!(parse_range("bytes=5-1", 100), RangeSpec::Whole);
    }

    #[test]
    fn content_types_come_from_the_extension() {
        assert_eq!(content_type(Path::new("a/index.HTML")), "text/html; charset=utf-8");
        assert_eq!(content_type(Path::new("app.js")), "text/javascript; charset=utf-8");
        assert_eq!(content_type(Path::new("blob")), "application/octet-stream");
    }
}
