//! The smallest useful Pingora proxy, kept as the baseline `benches/proxies.sh` compares Portico with:
//! one `ProxyHttp`, one fixed peer, one added response header.
//!
//!   minimal-pingora LISTEN UPSTREAM [THREADS]     e.g. minimal-pingora 127.0.0.1:8081 127.0.0.2:80 1

use std::net::SocketAddr;
use std::process::ExitCode;

use async_trait::async_trait;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::{Opt, ServerConf};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Minimal {
    upstream: SocketAddr,
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
        resp.insert_header("x-proxy", "minimal-pingora")
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(listen), Some(Ok(upstream))) = (args.first(), args.get(1).map(|u| u.parse())) else {
        eprintln!("usage: minimal-pingora LISTEN UPSTREAM [THREADS]");
        return ExitCode::FAILURE;
    };
    let threads = args.get(2).and_then(|t| t.parse().ok()).unwrap_or(1);
    // Stopped with SIGINT by the bench; a short grace period in case it is stopped with SIGTERM.
    let conf = ServerConf {
        threads,
        grace_period_seconds: Some(1),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, Minimal { upstream });
    proxy.add_tcp(listen);
    server.add_service(proxy);
    server.run_forever()
}
