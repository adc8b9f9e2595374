//! Step 3: credentials for private routes (SPEC §4 step 3), and removing every credential before the
//! request goes upstream (step 5). A sandbox never sees a credential byte.

mod check;
pub mod password;

use std::borrow::Cow;
use std::sync::LazyLock;

use http::{HeaderMap, HeaderName};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};
use pingora::http::RequestHeader;

use crate::error::EdgeError;
use crate::headers::invalid;
pub use check::{now_secs, Authenticator};
use portico_wire::tokens::{self, PREVIEW_TOKEN_PREFIX, SHARE_TOKEN_PREFIX};
use subtle::ConstantTimeEq;

pub const SESSION_COOKIE: &str = "preview_session";
/// The credential headers, as names made once: a name given as text is parsed and hashed anew on every
/// look-up.
static HEADERS: [HeaderName; 3] = [
    HeaderName::from_static("x-portico-preview-token"),
    HeaderName::from_static("x-oc-preview-token"),
    HeaderName::from_static("x-miosa-preview-token"),
];
/// A request offering more candidates than this is not worth more hashing.
const MAX_CANDIDATES: usize = 8;

/// Where a credential was found; decides what is stripped, whether a cookie is set, and whether a
/// navigation is redirected to a clean URL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// `preview_token=`, or `token=` holding one of our token formats: always a credential.
    Query,
    /// `token=` with any other value: a credential only when nothing else opens the route. Otherwise it
    /// is the app's own parameter (Vite's hot-reload socket sends `?token=<its own>`) and stays in place.
    QueryToken,
    Header,
    Bearer,
    Cookie,
}

impl Transport {
    pub fn is_query(self) -> bool {
        matches!(self, Self::Query | Self::QueryToken)
    }
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
        self.index().1
    }

    /// Its place among the kinds, with its label: the passed-check counters are kept in that order.
    pub fn index(self) -> (usize, &'static str) {
        match self {
            Self::PreviewToken => (0, "preview_token"),
            Self::Share => (1, "share"),
            Self::PreviewAuth => (2, "preview_auth"),
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
    /// Credentials offered ahead of this one and refused: decoys count as failed guesses.
    pub refused: usize,
}

/// How much longer than its credential a session cookie lives, so that a session whose credential ran
/// out is told `token_expired` (and the embedding app hears of it) rather than `token_required`.
pub const SESSION_GRACE_SECS: u64 = 24 * 3600;

/// Every credential the request offers, in the SPEC's order: query, headers, bearer, cookie — except a
/// `token=` that is not one of our formats, which comes last: when anything else opens the route it is the
/// app's own, and it is never looked up at control for nothing.
pub fn candidates(req: &RequestHeader) -> Vec<Credential> {
    let mut out = Vec::new();
    let mut app_tokens = Vec::new();
    for (name, value) in query_pairs(req.uri.query().unwrap_or_default()) {
        let token = decode(value).into_owned();
        match name {
            "preview_token" => out.push(Credential { token, transport: Transport::Query }),
            "token" if has_our_prefix(&token) => out.push(Credential { token, transport: Transport::Query }),
            "token" => app_tokens.push(Credential { token, transport: Transport::QueryToken }),
            _ => {}
        }
    }
    for name in &HEADERS {
        for v in req.headers.get_all(name) {
            if let Ok(v) = v.to_str() {
                out.push(Credential { token: v.trim().to_string(), transport: Transport::Header });
            }
        }
    }
    if let Some(token) = bearer(req) {
        out.push(Credential { token: token.to_string(), transport: Transport::Bearer });
    }
    for value in cookies(&req.headers).filter_map(|(n, v)| (n == SESSION_COOKIE).then_some(v)) {
        out.push(Credential { token: decode(value).into_owned(), transport: Transport::Cookie });
    }
    out.append(&mut app_tokens);
    out.retain(|c| !c.token.is_empty());
    out.truncate(MAX_CANDIDATES);
    out
}

/// How many failed guesses step 3's result means for the client IP: every credential tried when none
/// passed (a missing one guessed nothing; a password form is counted when the password is), and the
/// refused ones ahead of the one that did.
pub fn failed_guesses(result: &Result<Grant, EdgeError>, offered: usize) -> usize {
    match result {
        Ok(grant) => grant.refused,
        Err(EdgeError::TokenInvalid | EdgeError::TokenExpired) => offered.max(1),
        Err(_) => 0,
    }
}

/// A CORS preflight carries no credential (browsers never send one); a sandbox that asks for it lets them
/// through while it runs — a preflight must never wake a sandbox.
pub fn preflight_allowed(req: &RequestHeader, sandbox: &portico_wire::Sandbox) -> bool {
    req.method == http::Method::OPTIONS
        && req.headers.contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
        && sandbox.allow_preflight
        && sandbox.state == portico_wire::SandboxState::Running
}

/// The `Set-Cookie` value for a credential that came in the query, so later requests need no token. It
/// outlives the credential by [`SESSION_GRACE_SECS`]: the edge, not the browser, decides it has expired.
pub fn session_cookie(grant: &Grant) -> Option<String> {
    grant
        .credential
        .transport
        .is_query()
        .then(|| cookie_for(&grant.credential.token, grant.remaining_secs.saturating_add(SESSION_GRACE_SECS)))
}

/// `preview_session=<value>` as the SPEC has it: host-only, HttpOnly, Secure, SameSite=None, Partitioned.
pub fn cookie_for(value: &str, max_age_secs: u64) -> String {
    format!(
        "{SESSION_COOKIE}={}; Path=/; HttpOnly; Secure; SameSite=None; Partitioned; Max-Age={max_age_secs}",
        utf8_percent_encode(value, COOKIE_VALUE),
    )
}

/// A navigation whose credential came in the query: answered with a redirect to the clean URL, so the
/// token leaves the address bar, history, `location.href` and every later `Referer`.
pub fn wants_clean_url(req: &RequestHeader, grant: &Grant) -> bool {
    grant.credential.transport.is_query()
        && req.method == http::Method::GET
        && !req.headers.contains_key(http::header::UPGRADE)
        && crate::pages::wants_html(req)
}

/// Which values are credentials, for stripping: our token formats, the credential that opened the route,
/// and the route's own preview-auth token (by hash) — anything else in `token=` belongs to the app.
pub struct Ours<'a> {
    pub grant: Option<&'a Grant>,
    pub sandbox: Option<&'a portico_wire::Sandbox>,
}

