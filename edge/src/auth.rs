//! Step 3: credentials for private routes (SPEC §4 step 3), and removing every credential before the
//! request goes upstream (step 5). A sandbox never sees a credential byte.

mod check;
pub mod password;

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};
use pingora::http::RequestHeader;

pub use check::{now_secs, Authenticator};
use portico_wire::tokens::{PREVIEW_TOKEN_PREFIX, SHARE_TOKEN_PREFIX};

pub const SESSION_COOKIE: &str = "preview_session";
const QUERY_PARAMS: [&str; 2] = ["token", "preview_token"];
const HEADERS: [&str; 3] = ["x-portico-preview-token", "x-oc-preview-token", "x-miosa-preview-token"];
/// A request offering more candidates than this is not worth more hashing.
const MAX_CANDIDATES: usize = 8;

/// Where a credential was found; decides what is stripped and whether a cookie is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Query,
    Header,
    Bearer,
    Cookie,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    pub token: String,
    pub transport: Transport,
}

/// What kind of credential passed, as a bounded metrics label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    PreviewToken,
    Share,
    PreviewAuth,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Self::PreviewToken => "preview_token",
            Self::Share => "share",
            Self::PreviewAuth => "preview_auth",
        }
    }
}

/// A credential that opened the route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub kind: Kind,
    pub credential: Credential,
    /// Seconds the credential stays valid, for the session cookie's Max-Age.
    pub remaining_secs: u64,
}

/// Every credential the request offers, in the SPEC's order: query, headers, bearer, cookie.
pub fn candidates(req: &RequestHeader) -> Vec<Credential> {
    let mut out = Vec::new();
    if let Some(query) = req.uri.query() {
        for (name, value) in query.split('&').filter_map(|p| p.split_once('=')) {
            if QUERY_PARAMS.contains(&name) {
                out.push(Credential { token: decode(value), transport: Transport::Query });
            }
        }
    }
    for name in HEADERS {
        for v in req.headers.get_all(name) {
            if let Ok(v) = v.to_str() {
                out.push(Credential { token: v.trim().to_string(), transport: Transport::Header });
            }
        }
    }
    if let Some(token) = bearer(req) {
        out.push(Credential { token: token.to_string(), transport: Transport::Bearer });
    }
    for value in cookies(req).filter_map(|(n, v)| (n == SESSION_COOKIE).then_some(v)) {
        out.push(Credential { token: decode(value), transport: Transport::Cookie });
    }
    out.retain(|c| !c.token.is_empty());
    out.truncate(MAX_CANDIDATES);
    out
}

/// A CORS preflight carries no credential (browsers never send one); a sandbox that asks for it lets them
/// through while it runs — a preflight must never wake a sandbox.
pub fn preflight_allowed(req: &RequestHeader, sandbox: &portico_wire::Sandbox) -> bool {
    req.method == http::Method::OPTIONS
        && req.headers.contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
        && sandbox.allow_preflight
        && sandbox.state == portico_wire::SandboxState::Running
}

/// The `Set-Cookie` value for a credential that came in the query, so later navigations need no token.
pub fn session_cookie(grant: &Grant) -> Option<String> {
    (grant.credential.transport == Transport::Query)
        .then(|| cookie_for(&grant.credential.token, grant.remaining_secs))
}

/// `preview_session=<value>` as the SPEC has it: host-only, HttpOnly, Secure, SameSite=None, Partitioned.
pub fn cookie_for(value: &str, max_age_secs: u64) -> String {
    format!(
        "{SESSION_COOKIE}={}; Path=/; HttpOnly; Secure; SameSite=None; Partitioned; Max-Age={max_age_secs}",
        utf8_percent_encode(value, COOKIE_VALUE),
    )
}

/// The request's path and query without credential parameters: where to send the browser after a share
/// password, so the token leaves the address bar.
pub fn location_without_credentials(req: &RequestHeader) -> String {
    let path = req.uri.path();
    match req.uri.query().map(without_credential_params) {
        Some(q) if !q.is_empty() => format!("{path}?{q}"),
        _ => path.to_string(),
    }
}

fn without_credential_params(query: &str) -> String {
    query
        .split('&')
        .filter(|p| !QUERY_PARAMS.contains(&p.split_once('=').map_or(*p, |(n, _)| n)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Removes every credential transport from the upstream request. `Authorization` goes when it opened the
/// route or carries one of our token formats: otherwise it belongs to the app.
pub fn strip(req: &mut RequestHeader, grant: Option<&Grant>) -> pingora::Result<()> {
    if let Some(query) = req.uri.query() {
        if without_credential_params(query) != query {
            let uri = location_without_credentials(req).parse::<http::Uri>().map_err(|e| {
                pingora::Error::because(pingora::ErrorType::InvalidHTTPHeader, "rewriting query", e)
            })?;
            req.set_uri(uri);
        }
    }
    for name in HEADERS {
        req.remove_header(name);
    }
    let ours = bearer(req).is_some_and(|t| {
        [PREVIEW_TOKEN_PREFIX, SHARE_TOKEN_PREFIX, password::SESSION_PREFIX].iter().any(|p| t.starts_with(p))
    });
    if ours || grant.is_some_and(|g| g.credential.transport == Transport::Bearer) {
        req.remove_header(&http::header::AUTHORIZATION);
    }
    if cookies(req).any(|(n, _)| n == SESSION_COOKIE) {
        let kept: Vec<String> =
            cookies(req).filter(|(n, _)| *n != SESSION_COOKIE).map(|(n, v)| format!("{n}={v}")).collect();
        req.remove_header(&http::header::COOKIE);
        if !kept.is_empty() {
            req.insert_header(http::header::COOKIE, kept.join("; "))?;
        }
    }
    Ok(())
}

fn bearer(req: &RequestHeader) -> Option<&str> {
    let v = req.headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim())
}

fn cookies(req: &RequestHeader) -> impl Iterator<Item = (&str, &str)> {
    req.headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
}

fn decode(s: &str) -> String {
    percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned()
}

const COOKIE_VALUE: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b',').add(b';').add(b'\\').add(b'%');

#[cfg(test)]
mod tests;
