//! The request pipeline, SPEC §4 top to bottom: route → rate-limit → authenticate → wake → proxy →
//! respond. Each step is one call into its module; this file only sequences them.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use portico_wire::{SandboxState, Visibility, WakePolicy};

use crate::auth::{self, Grant};
use crate::error::EdgeError;
use crate::headers;
use crate::metrics;
use crate::pages::{self, PageContext};
use crate::route::{self, Route};
use crate::state::{EdgeState, Snapshot};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// WebSockets (hot reload) may sit idle this long (SPEC §4 step 5).
const WEBSOCKET_IDLE: Duration = Duration::from_secs(600);

pub struct Edge {
    pub state: Arc<EdgeState>,
    /// `X-Forwarded-Proto` for requests on this listener.
    pub scheme: &'static str,
    /// How long an upstream may take to answer (a dev server compiling on first request can be slow).
    pub upstream_timeout: Duration,
}

/// What one request carries from filter to filter.
pub struct Ctx {
    snap: Arc<Snapshot>,
    route: Option<Route>,
    grant: Option<Grant>,
    /// Set when the edge answered itself.
    failure: Option<EdgeError>,
    upstream_started: Option<Instant>,
}

impl Edge {
    /// Steps 1–4. `Err` is the answer the edge gives instead of proxying.
    async fn admit(&self, session: &Session, ctx: &mut Ctx) -> Result<(), EdgeError> {
        let req = session.req_header();
        // 1. Route.
        let route = route::resolve(&ctx.snap, request_host(req).ok_or(EdgeError::NotFound)?)?;
        ctx.route = Some(route.clone());

        // 3. Authenticate private routes.
        if route.visibility == Visibility::Private {
            ctx.grant = Some(auth::authenticate(&route, auth::candidates(req))?);
        }

        // 4. Wake.
        match (route.sandbox.state, route.sandbox.wake_policy) {
            (SandboxState::Running, _) => Ok(()),
            (_, WakePolicy::Off) => Err(EdgeError::SandboxHibernated),
            // Waking on request arrives with the wake step; until then a sleeping sandbox is unavailable.
            (_, WakePolicy::OnRequest) => Err(EdgeError::SandboxHibernated),
        }
    }

    /// Writes the edge's own answer for `err`, branded for the route's tenant when there is one.
    async fn respond(&self, session: &mut Session, ctx: &mut Ctx, err: EdgeError) -> Result<()> {
        let tenant = ctx.route.as_ref().map(|r| r.tenant.clone());
        let page = PageContext {
            branding: tenant.as_ref().and_then(|t| t.tenant.branding.as_ref()),
            sandbox: ctx.route.as_ref().map(|r| r.sandbox.id.as_str()),
            port: ctx.route.as_ref().map(|r| r.port),
        };
        let frame_ancestors =
            tenant.as_ref().map_or(ctx.snap.default_frame_ancestors.as_str(), |t| t.frame_ancestors.as_str());
        let html = pages::wants_html(session.req_header());
        let (header, body) = pages::render(&err, page, frame_ancestors, html)?;
        ctx.failure = Some(err);
        session.set_keepalive(None);
        session.write_response_header(Box::new(header), false).await?;
        session.write_response_body(Some(body), true).await?;
        Ok(())
    }
}

#[async_trait]
impl ProxyHttp for Edge {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx { snap: self.state.load(), route: None, grant: None, failure: None, upstream_started: None }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        match self.admit(session, ctx).await {
            Ok(()) => {
                if session.is_upgrade_req() {
                    session.set_read_timeout(Some(WEBSOCKET_IDLE));
                }
                Ok(false)
            }
            Err(err) => {
                self.respond(session, ctx, err).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let route = ctx.route.as_ref().ok_or_else(|| Error::explain(InternalError, "no route"))?;
        let mut peer = HttpPeer::new((route.sandbox.address.as_str(), route.port), false, String::new());
        peer.options.connection_timeout = Some(CONNECT_TIMEOUT);
        let idle = if session.is_upgrade_req() { WEBSOCKET_IDLE } else { self.upstream_timeout };
        peer.options.read_timeout = Some(idle);
        peer.options.write_timeout = Some(idle);
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        auth::strip(req, ctx.grant.as_ref())?;
        let client_ip = client_ip(session).map(|ip| ip.to_string()).unwrap_or_default();
        let host = request_host(session.req_header()).unwrap_or_default().to_string();
        headers::add_forwarded(req, &client_ip, self.scheme, &host)?;
        ctx.upstream_started = Some(Instant::now());
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(started) = ctx.upstream_started {
            metrics::UPSTREAM_SECONDS.observe(started.elapsed().as_secs_f64());
        }
        if let Some(route) = &ctx.route {
            headers::apply_frame_policy(resp, &route.tenant.frame_ancestors)?;
        }
        if let Some(cookie) = ctx.grant.as_ref().and_then(auth::session_cookie) {
            resp.append_header(http::header::SET_COOKIE, cookie)?;
        }
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let err = match &ctx.route {
            Some(route) if e.esource() == &ErrorSource::Upstream || is_connect_error(e) => {
                EdgeError::from_upstream(e, route.port)
            }
            _ => match e.esource() {
                // The client went away or sent garbage: nothing useful to answer.
                ErrorSource::Downstream => {
                    return FailToProxy { error_code: 0, can_reuse_downstream: false };
                }
                _ => EdgeError::BadRequest,
            },
        };
        let code = err.status();
        if session.response_written().is_none() {
            if let Err(write_err) = self.respond(session, ctx, err).await {
                tracing::debug!(error = %write_err, "writing error page");
            }
        }
        FailToProxy { error_code: code, can_reuse_downstream: false }
    }

    /// Pingora's error log line for this request: no query string, since it may carry a credential.
    fn request_summary(&self, session: &Session, _ctx: &Ctx) -> String {
        let req = session.req_header();
        format!("{} {}, Host: {}", req.method, req.uri.path(), request_host(req).unwrap_or("-"))
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let (tenant, kind) = match &ctx.route {
            Some(r) => (r.tenant.tenant.id.as_str(), r.kind.label()),
            None => ("none", "none"),
        };
        // A status code is a bounded label (three digits); 0 means no response was written.
        let code = http::StatusCode::from_u16(status).ok();
        let status_label = code.as_ref().map_or("0", |c| c.as_str());
        metrics::REQUESTS.with_label_values(&[tenant, kind, status_label]).inc();
        tracing::info!(
            target: "access",
            tenant,
            route = kind,
            status,
            error = ctx.failure.as_ref().map(|e| e.code()),
            upstream_ms = ctx.upstream_started.map(|s| s.elapsed().as_millis() as u64),
            bytes = session.body_bytes_sent(),
            method = %session.req_header().method,
            path = session.req_header().uri.path(),
        );
    }
}

/// The request's host: the `Host` header (HTTP/1.1) or the URI authority (HTTP/2).
fn request_host(req: &RequestHeader) -> Option<&str> {
    req.headers.get(http::header::HOST).and_then(|v| v.to_str().ok()).or_else(|| req.uri.host())
}

fn client_ip(session: &Session) -> Option<IpAddr> {
    session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip())
}

fn is_connect_error(e: &Error) -> bool {
    matches!(e.etype(), ConnectRefused | ConnectTimedout | ConnectNoRoute | ConnectError)
}
