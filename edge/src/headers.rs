//! Header rewriting on the way out: CSP `frame-ancestors` per tenant, no `X-Frame-Options`
//! (SPEC §4 step 6), and the `X-Forwarded-*` headers added on the way in.

use std::io::Write;
use std::net::IpAddr;

use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};

/// `frame-ancestors <sources>`; no sources means only the page's own origin.
pub fn frame_ancestors_directive(sources: &[String]) -> String {
    if sources.is_empty() {
        return "frame-ancestors 'self'".to_string();
    }
    format!("frame-ancestors {}", sources.join(" "))
}

/// Replaces the `frame-ancestors` directive of one policy, keeping every other directive.
pub fn merge_csp(upstream: &str, frame_ancestors: &str) -> String {
    let mut kept: Vec<&str> = upstream
        .split(';')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .filter(|d| {
            let name = d.split_ascii_whitespace().next().unwrap_or_default();
            !name.eq_ignore_ascii_case("frame-ancestors")
        })
        .collect();
    kept.push(frame_ancestors);
    kept.join("; ")
}

/// One CSP header value may hold a comma-separated list of policies, each enforced on its own: every one
/// of them ends with the tenant's directive, so none can allow a wider set of embedders.
pub fn merge_csp_list(upstream: &str, frame_ancestors: &str) -> String {
    upstream.split(',').map(|policy| merge_csp(policy, frame_ancestors)).collect::<Vec<_>>().join(", ")
}

/// The directive as the header value responses carry, made once per tenant: cloning it shares the bytes, so
/// a response costs no copy or check of them. Control checks every source; were one unfit for a header, the
/// tenant's pages could not be embedded at all rather than be embeddable anywhere.
pub fn frame_ancestors_header(directive: &str) -> HeaderValue {
    HeaderValue::try_from(directive.to_string()).unwrap_or(HeaderValue::from_static("frame-ancestors 'none'"))
}

/// The CSP header's name as text: Pingora copies a `HeaderName` it does not capitalise out to text, then
/// parses it back; from static text it only parses.
const CSP: &str = "content-security-policy";

/// Sets the tenant's `frame-ancestors` on a proxied response and drops `X-Frame-Options`, which would
/// otherwise block the embedding the tenant allowed.
pub fn apply_frame_policy(resp: &mut ResponseHeader, frame_ancestors: &HeaderValue) -> pingora::Result<()> {
    // The usual case, a response with neither header: nothing to merge or remove.
    if !resp.headers.contains_key(http::header::CONTENT_SECURITY_POLICY)
        && !resp.headers.contains_key(http::header::X_FRAME_OPTIONS)
    {
        return edit_response(resp, |headers| {
            headers.try_insert(http::header::CONTENT_SECURITY_POLICY, frame_ancestors.clone()).map(drop)
        });
    }
    let existing: Vec<String> = resp
        .headers
        .get_all(http::header::CONTENT_SECURITY_POLICY)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    resp.remove_header(&http::header::CONTENT_SECURITY_POLICY);
    resp.remove_header(&http::header::X_FRAME_OPTIONS);
    if existing.is_empty() {
        return resp.insert_header(CSP, frame_ancestors.clone());
    }
    let directive = frame_ancestors.to_str().unwrap_or("frame-ancestors 'none'");
    for value in &existing {
        resp.append_header(CSP, merge_csp_list(value, directive))?;
    }
    Ok(())
}

/// A sandbox's cookies stay on its own host: `Domain` is dropped (so one sandbox cannot set cookies for
/// its siblings under the preview domain), and a cookie named like the edge's session is not set at all.
pub fn sanitize_set_cookies(resp: &mut ResponseHeader, session_cookie: &str) -> pingora::Result<()> {
    if !resp.headers.contains_key(http::header::SET_COOKIE) {
        return Ok(());
    }
    let existing: Vec<Vec<u8>> =
        resp.headers.get_all(http::header::SET_COOKIE).iter().map(|v| v.as_bytes().to_vec()).collect();
    if existing.is_empty() {
        return Ok(());
    }
    resp.remove_header(&http::header::SET_COOKIE);
    for value in existing {
        let value = String::from_utf8_lossy(&value);
        if let Some(kept) = host_only_cookie(&value, session_cookie) {
            resp.append_header(http::header::SET_COOKIE, kept)?;
        }
    }
    Ok(())
}

