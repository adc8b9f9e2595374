//! The request pipeline, SPEC §4 top to bottom: route → rate-limit → authenticate → wake → proxy →
//! respond. Each step is one call into its module; this file only sequences them.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use portico_wire::Visibility;

use crate::accesslog::{self, AccessLog};
use crate::acme;
use crate::activity::{Activity, OpenGuard};
use crate::auth::{self, Grant};
use crate::client::TrustedProxies;
use crate::deploy;
use crate::error::EdgeError;
use crate::headers;
use crate::lookup::LookupError;
use crate::metrics;
use crate::pages::{self, PageContext};
use crate::ratelimit::Limiter;
use crate::request_id::{self, RequestId};
use crate::resolve::Resolver;
use crate::route::{self, Route, Target};
use crate::state::{EdgeState, Snapshot};
use crate::statics::Releases;
use crate::tls::HttpsRedirect;
use crate::upstream;
use crate::usage::Usage;
use crate::wake::{self, Waker};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// WebSockets (hot reload) may sit idle this long (SPEC §4 step 5).
const WEBSOCKET_IDLE: Duration = Duration::from_secs(600);

pub struct Edge {
    pub state: Arc<EdgeState>,
    /// `X-Forwarded-Proto` for requests on this listener.
    pub scheme: &'static str,
    /// How long an upstream may take to answer (a dev server compiling on first request can be slow).
    pub upstream_timeout: Duration,
    /// Step 4: one wake per hibernated sandbox however many requests wait.
    pub waker: Arc<Waker>,
    /// Per-sandbox last request time, reported to control in batches.
    pub activity: Arc<Activity>,
    /// Who the client is (`--trusted-proxy`).
    pub clients: TrustedProxies,
    pub limiter: Arc<Limiter>,
    pub auth: Arc<auth::Authenticator>,
    /// `--redirect-https`, on the plain-HTTP listener only.
    pub https_redirect: Option<Arc<HttpsRedirect>>,
    /// Balancers of active runtime versions of deployments.
    pub deployments: Arc<deploy::Registry>,
    /// Static releases this edge serves itself.
    pub releases: Arc<Releases>,
    /// Requests and bytes per sandbox/deployment, reported to control.
    pub usage: Arc<Usage>,
    /// Step 5: sandbox host names, resolved asynchronously and cached, checked against the policy.
    pub dns: Arc<Resolver>,
    /// One line per request, written off the request path.
    pub access_log: Arc<AccessLog>,
}

/// How steps 1–4 let a request through.
enum Admitted {
    /// On to the sandbox or deployment.
    Proxy,
    /// A navigation that brought its credential in the query: sent to the same URL without it, with the
    /// session cookie, so the token never stays in the address bar or reaches the sandbox in a `Referer`.
    Redirect { location: String, cookie: String },
}

/// What one request carries from filter to filter.
pub struct Ctx {
    snap: Arc<Snapshot>,
    /// When the request's header had arrived: the access log's duration (no clock read without one).
    started: Option<Instant>,
    route: Option<Route>,
    client_ip: Option<IpAddr>,
    grant: Option<Grant>,
    /// Set when the edge answered itself.
    failure: Option<EdgeError>,
    upstream_started: Option<Instant>,
    /// Where a sandbox this request woke now runs, before the feed brings it.
    woken_address: Option<Arc<str>>,
    /// Keeps the sandbox active while this request's WebSocket is open.
    websocket: Option<OpenGuard>,
    /// Deployment instances this request tried.
    attempts: deploy::Attempts,
    /// `X-Request-Id`: in the access log, sent upstream, on every error the edge answers.
    request_id: RequestId,
}

