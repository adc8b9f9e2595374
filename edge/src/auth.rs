//! Step 3: credentials for private routes (SPEC §4 step 3), and removing every credential before the
//! request goes upstream (step 5). A sandbox never sees a credential byte.

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};
use pingora::http::RequestHeader;
use ring::digest::{digest, SHA256};
use subtle::ConstantTimeEq;

use crate::error::EdgeError;
use crate::metrics;
use crate::route::Route;

pub const SESSION_COOKIE: &str = "preview_session";
const QUERY_PARAMS: [&str; 2] = ["token", "preview_token"];
const HEADERS: [&str; 3] = ["x-portico-preview-token", "x-oc-preview-token", "x-miosa-preview-token"];
/// A request offering more candidates than this is not worth more hashing.
const MAX_CANDIDATES: usize = 8;
/// How long a session cookie for a credential without expiry lasts.
const SESSION_MAX_AGE_SECS: u64 = 24 * 3600;

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
    PreviewAuth,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
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

/// Checks a private route's credentials: the first one that opens it wins; otherwise the most telling
/// failure (expired over invalid).
pub fn authenticate(route: &Route, offered: Vec<Credential>) -> Result<Grant, EdgeError> {
    let result = first_valid(route, offered);
    let (kind, outcome) = match &result {
        Ok(g) => (g.kind.label(), "ok"),
        Err(e) => ("any", e.code()),
    };
    metrics::TOKEN_CHECKS.with_label_values(&[kind, outcome]).inc();
    result
}

fn first_valid(route: &Route, offered: Vec<Credential>) -> Result<Grant, EdgeError> {
    if offered.is_empty() {
        return Err(EdgeError::TokenRequired);
    }
    let mut failure = EdgeError::TokenInvalid;
    for credential in offered {
        match check(route, &credential) {
            Ok((kind, remaining_secs)) => return Ok(Grant { kind, credential, remaining_secs }),
            Err(e @ EdgeError::TokenExpired) => failure = e,
            Err(_) => {}
        }
    }
    Err(failure)
}

fn check(route: &Route, credential: &Credential) -> Result<(Kind, u64), EdgeError> {
    let Some(expected) = route.sandbox.preview_auth_sha256.as_deref() else {
        return Err(EdgeError::TokenInvalid);
    };
    let actual = hex::encode(digest(&SHA256, credential.token.as_bytes()));
    if !bool::from(actual.as_bytes().ct_eq(expected.as_bytes())) {
        return Err(EdgeError::TokenInvalid);
    }
    Ok((Kind::PreviewAuth, SESSION_MAX_AGE_SECS))
}

/// The `Set-Cookie` value for a credential that came in the query, so later navigations need no token.
pub fn session_cookie(grant: &Grant) -> Option<String> {
    (grant.credential.transport == Transport::Query).then(|| {
        format!(
            "{SESSION_COOKIE}={}; Path=/; HttpOnly; Secure; SameSite=None; Partitioned; Max-Age={}",
            utf8_percent_encode(&grant.credential.token, COOKIE_VALUE),
            grant.remaining_secs
        )
    })
}

/// Removes every credential transport from the upstream request. `Authorization` goes only when it was the
/// credential that opened the route: otherwise it belongs to the app.
pub fn strip(req: &mut RequestHeader, grant: Option<&Grant>) -> pingora::Result<()> {
    if let Some(query) = req.uri.query() {
        let kept: Vec<&str> = query
            .split('&')
            .filter(|p| !QUERY_PARAMS.contains(&p.split_once('=').map_or(*p, |(n, _)| n)))
            .collect();
        if kept.len() != query.split('&').count() {
            let path = req.uri.path();
            let uri = if kept.is_empty() { path.to_string() } else { format!("{path}?{}", kept.join("&")) };
            let uri = uri.parse::<http::Uri>().map_err(|e| {
                pingora::Error::because(pingora::ErrorType::InvalidHTTPHeader, "rewriting query", e)
            })?;
            req.set_uri(uri);
        }
    }
    for name in HEADERS {
        req.remove_header(name);
    }
    if grant.is_some_and(|g| g.credential.transport == Transport::Bearer) {
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
