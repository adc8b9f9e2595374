//! HTTPS at the edge: the listener's TLS settings (SNI → certificate through [`Resolver`], ALPN `h2` and
//! `http/1.1`), the watcher that keeps the resolver's store in line with control's certificates and
//! `--certs-dir`, and the plain-HTTP → HTTPS redirect.
//!
//! The handshake only loads the current store (one atomic pointer read); all parsing happens here in the
//! background, and a new store is built whole and swapped in.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::listeners::tls::TlsSettings;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use portico_certs::dir::DirSource;
use portico_certs::{Certificate, Resolver};
use portico_wire as wire;

use crate::metrics;
use crate::state::EdgeState;

/// How often control's certificates (a pointer comparison) and `--certs-dir` (a `stat` per file) are
/// checked: well inside the 1 s (API) and 2 s (directory) promises.
const POLL: Duration = Duration::from_millis(250);

/// TLS settings for the HTTPS listener: certificates from `resolver`, `h2` preferred over `http/1.1`.
pub fn settings(resolver: Arc<Resolver>) -> pingora::Result<TlsSettings> {
    // With a resolver set, the (empty) file paths are never read.
    let mut settings = TlsSettings::intermediate("", "")?;
    settings.set_cert_resolver(resolver);
    settings.enable_h2();
    Ok(settings)
}

/// Keeps the resolver's store equal to control's certificates plus `--certs-dir`.
pub struct CertWatcher {
    state: Arc<EdgeState>,
    resolver: Arc<Resolver>,
    inner: Mutex<Watched>,
}

#[derive(Default)]
struct Watched {
    dir: Option<DirSource>,
    dir_certs: Vec<Certificate>,
    /// Control's certificates as last compiled: the wire record (compared by pointer) and its parse.
    feed: HashMap<Arc<str>, (Arc<wire::Certificate>, Option<Certificate>)>,
    feed_seen: Option<Arc<HashMap<Arc<str>, Arc<wire::Certificate>>>>,
}

impl CertWatcher {
    pub fn new(state: Arc<EdgeState>, resolver: Arc<Resolver>, certs_dir: Option<PathBuf>) -> Self {
        let watched = Watched { dir: certs_dir.map(DirSource::new), ..Watched::default() };
        Self { state, resolver, inner: Mutex::new(watched) }
    }

    /// Re-reads what changed and swaps in a new store; `false` when nothing changed.
    pub fn refresh(&self) -> bool {
        let Ok(mut w) = self.inner.lock() else { return false };
        let mut changed = false;
        if let Some(dir) = w.dir.as_mut() {
            if let Some((certs, skipped)) = dir.poll() {
                for s in &skipped {
                    tracing::warn!(dir = %dir.path().display(), name = %s.name, reason = %s.reason, "certificate file skipped");
                }
                metrics::CERTIFICATES.with_label_values(&["invalid"]).set(skipped.len() as i64);
                w.dir_certs = certs;
                changed = true;
            }
        }
        let snap = self.state.load();
        if w.feed_seen.as_ref().is_none_or(|seen| !Arc::ptr_eq(seen, &snap.certificates)) {
            let mut next = HashMap::new();
            for (host, record) in snap.certificates.iter() {
                let parsed = match w.feed.get(host) {
                    Some((old, parsed)) if Arc::ptr_eq(old, record) => parsed.clone(),
                    _ => parse_feed(record),
                };
                next.insert(host.clone(), (record.clone(), parsed));
            }
            w.feed = next;
            w.feed_seen = Some(snap.certificates.clone());
            changed = true;
        }
        if changed {
            let all = w.dir_certs.iter().chain(w.feed.values().filter_map(|(_, c)| c.as_ref()));
            let summary = self.resolver.replace(all, now_unix());
            metrics::CERTIFICATES.with_label_values(&["served"]).set(summary.served as i64);
            metrics::CERTIFICATES.with_label_values(&["expired"]).set(summary.expired as i64);
            metrics::set_certificate_soonest_expiry(summary.soonest_not_after);
        }
        changed
    }
}

fn parse_feed(record: &wire::Certificate) -> Option<Certificate> {
    match Certificate::from_pem(record.cert_pem.as_bytes(), record.key_pem.as_bytes()) {
        Ok(c) => Some(c),
        Err(e) => {
            // Control checks certificates before storing them; this is a guard, not a path.
            tracing::error!(hostname = %record.hostname, error = %e, "certificate from control not usable");
            None
        }
    }
}

fn now_unix() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

#[async_trait]
impl BackgroundService for CertWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            self.refresh();
        }
    }
}

/// `--redirect-https`: plain-HTTP requests for a host that has a certificate are sent to HTTPS.
pub struct HttpsRedirect {
    pub resolver: Arc<Resolver>,
    /// The HTTPS listener's port, left out of the URL when it is 443.
    pub port: u16,
}

impl HttpsRedirect {
    /// A 308 to the same URL over HTTPS, or `None` when the host has no certificate (it stays on HTTP).
    pub fn redirect(&self, host: &str, req: &RequestHeader) -> Option<pingora::Result<ResponseHeader>> {
        let name = wire::normalize_host(host)?;
        if !self.resolver.serves(&name) {
            return None;
        }
        let authority = if self.port == 443 { name.to_string() } else { format!("{name}:{}", self.port) };
        let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let location = format!("https://{authority}{path}");
        Some((|| {
            let mut header = ResponseHeader::build(308, Some(3))?;
            header.insert_header(http::header::LOCATION, location)?;
            header.insert_header(http::header::CONTENT_LENGTH, 0)?;
            header.insert_header(http::header::CACHE_CONTROL, "no-store")?;
            Ok(header)
        })())
    }
}