impl<'a> Ours<'a> {
    pub fn new(grant: Option<&'a Grant>, route: Option<&'a crate::route::Route>) -> Self {
        Self { grant, sandbox: route.and_then(|r| r.sandbox()).map(|s| &**s) }
    }

    fn token(&self, value: &str) -> bool {
        has_our_prefix(value)
            || self.grant.is_some_and(|g| g.credential.token == value)
            || self
                .sandbox
                .and_then(|s| s.preview_auth_sha256.as_ref())
                .is_some_and(|expected| bool::from(tokens::Sha256::of(value).0.ct_eq(&expected.0)))
    }

    /// A query without its credential parameters, every other parameter kept in order.
    pub fn clean_query(&self, query: &str) -> String {
        query
            .split('&')
            .filter(|p| {
                let (name, value) = p.split_once('=').unwrap_or((p, ""));
                match name {
                    "preview_token" => false,
                    "token" => !self.token(&decode(value)),
                    _ => true,
                }
            })
            .collect::<Vec<_>>()
            .join("&")
    }

    /// The request's path and query without credential parameters: where a navigation that brought its
    /// credential in the query (or a share's password form) is sent next.
    pub fn clean_location(&self, req: &RequestHeader) -> String {
        let path = req.uri.path();
        match req.uri.query().map(|q| self.clean_query(q)) {
            Some(q) if !q.is_empty() => format!("{path}?{q}"),
            _ => path.to_string(),
        }
    }

    /// A URL (a `Referer`) without credential parameters; its fragment is kept.
    pub fn clean_url(&self, url: &str) -> String {
        let (rest, fragment) = url.split_once('#').map_or((url, None), |(r, f)| (r, Some(f)));
        let Some((base, query)) = rest.split_once('?') else { return url.to_string() };
        let query = self.clean_query(query);
        let mut out = if query.is_empty() { base.to_string() } else { format!("{base}?{query}") };
        if let Some(f) = fragment {
            out.push('#');
            out.push_str(f);
        }
        out
    }

    /// Removes every credential transport from the upstream request. `Authorization` goes when it opened
    /// the route or carries one of our token formats: otherwise it belongs to the app.
    pub fn strip(&self, req: &mut RequestHeader) -> pingora::Result<()> {
        crate::headers::edit_request(req, |headers| self.strip_headers(headers))?;
        self.strip_query(req)
    }

    /// The credential parameters of the query.
    pub fn strip_query(&self, req: &mut RequestHeader) -> pingora::Result<()> {
        if let Some(query) = req.uri.query() {
            if self.clean_query(query) != query {
                let uri = self.clean_location(req).parse::<http::Uri>().map_err(|e| {
                    pingora::Error::because(pingora::ErrorType::InvalidHTTPHeader, "rewriting query", e)
                })?;
                req.set_uri(uri);
            }
        }
        Ok(())
    }