/// One `Set-Cookie` value without its `Domain` attribute, or `None` when it would set the session cookie.
pub fn host_only_cookie(value: &str, session_cookie: &str) -> Option<String> {
    let mut parts = value.split(';');
    let pair = parts.next().unwrap_or_default();
    let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
    // A nameless cookie (`=a=b`) is sent back bare, `Cookie: a=b`: what precedes the `=` in its value is
    // the name every server reads (RFC 6265bis §5.6, §5.7.4).
    let name = match name.trim() {
        "" => value.split_once('=').map_or(value, |(n, _)| n).trim(),
        name => name,
    };
    if name.eq_ignore_ascii_case(session_cookie) {
        return None;
    }
    let mut out = vec![pair.trim()];
    out.extend(parts.map(str::trim).filter(|a| {
        let attr = a.split_once('=').map_or(*a, |(n, _)| n).trim();
        !a.is_empty() && !attr.eq_ignore_ascii_case("domain")
    }));
    Some(out.join("; "))
}

/// What the edge tells a sandbox about each request it forwards.
pub struct Forwarded<'a> {
    pub client_ip: Option<IpAddr>,
    pub proto: &'static str,
    /// The request's own `Host` value (a shared slice of what the client sent, not a copy).
    pub host: HeaderValue,
    pub request_id: &'a str,
}

/// Client headers that claim to say who the client is: only the edge's own `X-Forwarded-*` may.
const CLIENT_FORWARDING: [HeaderName; 3] = [
    HeaderName::from_static("forwarded"),
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("x-forwarded-port"),
];
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REQUEST_ID: HeaderName = HeaderName::from_static(crate::request_id::HEADER);

/// Makes the request the one the sandbox gets: the client's claims about who it is
/// give way to the edge's `X-Forwarded-For/Proto/Host` (its `X-Forwarded-For` is replaced, not extended:
/// the edge is the first hop a sandbox can trust; no address leaves it empty), and `X-Request-Id` is set.
///
/// The request is edited as plain `http` parts, moved out and back in: Pingora's own insert parses each name
/// again and, for an HTTP/1 request, records its original case in a second map under a cloned name, and
/// both maps, parsed at the client's exact size, grow on the first insert. Without that record, names
/// leave in lower case (those Pingora knows, `Host`, `Content-Type`, …, capitalised): HTTP field names are
/// case-insensitive (RFC 9110 §5.1), a request that came over HTTP/2 reaches the sandbox so already, and
/// Envoy lowers them too.
///
/// `also` edits the same headers in the same move: the credentials stripped ([`crate::auth::Ours`]).
pub fn forward(
    req: &mut RequestHeader,
    fwd: Forwarded<'_>,
    also: impl FnOnce(&mut http::HeaderMap) -> pingora::Result<()>,
) -> pingora::Result<()> {
    edit_request(req, |headers| {
        add_forwarded(headers, fwd)?;
        also(headers)
    })
}

/// Edits a request's headers as plain `http` parts, moved out and back in (see [`forward`] for why).
pub(crate) fn edit_request(
    req: &mut RequestHeader,
    edit: impl FnOnce(&mut http::HeaderMap) -> pingora::Result<()>,
) -> pingora::Result<()> {
    // Parts keep only the URI, which loses an absolute-form or non-UTF-8 target: kept aside and restored.
    let in_uri = req.uri.path_and_query().map(|pq| pq.as_str().as_bytes());
    let target = (!req.raw_path_is_utf8() || in_uri != Some(req.raw_path())).then(|| req.raw_path().to_vec());
    // Parts with nothing in them stand in meanwhile: `http` allocates none of it.
    let empty = RequestHeader::from(http::Request::new(()).into_parts().0);
    let mut parts = http::request::Parts::from(std::mem::replace(req, empty));
    let edited = edit(&mut parts.headers);
    *req = RequestHeader::from(parts);
    edited?;
    match target {
        Some(target) => req.set_raw_path(&target),
        None => Ok(()),
    }
}

