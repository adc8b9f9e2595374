//! The smallest useful Pingora proxy, kept as the baseline `benches/proxies.sh` compares Portico with:
//! one `ProxyHttp`, one fixed peer, one added response header. With `file=PATH` instead of a peer it
//! answers every request with that file's bytes, held in memory, from `request_filter`: the floor for
//! `benches/static_vs_nginx.sh` (what any Pingora service pays to answer a request itself).
//!
//!   minimal-pingora LISTEN UPSTREAM [THREADS]     e.g. minimal-pingora 127.0.0.1:8081 127.0.0.2:80 1
//!   minimal-pingora LISTEN file=PATH [THREADS]
//!
//! `MINIMAL_EXTRA_NS=N` makes the proxy spin N ns of its own CPU on every proxied request: a calibration,
//! not a proxy. Beside the plain one it shows what N ns more work per request measures as on this host,
//! which is not N: a proxy that saturates its core leaves the load generator and the origin idle more
//! often, and each of their wake-ups costs the proxy's `send` more (on one host here 2 µs spent measured
//! as 4–7 µs). `benches/proxies.sh` runs it as `minimal-pingora+<N>ns`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::{Opt, ServerConf};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Minimal {
    upstream: SocketAddr,
    /// `MINIMAL_EXTRA_NS`: zero unless calibrating.
    extra: Duration,
}

struct StaticFile {
    body: Bytes,
}

#[async_trait]
impl ProxyHttp for StaticFile {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<bool> {
        let mut resp = ResponseHeader::build(200, Some(3))?;
        resp.insert_header("content-type", "text/html")?;
        resp.insert_header("content-length", self.body.len().to_string())?;
        resp.insert_header("x-proxy", "minimal-pingora")?;
        session.write_response_header(Box::new(resp), false).await?;
        session.write_response_body(Some(self.body.clone()), true).await?;
        Ok(true)
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Error::e_explain(ErrorType::InternalError, "a static file has no peer")
    }
}

#[async_trait]
impl ProxyHttp for Minimal {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        _ctx: &mut (),
    ) -> Result<()> {
        if !self.extra.is_zero() {
            spin(self.extra);
        }
        resp.insert_header("x-proxy", "minimal-pingora")
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(listen), Some(target)) = (args.first(), args.get(1)) else {
        eprintln!("usage: minimal-pingora LISTEN UPSTREAM|file=PATH [THREADS]");
        return ExitCode::FAILURE;
    };
    let threads = args.get(2).and_then(|t| t.parse().ok()).unwrap_or(1);
    // Stopped with SIGINT by the bench; a short grace period in case it is stopped with SIGTERM.
    let conf = ServerConf {
        threads,
        grace_period_seconds: Some(1),
        graceful_shutdown_timeout_seconds: Some(1),
        // The edge's runtime settings (`edge/src/lib.rs`), so that a comparison measures the edge's own work.
        work_stealing: false,
        fast_timeout_to_tokio_threshold_seconds: Some(0),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    if let Some(path) = target.strip_prefix("file=") {
        let body = match std::fs::read(path) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                eprintln!("{path}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let mut service = pingora::proxy::http_proxy_service(&server.configuration, StaticFile { body });
        service.add_listener(listener(listen));
        server.add_service(service);
    } else {
        let Ok(upstream) = target.parse() else {
            eprintln!("{target}: not an address (or file=PATH)");
            return ExitCode::FAILURE;
        };
        let extra = match std::env::var("MINIMAL_EXTRA_NS") {
            Err(_) => Duration::ZERO,
            Ok(ns) => match ns.parse() {
                Ok(ns) => Duration::from_nanos(ns),
                Err(e) => {
                    eprintln!("MINIMAL_EXTRA_NS={ns}: {e}");
                    return ExitCode::FAILURE;
                }
            },
        };
        let minimal = Minimal { upstream, extra };
        let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, minimal);
        proxy.add_listener(listener(listen));
        server.add_service(proxy);
    }
    server.run_forever()
}

/// Busy for `extra` on this thread's CPU: work, as far as the machine can tell.
fn spin(extra: Duration) {
    let start = Instant::now();
    while start.elapsed() < extra {
        std::hint::spin_loop();
    }
}

/// The edge's listener settings (`edge/src/lib.rs`): a write buffer that holds a response head and a
/// 16 KiB body, so the two leave in one write. Same settings, so the comparison measures the edge's work.
fn listener(listen: &str) -> ListenerConfig {
    ListenerConfig::tcp(listen).l4_buffer(L4BufferSettings::default().write(17 * 1024))
}
