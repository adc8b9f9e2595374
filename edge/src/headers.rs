//! Header rewriting on the way out: CSP `frame-ancestors` per tenant, no `X-Frame-Options`
//! (SPEC §4 step 6), and the `X-Forwarded-*` headers added on the way in.

use pingora::http::{RequestHeader, ResponseHeader};

/// `frame-ancestors <sources>`; no sources means only the page's own origin.
pub fn frame_ancestors_directive(sources: &[String]) -> String {
    if sources.is_empty() {
        return "frame-ancestors 'self'".to_string();
    }
    format!("frame-ancestors {}", sources.join(" "))
}

/// Replaces the `frame-ancestors` directive of one CSP header value, keeping every other directive.
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

/// Sets the tenant's `frame-ancestors` on a proxied response and drops `X-Frame-Options`, which would
/// otherwise block the embedding the tenant allowed.
pub fn apply_frame_policy(resp: &mut ResponseHeader, frame_ancestors: &str) -> pingora::Result<()> {
    let existing: Vec<String> = resp
        .headers
        .get_all(http::header::CONTENT_SECURITY_POLICY)
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_string))
        .collect();
    resp.remove_header(&http::header::CONTENT_SECURITY_POLICY);
    resp.remove_header(&http::header::X_FRAME_OPTIONS);
    if existing.is_empty() {
        return resp.insert_header(http::header::CONTENT_SECURITY_POLICY, frame_ancestors);
    }
    // Every policy is enforced on its own, so the directive goes from all of them and into the first.
    for (i, value) in existing.iter().enumerate() {
        let merged = if i == 0 {
            merge_csp(value, frame_ancestors)
        } else {
            let without = merge_csp(value, "");
            without.trim_end_matches("; ").trim_end().to_string()
        };
        if !merged.is_empty() {
            resp.append_header(http::header::CONTENT_SECURITY_POLICY, merged)?;
        }
    }
    Ok(())
}

/// Adds `X-Forwarded-For/Proto/Host`. The client's own `X-Forwarded-For` is replaced, not extended: the
/// edge is the first hop a sandbox can trust.
pub fn add_forwarded(
    req: &mut RequestHeader,
    client_ip: &str,
    proto: &str,
    host: &str,
) -> pingora::Result<()> {
    req.insert_header("x-forwarded-for", client_ip)?;
    req.insert_header("x-forwarded-proto", proto)?;
    req.insert_header("x-forwarded-host", host)?;
    Ok(())
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
        apply_frame_policy(&mut resp, FA).expect("applies");
        let csp: Vec<_> = resp
            .headers
            .get_all("content-security-policy")
            .iter()
            .map(|v| v.to_str().unwrap_or(""))
            .collect();
        assert_eq!(
            csp,
            vec!["default-src 'self'; frame-ancestors https://app.example.com", "img-src 'self'"]
        );
        assert!(resp.headers.get("x-frame-options").is_none());
    }

    #[test]
    fn response_without_csp_gets_ours() {
        let mut resp = ResponseHeader::build(200, None).expect("header");
        apply_frame_policy(&mut resp, FA).expect("applies");
        assert_eq!(resp.headers.get("content-security-policy").and_then(|v| v.to_str().ok()), Some(FA));
    }

    #[test]
    fn empty_sources_mean_self() {
        assert_eq!(frame_ancestors_directive(&[]), "frame-ancestors 'self'");
    }
}
