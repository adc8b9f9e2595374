//! Step 6: what a sandbox's response headers become. Input: a selector byte for the tenant's directive,
//! then `Content-Security-Policy` lines and `Set-Cookie` lines (those starting `!`), raw bytes.
//! Invariants, read the way a browser reads them: every comma-separated policy has exactly one
//! `frame-ancestors`, the tenant's; no cookie keeps a `Domain` attribute or is sent back as
//! `preview_session`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pingora::http::ResponseHeader;
use portico_edge::auth::SESSION_COOKIE;
use portico_edge::headers::{
    apply_frame_policy, frame_ancestors_directive, host_only_cookie, merge_csp_list, sanitize_set_cookies,
};
use portico_fuzz::{browser_set_cookie, csp_directives};

/// Directives as control's validation lets a tenant have them.
fn directive(selector: u8) -> String {
    let sources: &[&str] = match selector % 4 {
        0 => &[],
        1 => &["'none'"],
        2 => &["https://app.example.com"],
        _ => &["'self'", "https://*.example.com", "http://localhost:3000"],
    };
    frame_ancestors_directive(&sources.iter().map(|s| s.to_string()).collect::<Vec<_>>())
}

fn check_csp(csp: &str, fa: &str) {
    for policy in csp.split(',') {
        let found: Vec<String> = csp_directives(policy)
            .into_iter()
            .filter(|(n, _)| n == "frame-ancestors")
            .map(|(_, d)| d)
            .collect();
        assert_eq!(found, [fa], "policy {policy:?} of {csp:?}");
    }
}

fn check_cookie(set_cookie: &str) {
    if let Some((name, attrs)) = browser_set_cookie(set_cookie) {
        assert_ne!(name, SESSION_COOKIE, "{set_cookie:?} sets the session cookie");
        assert!(!attrs.iter().any(|a| a == "domain"), "{set_cookie:?} keeps Domain");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((selector, rest)) = data.split_first() else { return };
    let fa = directive(*selector);
    let mut resp = match ResponseHeader::build(200, None) {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    };
    for line in rest.split(|b| *b == b'\n') {
        let added = match line.strip_prefix(b"!") {
            Some(cookie) => {
                if let Ok(cookie) = std::str::from_utf8(cookie) {
                    if let Some(kept) = host_only_cookie(cookie, SESSION_COOKIE) {
                        check_cookie(&kept);
                    }
                }
                resp.append_header(http::header::SET_COOKIE, cookie)
            }
            None => {
                if let Ok(csp) = std::str::from_utf8(line) {
                    check_csp(&merge_csp_list(csp, &fa), &fa);
                }
                resp.append_header(http::header::CONTENT_SECURITY_POLICY, line)
            }
        };
        if added.is_err() {
            return;
        }
    }

    // The same through the header-level functions, which also see bytes that are not UTF-8.
    if apply_frame_policy(&mut resp, &fa).is_ok() {
        for v in resp.headers.get_all(http::header::CONTENT_SECURITY_POLICY) {
            check_csp(&String::from_utf8_lossy(v.as_bytes()), &fa);
        }
        assert!(resp.headers.get(http::header::X_FRAME_OPTIONS).is_none());
    }
    if sanitize_set_cookies(&mut resp, SESSION_COOKIE).is_ok() {
        for v in resp.headers.get_all(http::header::SET_COOKIE) {
            check_cookie(&String::from_utf8_lossy(v.as_bytes()));
        }
    }
});