impl Edge {
    /// Answers the edge gives before routing, for any host: ACME challenges, then (plain HTTP with
    /// `--redirect-https`) the redirect of a host that has a certificate. `true`: answered.
    async fn before_routing(&self, session: &mut Session, ctx: &Ctx) -> Result<bool> {
        let req = session.req_header();
        if let Some(answer) = acme::answer(&ctx.snap, req) {
            let (header, body) = answer?;
            session.write_response_header(Box::new(header), false).await?;
            session.write_response_body(Some(body), true).await?;
            return Ok(true);
        }
        let redirect = self.https_redirect.as_ref().and_then(|r| r.redirect(request_host(req)?, req));
        if let Some(header) = redirect {
            session.write_response_header(Box::new(header?), true).await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Steps 1–4. `Err` is the answer the edge gives instead of proxying.
    async fn admit(&self, session: &Session, ctx: &mut Ctx) -> Result<Admitted, EdgeError> {
        let req = session.req_header();
        ctx.client_ip = self.clients.client_ip(session);
        // 1. Route. HTTP/1.1 makes `Host` mandatory (RFC 9112 §3.2): without it the request is malformed.
        let host = request_host(req).ok_or(match req.version {
            http::Version::HTTP_11 => EdgeError::BadRequest,
            _ => EdgeError::NotFound,
        })?;
        if !is_proxyable_target(req.raw_path()) {
            return Err(EdgeError::BadRequest);
        }
        // The route lives in `ctx` (the later filters and the log read it); the steps below borrow it there.
        let route = route::resolve(&ctx.snap, host)?;
        let Ctx { snap, route: routed, client_ip, grant: granted, woken_address, .. } = ctx;
        let route = &*routed.insert(route);
        let client_ip = *client_ip;

        // 2. Rate-limit: a locked-out IP is refused before its credential is looked at. A public route
        // reads no credential at all.
        let private = route.visibility == Visibility::Private;
        let offered = if private { auth::candidates(req) } else { Vec::new() };
        self.limiter.admit(route, client_ip, !offered.is_empty())?;

        // 3. Authenticate private routes; every credential refused counts toward the IP's lock-out, and
        // the request budget is the accepted credential's.
        if private && !route.sandbox().is_some_and(|s| auth::preflight_allowed(req, s)) {
            let tried = offered.len();
            let grant = self.auth.authenticate(snap, route, offered).await;
            self.limiter.record_auth(route, client_ip, auth::failed_guesses(&grant, tried));
            let grant = grant?;
            self.limiter.admit_credential(route, &grant.credential.token)?;
            if auth::wants_clean_url(req, &grant) {
                let ours = auth::Ours::new(Some(&grant), Some(route));
                let location = ours.clean_location(req);
                let cookie = auth::session_cookie(&grant).unwrap_or_default();
                return Ok(Admitted::Redirect { location, cookie });
            }
            *granted = Some(grant);
        }

        // 4. Wake a hibernated sandbox: only requests admitted above get here.
        if let Some(sandbox) = route.sandbox() {
            *woken_address = wake::ensure_awake(&self.waker, sandbox).await?;
        }
        Ok(Admitted::Proxy)
    }

    /// Step 5's request: the client's claims about who it is give way to the edge's `X-Forwarded-*`, and
    /// every credential goes. Edited in the client's request itself, before Pingora copies it for the
    /// upstream: the edit leaves the headers one map (see [`headers::forward`]), so the copy made for each
    /// attempt has no second map to clone and drop.
    fn edit_for_upstream(&self, session: &mut Session, ctx: &Ctx) -> Result<()> {
        let req = session.req_header_mut();
        let forwarded = headers::Forwarded {
            client_ip: ctx.client_ip,
            proto: self.scheme,
            host: request_host_value(req),
            request_id: ctx.request_id.as_str(),
        };
        let ours = auth::Ours::new(ctx.grant.as_ref(), ctx.route.as_ref());
        headers::forward(req, forwarded, |headers| ours.strip_headers(headers))?;
        ours.strip_query(req)
    }

    /// A submitted share password: checked at control; when right, a session cookie and a redirect to
    /// the same page without the token.
    async fn share_password(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        share_id: &str,
    ) -> Result<(), EdgeError> {
        let again = |wrong| EdgeError::SharePassword { share_id: share_id.to_string(), wrong };
        let body = read_form(session).await.ok_or_else(|| again(true))?;
        let now = auth::now_secs();
        let password = self.auth.sessions.submitted_password(share_id, &body, now)?;
        match self.auth.lookup.check_password(share_id, &password, ctx.client_ip).await {
            Ok(true) => {}
            Ok(false) => {
                if let Some(route) = &ctx.route {
                    self.limiter.record_auth(route, ctx.client_ip, 1);
                }
                return Err(again(true));
            }
            // Too many guesses on this share or from this IP, or control's hashing is saturated.
            Err(LookupError::Refused { retry_after_secs }) => {
                return Err(EdgeError::RateLimited { retry_after_secs });
            }
            Err(e) => {
                tracing::warn!(error = %e, "checking a share password");
                return Err(again(false));
            }
        }
        let exp = ctx
            .snap
            .share_by_id(share_id)
            .and_then(|s| s.expires_at)
            .unwrap_or(u64::MAX)
            .min(now + 24 * 3600);
        let cookie = auth::cookie_for(&self.auth.sessions.issue(share_id, exp), exp - now);
        let location = auth::Ours::new(None, ctx.route.as_ref()).clean_location(session.req_header());
        let frame_ancestors = ctx.route.as_ref().map_or("", |r| r.tenant.frame_ancestors()).to_string();
        let write = async {
            let header = pages::redirect(&location, &cookie, &frame_ancestors)?;
            session.write_response_header(Box::new(header), true).await
        };
        if let Err(e) = write.await {
            tracing::debug!(error = %e, "writing the share password redirect");
        }
        Ok(())
    }

    /// Writes the edge's own answer for `err`, branded for the route's tenant when there is one.
    async fn respond(&self, session: &mut Session, ctx: &mut Ctx, err: EdgeError) -> Result<()> {
        let tenant = ctx.route.as_ref().map(|r| r.tenant.clone());
        let csrf = match &err {
            EdgeError::SharePassword { share_id, .. } => {
                Some(self.auth.sessions.csrf(share_id, auth::now_secs()))
            }
            _ => None,
        };
        let page = PageContext {
            branding: tenant.as_ref().and_then(|t| t.tenant.branding.as_ref()),
            sandbox: ctx.route.as_ref().and_then(|r| r.sandbox()).map(|s| s.id.as_str()),
            port: ctx.route.as_ref().and_then(|r| r.port()),
            csrf: csrf.as_deref(),
            request_id: Some(ctx.request_id.as_str()),
        };
        let frame_ancestors =
            tenant.as_ref().map_or(ctx.snap.default_frame_ancestors.as_str(), |t| t.frame_ancestors());
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
        crate::timers::keep_wheel_ticking();
        Ctx {
            snap: self.state.load(),
            started: self.access_log.enabled().then(Instant::now),
            route: None,
            client_ip: None,
            grant: None,
            failure: None,
            upstream_started: None,
            woken_address: None,
            websocket: None,
            attempts: deploy::Attempts::default(),
            request_id: request_id::generate(),
        }
    }

    /// Before anything else: a trusted proxy's `X-Request-Id` replaces the generated one.
    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        if let Some(id) = request_id::from_trusted(session.req_header(), self.clients.peer_trusted(session)) {
            ctx.request_id = id;
        }
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        if self.before_routing(session, ctx).await? {
            return Ok(true);
        }
        match self.admit(session, ctx).await {
            Ok(Admitted::Redirect { location, cookie }) => {
                let frame_ancestors = ctx.route.as_ref().map_or("", |r| r.tenant.frame_ancestors());
                let header = pages::redirect(&location, &cookie, frame_ancestors)?;
                session.write_response_header(Box::new(header), true).await?;
                Ok(true)
            }
            Ok(Admitted::Proxy) => {
                // 5. A static release is answered here, by the edge itself.
                let release =
                    ctx.route.as_ref().and_then(|r| Some((r.release()?, &r.tenant.frame_ancestors_header)));
                if let Some((release, frame_ancestors)) = release {
                    if let Err(err) = self.releases.serve(session, release, frame_ancestors).await {
                        self.respond(session, ctx, err).await?;
                    }
                    return Ok(true);
                }
                if let Err(e) = self.edit_for_upstream(session, ctx) {
                    tracing::debug!(error = %e, "editing the request for the upstream");
                    self.respond(session, ctx, EdgeError::BadRequest).await?;
                    return Ok(true);
                }
                if session.is_upgrade_req() {
                    session.set_read_timeout(Some(WEBSOCKET_IDLE));
                    ctx.websocket =
                        ctx.route.as_ref().and_then(|r| r.sandbox()).map(|s| self.activity.open(&s.id));
                }
                Ok(false)
            }
            Err(EdgeError::SharePassword { share_id, .. }) if is_form_post(session.req_header()) => {
                if let Err(err) = self.share_password(session, ctx, &share_id).await {
                    self.respond(session, ctx, err).await?;
                }
                Ok(true)
            }
            Err(err) => {
                self.respond(session, ctx, err).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let route = ctx.route.as_ref().ok_or_else(|| Error::explain(InternalError, "no route"))?;
        let mut peer = match &route.target {
            Target::Sandbox { sandbox, port } => {
                let address = ctx.woken_address.as_deref().unwrap_or(sandbox.address.as_str());
                // Only inside the policy (a tenant may have been narrowed after the sandbox was made), and
                // a host name only when every address it resolves to is.
                let allowed = |ip| upstream::allowed(ip, ctx.snap.upstream_allow(), &route.tenant.tenant);
                let ip = self
                    .dns
                    .dial_ip(address, allowed)
                    .await
                    .map_err(|refused| Error::explain(ConnectNoRoute, refused.to_string()))?;
                HttpPeer::new(std::net::SocketAddr::new(ip, *port), false, String::new())
            }
            // Round-robin over the active version's healthy instances, skipping one that refused.
            Target::Deployment(d) => {
                let addr = self
                    .deployments
                    .pick(d, &ctx.attempts.tried)
                    .map_err(|_| Error::explain(ConnectNoRoute, "no healthy instance"))?;
                ctx.attempts.tried.push(addr);
                if !upstream::allowed(addr.ip(), ctx.snap.upstream_allow(), &route.tenant.tenant) {
                    return Err(Error::explain(ConnectNoRoute, "instance outside the upstream policy"));
                }
                HttpPeer::new(addr, false, String::new())
            }
        };
        peer.options.connection_timeout = Some(CONNECT_TIMEOUT);
        let idle = if session.is_upgrade_req() { WEBSOCKET_IDLE } else { self.upstream_timeout };
        peer.options.read_timeout = Some(idle);
        peer.options.write_timeout = Some(idle);
        Ok(Box::new(peer))
    }

    /// The request was made what the sandbox gets before Pingora copied it ([`Edge::edit_for_upstream`]).
    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        _req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
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
            headers::apply_frame_policy(resp, &route.tenant.frame_ancestors_header)?;
            headers::sanitize_set_cookies(resp, auth::SESSION_COOKIE)?;
        }
        if let Some(cookie) = ctx.grant.as_ref().and_then(auth::session_cookie) {
            resp.append_header(http::header::SET_COOKIE, cookie)?;
        }
        Ok(())
    }

    /// A deployment instance that refused the connection: an idempotent request tries one other instance.
    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if matches!(ctx.route.as_ref().map(|r| &r.target), Some(Target::Deployment(_))) {
            let again = ctx.attempts.tried.len() == 1 && session.req_header().method.is_idempotent();
            e.set_retry(again);
        }
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let err = match &ctx.route {
            Some(route) if e.esource() == &ErrorSource::Upstream || is_connect_error(e) => {
                let port = route.port().or_else(|| ctx.attempts.tried.last().map(|a| a.port())).unwrap_or(0);
                match (EdgeError::from_upstream(e, port), &route.target) {
                    (EdgeError::UpstreamUnreachable { .. }, Target::Deployment(_)) => {
                        EdgeError::AppUnavailable
                    }
                    (err, _) => err,
                }
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
        let kind = match &ctx.route {
            Some(r) => {
                r.tenant.metrics.request(&r.tenant.tenant.id, r.kind.index(), status);
                r.kind.label()
            }
            None => {
                let code = http::StatusCode::from_u16(status).ok();
                metrics::REQUESTS
                    .with_label_values(&["none", "none", metrics::status_label(code.as_ref())])
                    .inc();
                "none"
            }
        };
        let now = SystemTime::now();
        // Only requests that went through to the sandbox keep it awake: refused ones must not.
        if let (Some(sandbox), Some(_)) = (ctx.route.as_ref().and_then(|r| r.sandbox()), ctx.upstream_started)
        {
            self.activity.touch(&sandbox.id, now);
        }
        if let (Some(route), true) = (&ctx.route, status != 0) {
            self.usage.record_route(route, session.body_bytes_sent() as u64, now);
        }
        if self.access_log.enabled() {
            let req = session.req_header();
            self.access_log.send(accesslog::Line {
                time: now,
                client_ip: ctx.client_ip.or_else(|| session.client_addr()?.as_inet().map(|a| a.ip())),
                method: req.method.clone(),
                host: request_host(req).unwrap_or_default().to_string(),
                // Never the query: it may carry a credential.
                path: req.uri.path().to_string(),
                status,
                bytes: session.body_bytes_sent() as u64,
                duration: ctx.started.map_or(Duration::ZERO, |s| s.elapsed()),
                upstream: ctx.upstream_started.map(|s| s.elapsed()),
                tenant: ctx.route.as_ref().map(|r| r.tenant.tenant.id.clone()),
                route: kind,
                error: ctx.failure.as_ref().map(|e| e.code()),
                request_id: Some(ctx.request_id.clone()),
            });
        }
    }
}

/// The request's host: the `Host` header (HTTP/1.1) or the URI authority (HTTP/2).
fn request_host(req: &RequestHeader) -> Option<&str> {
    req.headers.get(http::header::HOST).and_then(|v| v.to_str().ok()).or_else(|| req.uri.host())
}

/// [`request_host`] as a header value: the client's own `Host` value when it is the one routed on (a
/// shared slice of the request, no copy).
fn request_host_value(req: &RequestHeader) -> http::HeaderValue {
    match req.headers.get(http::header::HOST) {
        Some(v) if v.to_str().is_ok() => v.clone(),
        _ => http::HeaderValue::from_str(request_host(req).unwrap_or_default())
            .unwrap_or(http::HeaderValue::from_static("")),
    }
}

/// Origin-form (`/path?query`) or absolute-form (`http://host/path`): the targets a browser sends. Anything
/// else would go upstream verbatim, past the credential stripping that works on the parsed URI.
fn is_proxyable_target(raw: &[u8]) -> bool {
    let absolute =
        |scheme: &[u8]| raw.len() > scheme.len() && raw[..scheme.len()].eq_ignore_ascii_case(scheme);
    raw.starts_with(b"/") || absolute(b"http://") || absolute(b"https://")
}

fn is_form_post(req: &RequestHeader) -> bool {
    req.method == http::Method::POST
        && req
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"))
}

/// A small form body, or `None` when it is larger than a password form can be.
async fn read_form(session: &mut Session) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = session.read_request_body().await.ok()? {
        body.extend_from_slice(&chunk);
        if body.len() > auth::password::MAX_FORM_BYTES {
            return None;
        }
    }
    Some(body)
}

fn is_connect_error(e: &Error) -> bool {
    matches!(e.etype(), ConnectRefused | ConnectTimedout | ConnectNoRoute | ConnectError)
}