    /// The credential headers, on the request's headers as plain `http` parts (so that the proxy strips
    /// them in the same edit that adds the forwarding headers, [`crate::headers::forward`]).
    pub fn strip_headers(&self, headers: &mut HeaderMap) -> pingora::Result<()> {
        // One pass over the names present: looking up each of ours would hash it every time.
        let (mut credential, mut referer, mut authorization, mut cookie) =
            ([false; HEADERS.len()], false, false, false);
        for name in headers.keys() {
            if let Some(i) = HEADERS.iter().position(|h| h == name) {
                credential[i] = true;
            } else if name == http::header::REFERER {
                referer = true;
            } else if name == http::header::AUTHORIZATION {
                authorization = true;
            } else if name == http::header::COOKIE {
                cookie = true;
            }
        }
        for (name, _) in HEADERS.iter().zip(credential).filter(|(_, present)| *present) {
            headers.remove(name);
        }
        // Every `Referer`: a client may send two, and the second must not carry what the first does not.
        if referer {
            self.strip_referers(headers)?;
        }
        // Every `Authorization`: one of our formats in a second header must not pass either.
        if authorization {
            let ours =
                headers.get_all(http::header::AUTHORIZATION).iter().filter_map(bearer_of).any(has_our_prefix);
            if ours || self.grant.is_some_and(|g| g.credential.transport == Transport::Bearer) {
                headers.remove(http::header::AUTHORIZATION);
            }
        }
        // Most requests' cookies do not even mention the session's name: those are not split at all.
        let mentioned = cookie
            && headers
                .get_all(http::header::COOKIE)
                .iter()
                .any(|v| SESSION_COOKIE_FINDER.find(v.as_bytes()).is_some());
        if mentioned {
            let mut kept = String::new();
            let mut session = false;
            for (n, v) in cookies(headers) {
                if n == SESSION_COOKIE {
                    session = true;
                    continue;
                }
                if !kept.is_empty() {
                    kept.push_str("; ");
                }
                kept.push_str(n);
                kept.push('=');
                kept.push_str(v);
            }
            if session {
                headers.remove(http::header::COOKIE);
                if !kept.is_empty() {
                    let kept = http::HeaderValue::try_from(kept).map_err(|e| invalid("cookie", e))?;
                    headers.try_insert(http::header::COOKIE, kept).map_err(|e| invalid("cookie", e))?;
                }
            }
        }
        Ok(())
    }

    fn strip_referers(&self, headers: &mut HeaderMap) -> pingora::Result<()> {
        let referers: Vec<String> = headers
            .get_all(http::header::REFERER)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        let clean: Vec<String> = referers.iter().map(|r| self.clean_url(r)).collect();
        if clean != referers {
            headers.remove(http::header::REFERER);
            for referer in clean {
                let referer = http::HeaderValue::try_from(referer).map_err(|e| invalid("referer", e))?;
                headers.try_append(http::header::REFERER, referer).map_err(|e| invalid("referer", e))?;
            }
        }
        Ok(())
    }
}

/// Built once: `memmem::find` builds its searcher on every call (perf: 0.09 µs a request with a cookie).
static SESSION_COOKIE_FINDER: LazyLock<memchr::memmem::Finder<'static>> =
    LazyLock::new(|| memchr::memmem::Finder::new(SESSION_COOKIE));

/// One of the token formats control issues (`mp_`, `ms_`, a share session): never the app's own.
fn has_our_prefix(token: &str) -> bool {
    [PREVIEW_TOKEN_PREFIX, SHARE_TOKEN_PREFIX, password::SESSION_PREFIX].iter().any(|p| token.starts_with(p))
}

fn query_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query.split('&').filter_map(|p| p.split_once('='))
}

fn bearer(req: &RequestHeader) -> Option<&str> {
    bearer_of(req.headers.get(http::header::AUTHORIZATION)?)
}

fn bearer_of(value: &http::HeaderValue) -> Option<&str> {
    let (scheme, token) = value.to_str().ok()?.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim())
}

fn cookies(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        // Split before decoding: a cookie that is not ASCII (a sandbox can set one) hides none of the others.
        // By `memchr`: a session token is 300 bytes, and this runs twice per request that carries one.
        .flat_map(|v| split_at_semicolons(v.as_bytes()))
        .filter_map(|c| std::str::from_utf8(c).ok())
        .filter_map(|c| c.trim().split_once('='))
}

/// `bytes` split at every `;`, as `slice::split` would (empty pieces included).
fn split_at_semicolons(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    let mut ends = memchr::memchr_iter(b';', bytes).chain(std::iter::once(bytes.len()));
    std::iter::from_fn(move || {
        let end = ends.next()?;
        let piece = &bytes[start..end];
        start = end + 1;
        Some(piece)
    })
}

/// A form-encoded value; borrowed when there is nothing to decode, as in every token control issues.
fn decode(s: &str) -> Cow<'_, str> {
    if memchr::memchr2(b'%', b'+', s.as_bytes()).is_none() {
        return Cow::Borrowed(s);
    }
    Cow::Owned(percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned())
}

const COOKIE_VALUE: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b',').add(b';').add(b'\\').add(b'%');

#[cfg(test)]
mod tests;