fn add_forwarded(headers: &mut http::HeaderMap, fwd: Forwarded<'_>) -> pingora::Result<()> {
    // One pass over the names present: looking up each of these would hash it every time.
    if headers.keys().any(|k| CLIENT_FORWARDING.contains(k)) {
        for name in &CLIENT_FORWARDING {
            headers.remove(name);
        }
    }
    // Room for all four at once: the map, parsed at the client's exact size, would grow during the inserts.
    headers.try_reserve(4).map_err(|e| invalid("too many request headers", e))?;
    let mut digits = [0u8; MAX_ADDRESS_LEN];
    // Digits and dots or colons only: always a valid value.
    let address = HeaderValue::from_bytes(address_text(fwd.client_ip, &mut digits))
        .map_err(|e| invalid("forwarded address", e))?;
    let id = HeaderValue::from_str(fwd.request_id).map_err(|e| invalid("request id", e))?;
    for (name, value) in [
        (X_FORWARDED_FOR, address),
        (X_FORWARDED_PROTO, HeaderValue::from_static(fwd.proto)),
        (X_FORWARDED_HOST, fwd.host),
        (X_REQUEST_ID, id),
    ] {
        headers.try_insert(name, value).map_err(|e| invalid("too many request headers", e))?;
    }
    Ok(())
}

pub(crate) fn invalid(
    what: &'static str,
    e: impl std::error::Error + Send + Sync + 'static,
) -> Box<pingora::Error> {
    pingora::Error::because(pingora::ErrorType::InvalidHTTPHeader, what, e)
}

/// Edits a proxied response's headers as plain `http` parts, moved out and back in as [`edit_request`]
/// does, for the same reasons: an insert under a name made once, into one map (Pingora's own
/// inserts after the hooks, `Date` and `Connection`, then go into one map too). Names then leave in lower
/// case, as they do over HTTP/2. A reason phrase of the sandbox's own, kept beside the parts, is put back.
fn edit_response(
    resp: &mut ResponseHeader,
    edit: impl FnOnce(&mut http::HeaderMap) -> Result<(), http::header::MaxSizeReached>,
) -> pingora::Result<()> {
    let canonical = resp.status.canonical_reason();
    let reason = resp.get_reason_phrase().filter(|r| Some(*r) != canonical).map(str::to_owned);
    let empty = ResponseHeader::from(http::Response::new(()).into_parts().0);
    let mut parts = http::response::Parts::from(std::mem::replace(resp, empty));
    let edited = edit(&mut parts.headers);
    *resp = ResponseHeader::from(parts);
    resp.set_reason_phrase(reason.as_deref())?;
    edited.map_err(|e| invalid("too many response headers", e))
}

/// The longest IPv6 text (`ffff:…:255.255.255.255`).
const MAX_ADDRESS_LEN: usize = 45;

/// An address as text in `buf`, IPv4 (nearly every client) digit by digit: `Display` goes through the
/// formatter's padding machinery, a noticeable part of a request this cheap.
fn address_text(ip: Option<IpAddr>, buf: &mut [u8; MAX_ADDRESS_LEN]) -> &[u8] {
    let mut len = 0;
    match ip {
        None => {}
        Some(IpAddr::V4(v4)) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[len] = b'.';
                    len += 1;
                }
                let digits = [octet / 100, octet / 10 % 10, octet % 10];
                let skip = if octet >= 100 {
                    0
                } else if octet >= 10 {
                    1
                } else {
                    2
                };
                for d in &digits[skip..] {
                    buf[len] = b'0' + d;
                    len += 1;
                }
            }
        }
        Some(ip @ IpAddr::V6(_)) => {
            let mut cursor = std::io::Cursor::new(&mut buf[..]);
            // 45 bytes hold any IPv6 address.
            let _ = write!(cursor, "{ip}");
            len = cursor.position() as usize;
        }
    }
    &buf[..len]
}

#[cfg(test)]
mod tests {
    use super::*;

    const FA: &str = "frame-ancestors https://app.example.com";

    #[test]
    fn merge_replaces_only_frame_ancestors() {
        assert_eq!(
            merge_csp("default-src 'self'; Frame-Ancestors 'none'; img-src *", FA),
            "default-src 'self'; img-src *; frame-ancestors https://app.example.com"
        );
    }

    #[test]
    fn merge_adds_directive_to_policy_without_one() {
        assert_eq!(
            merge_csp("script-src 'self';", FA),
            "script-src 'self'; frame-ancestors https://app.example.com"
        );
        assert_eq!(merge_csp("", FA), FA);
    }

