use super::*;

fn branding() -> Branding {
    Branding {
        logo_url: "https://cdn.acme.dev/logo.png".into(),
        accent_color: "#ff0066".into(),
        support_url: Some("https://acme.dev/help?a=1&b=2".into()),
        product_name: Some("Acme <Studio>".into()),
    }
}

fn body(err: &EdgeError, ctx: PageContext<'_>, html: bool) -> (ResponseHeader, String) {
    let (h, b) = render(err, ctx, "frame-ancestors 'self'", html).expect("renders");
    (h, String::from_utf8(b.to_vec()).expect("utf-8"))
}

#[test]
fn branded_pages_escape_tenant_strings_and_never_name_portico() {
    let b = branding();
    let (_, html) =
        body(&EdgeError::NotFound, PageContext { branding: Some(&b), ..Default::default() }, true);
    assert!(html.contains("Acme &lt;Studio&gt;"));
    assert!(html.contains("https://acme.dev/help?a=1&amp;b=2"));
    assert!(html.contains("#ff0066"));
    assert!(!html.to_lowercase().contains("portico"));
}

#[test]
fn json_errors_carry_code_and_headers() {
    let (h, json) = body(&EdgeError::RateLimited { retry_after_secs: 7 }, PageContext::default(), false);
    assert_eq!(h.status.as_u16(), 429);
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(v["error"]["code"], "rate_limited");
    let header = |n: &str| h.headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
    assert_eq!(header("retry-after").as_deref(), Some("7"));
    assert_eq!(header("x-edge-error").as_deref(), Some("rate_limited"));
    assert_eq!(header("cache-control").as_deref(), Some("no-store"));
    assert_eq!(header("content-security-policy").as_deref(), Some("frame-ancestors 'self'"));
}

#[test]
fn unreachable_page_names_the_port_retries_and_mentions_0_0_0_0() {
    let (h, html) = body(&EdgeError::UpstreamUnreachable { port: 5173 }, PageContext::default(), true);
    assert_eq!(h.status.as_u16(), 502);
    assert!(html.contains("port 5173"));
    assert!(html.contains("http-equiv=\"refresh\""));
    assert!(html.contains("0.0.0.0"));
}

#[test]
fn expired_page_posts_to_parent_without_breaking_out_of_script() {
    let ctx = PageContext { sandbox: Some("abcd</script>"), port: Some(3000), ..Default::default() };
    let (_, html) = body(&EdgeError::TokenExpired, ctx, true);
    assert!(html.contains(r#""type":"portico:preview:expired""#));
    assert!(!html.contains("abcd</script>"));
}

#[test]
fn hostile_branding_values_are_dropped() {
    let b = Branding {
        logo_url: "javascript:alert(1)".into(),
        accent_color: "red;}</style><script>".into(),
        support_url: None,
        product_name: None,
    };
    let (_, html) =
        body(&EdgeError::NotFound, PageContext { branding: Some(&b), ..Default::default() }, true);
    assert!(!html.contains("javascript:"));
    assert!(!html.contains("<script>"));
}

#[test]
fn navigation_or_html_preference_selects_html() {
    let mut req = RequestHeader::build("GET", b"/", None).expect("req");
    assert!(!wants_html(&req));
    req.insert_header("accept", "text/html,application/xhtml+xml").expect("h");
    assert!(wants_html(&req));
    req.insert_header("accept", "application/json, text/html").expect("h");
    assert!(!wants_html(&req));
    req.insert_header("sec-fetch-mode", "navigate").expect("h");
    assert!(wants_html(&req));
}

#[test]
fn errors_carry_the_request_id_in_header_page_and_json() {
    let ctx = PageContext { request_id: Some("0123abcd<x>"), ..Default::default() };
    let (h, json) = body(&EdgeError::NotFound, ctx, false);
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(v["error"]["request_id"], "0123abcd<x>");
    assert_eq!(v["error"]["code"], "not_found");
    assert_eq!(h.headers.get("x-request-id").and_then(|v| v.to_str().ok()), Some("0123abcd<x>"));
    let (_, html) = body(&EdgeError::NotFound, ctx, true);
    assert!(html.contains("Reference: 0123abcd&lt;x&gt;"), "{html}");
    let (h, json) = body(&EdgeError::NotFound, PageContext::default(), false);
    assert!(h.headers.get("x-request-id").is_none());
    assert!(!json.contains("request_id"));
}