    #[test]
    fn response_policy_replaces_upstream_frame_ancestors_and_drops_xfo() {
        let mut resp = ResponseHeader::build(200, None).expect("header");
        resp.append_header("content-security-policy", "default-src 'self'; frame-ancestors 'none'")
            .expect("h");
        resp.append_header("content-security-policy", "frame-ancestors 'none'; img-src 'self'").expect("h");
        resp.append_header("x-frame-options", "DENY").expect("h");
        apply_frame_policy(&mut resp, &HeaderValue::from_static(FA)).expect("applies");
        let csp: Vec<_> = resp
            .headers
            .get_all("content-security-policy")
            .iter()
            .map(|v| v.to_str().unwrap_or(""))
            .collect();
        assert_eq!(
            csp,
            vec![
                "default-src 'self'; frame-ancestors https://app.example.com",
                "img-src 'self'; frame-ancestors https://app.example.com"
            ]
        );
        assert!(resp.headers.get("x-frame-options").is_none());
    }

    #[test]
    fn a_response_without_csp_gets_ours_and_keeps_everything_else() {
        let mut resp = ResponseHeader::build(404, None).expect("header");
        resp.set_reason_phrase(Some("Nothing Here")).expect("reason");
        resp.append_header("X-App", "1").expect("h");
        apply_frame_policy(&mut resp, &HeaderValue::from_static(FA)).expect("applies");
        assert_eq!(resp.headers.get("content-security-policy").and_then(|v| v.to_str().ok()), Some(FA));
        assert_eq!(resp.status, 404);
        assert_eq!(resp.get_reason_phrase(), Some("Nothing Here"));
        let mut wire = Vec::new();
        resp.header_to_h1_wire(&mut wire);
        assert_eq!(String::from_utf8_lossy(&wire), format!("x-app: 1\r\ncontent-security-policy: {FA}\r\n"));

        let mut resp = ResponseHeader::build(200, None).expect("header");
        apply_frame_policy(&mut resp, &HeaderValue::from_static(FA)).expect("applies");
        assert_eq!(resp.get_reason_phrase(), Some("OK"));
    }

    #[test]
    fn every_policy_of_a_comma_list_ends_with_the_tenants_frame_ancestors() {
        assert_eq!(
            merge_csp_list("default-src *, frame-ancestors *", FA),
            "default-src *; frame-ancestors https://app.example.com, frame-ancestors https://app.example.com"
        );
        let mut resp = ResponseHeader::build(200, None).expect("header");
        resp.append_header("content-security-policy", "frame-ancestors *, img-src *").expect("h");
        resp.append_header("content-security-policy", "script-src 'self'").expect("h");
        apply_frame_policy(&mut resp, &HeaderValue::from_static(FA)).expect("applies");
        let csp: Vec<_> = resp
            .headers
            .get_all("content-security-policy")
            .iter()
            .map(|v| v.to_str().unwrap_or(""))
            .collect();
        assert_eq!(
            csp,
            vec![
                "frame-ancestors https://app.example.com, img-src *; frame-ancestors https://app.example.com",
                "script-src 'self'; frame-ancestors https://app.example.com"
            ]
        );
    }

    #[test]
    fn set_cookie_loses_domain_and_cannot_set_the_session_cookie() {
        assert_eq!(
            host_only_cookie("a=1; Domain=.sandbox.localhost; Path=/; domain = x", "preview_session")
                .as_deref(),
            Some("a=1; Path=/")
        );
        assert_eq!(host_only_cookie("Preview_Session=x; Path=/", "preview_session"), None);
        // Found by fuzz/ (response_headers): a nameless cookie comes back as `Cookie: preview_session=evil`.
        for nameless in ["=preview_session=evil", " = preview_session=evil; Path=/", "=preview_session"] {
            assert_eq!(host_only_cookie(nameless, "preview_session"), None, "{nameless}");
        }
        assert_eq!(host_only_cookie("=a=1; Domain=x", "preview_session").as_deref(), Some("=a=1"));
        let mut resp = ResponseHeader::build(200, None).expect("header");
        resp.append_header("set-cookie", "a=1; Domain=example.app; HttpOnly").expect("h");
        resp.append_header("set-cookie", "preview_session=evil").expect("h");
        resp.append_header("set-cookie", "b=2").expect("h");
        sanitize_set_cookies(&mut resp, "preview_session").expect("sanitizes");
        let cookies: Vec<_> =
            resp.headers.get_all("set-cookie").iter().map(|v| v.to_str().unwrap_or("")).collect();
        assert_eq!(cookies, vec!["a=1; HttpOnly", "b=2"]);
    }

    #[test]
    fn client_forwarding_claims_are_replaced_by_the_edges_own() {
        let mut req = RequestHeader::build("GET", b"/", None).expect("req");
        for (n, v) in [("forwarded", "for=6.6.6.6"), ("x-real-ip", "6.6.6.6"), ("x-forwarded-port", "1")] {
            req.append_header(n, v).expect("h");
        }
        req.append_header("x-forwarded-for", "6.6.6.6").expect("h");
        req.append_header("x-request-id", "planted").expect("h");
        forward(&mut req, fwd(Some([10, 0, 0, 1].into())), |_| Ok(())).expect("forwarded");
        for n in &CLIENT_FORWARDING {
            assert!(req.headers.get(n).is_none(), "{n}");
        }
        assert_eq!(req.headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()), Some("10.0.0.1"));
        let ids: Vec<_> = req.headers.get_all("x-request-id").iter().collect();
        assert_eq!(ids, ["id-1"]);
    }

    fn fwd(client_ip: Option<IpAddr>) -> Forwarded<'static> {
        Forwarded {
            client_ip,
            proto: "https",
            host: HeaderValue::from_static("x.example"),
            request_id: "id-1",
        }
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        let mut buf = [0u8; MAX_ADDRESS_LEN];
        for ip in
            ["0.0.0.0", "10.0.0.1", "9.99.100.255", "255.255.255.255", "::1", "2001:db8::7", "::ffff:1.2.3.4"]
        {
            let ip: IpAddr = ip.parse().expect("ip");
            assert_eq!(address_text(Some(ip), &mut buf), ip.to_string().as_bytes());
        }
        let longest: IpAddr = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255".parse().expect("ip");
        assert_eq!(address_text(Some(longest), &mut buf), longest.to_string().as_bytes());
        assert_eq!(address_text(None, &mut buf), b"");
    }

    #[test]
    fn a_directive_unfit_for_a_header_forbids_embedding_rather_than_dropping_the_policy() {
        assert_eq!(frame_ancestors_header(FA), FA);
        assert_eq!(
            frame_ancestors_header("frame-ancestors https://a.example\r\nx-evil: 1"),
            "frame-ancestors 'none'"
        );
    }

    fn wire(req: &RequestHeader) -> String {
        let mut buf = Vec::new();
        req.header_to_h1_wire(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }

    #[test]
    fn the_upstream_copy_loses_only_the_case_of_names() {
        let mut req = RequestHeader::build("GET", b"/a?b=c", None).expect("request");
        req.append_header("Host", "x.example").expect("h");
        req.append_header("X-Custom", "One").expect("h");
        req.append_header("x-custom", "Two").expect("h");
        forward(&mut req, fwd(None), |_| Ok(())).expect("forwarded");
        assert!(!req.has_case());
        assert_eq!(req.raw_path(), b"/a?b=c");
        assert_eq!(
            wire(&req),
            "Host: x.example\r\nx-custom: One\r\nx-custom: Two\r\nx-forwarded-for: \r\n\
             x-forwarded-proto: https\r\nx-forwarded-host: x.example\r\nx-request-id: id-1\r\n"
        );
    }

    #[test]
    fn the_upstream_copy_keeps_an_absolute_or_non_utf8_target_as_sent() {
        for target in [&b"http://x.example/a?b"[..], b"/caf\xe9?q=\xff", b"*", b"/"] {
            let mut req = RequestHeader::build("OPTIONS", target, None).expect("request");
            forward(&mut req, fwd(None), |_| Ok(())).expect("forwarded");
            assert_eq!(req.raw_path(), target);
            assert_eq!(req.method, http::Method::OPTIONS);
        }
    }

    #[test]
    fn empty_sources_mean_self() {
        assert_eq!(frame_ancestors_directive(&[]), "frame-ancestors 'self'");
    }
}
