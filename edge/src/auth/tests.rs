use std::sync::Arc;

use portico_wire::{Sandbox, SandboxState, Tenant, Visibility, WakePolicy};

use super::*;
use crate::route::RouteKind;
use crate::state::TenantEntry;

const TOKEN: &str = "sandbox-token-0123456789";

fn route() -> Route {
    Route {
        kind: RouteKind::SandboxPort,
        tenant: Arc::new(TenantEntry {
            tenant: Tenant {
                id: "tn_a".into(),
                branding: None,
                frame_ancestors: None,
                rate_limits: Default::default(),
                preview_domain: None,
            },
            frame_ancestors: String::new(),
        }),
        sandbox: Arc::new(Sandbox {
            id: "abcd1234".into(),
            tenant_id: "tn_a".into(),
            address: "127.0.0.2".into(),
            state: SandboxState::Running,
            default_visibility: Visibility::Private,
            wake_policy: WakePolicy::OnRequest,
            preview_auth_sha256: Some(hex::encode(digest(&SHA256, TOKEN.as_bytes()))),
        }),
        port: 3000,
        visibility: Visibility::Private,
    }
}

fn request(uri: &str, headers: &[(&str, &str)]) -> RequestHeader {
    let mut req = RequestHeader::build("GET", uri.as_bytes(), None).expect("req");
    for (n, v) in headers {
        req.append_header(n.to_string(), *v).expect("header");
    }
    req
}

fn outcome(req: &RequestHeader) -> Result<Transport, EdgeError> {
    authenticate(&route(), candidates(req)).map(|g| g.credential.transport)
}

#[test]
fn every_transport_carries_the_sandbox_token() {
    let q = format!("/?token={TOKEN}");
    assert_eq!(outcome(&request(&q, &[])), Ok(Transport::Query));
    let q = format!("/x?a=1&preview_token={TOKEN}");
    assert_eq!(outcome(&request(&q, &[])), Ok(Transport::Query));
    for h in HEADERS {
        assert_eq!(outcome(&request("/", &[(h, TOKEN)])), Ok(Transport::Header), "{h}");
    }
    let bearer = format!("Bearer {TOKEN}");
    assert_eq!(outcome(&request("/", &[("authorization", &bearer)])), Ok(Transport::Bearer));
    let cookie = format!("a=b; {SESSION_COOKIE}={TOKEN}");
    assert_eq!(outcome(&request("/", &[("cookie", &cookie)])), Ok(Transport::Cookie));
}

#[test]
fn missing_and_wrong_tokens_are_refused() {
    assert_eq!(outcome(&request("/", &[])), Err(EdgeError::TokenRequired));
    assert_eq!(outcome(&request("/?token=", &[])), Err(EdgeError::TokenRequired));
    assert_eq!(outcome(&request("/?token=nope", &[])), Err(EdgeError::TokenInvalid));
}

#[test]
fn the_apps_own_authorization_does_not_block_a_valid_cookie() {
    let cookie = format!("{SESSION_COOKIE}={TOKEN}");
    let req = request("/", &[("authorization", "Bearer app-jwt"), ("cookie", &cookie)]);
    let grant = authenticate(&route(), candidates(&req)).expect("cookie opens it");
    let mut req = req;
    strip(&mut req, Some(&grant)).expect("strips");
    assert_eq!(req.headers.get("authorization").and_then(|v| v.to_str().ok()), Some("Bearer app-jwt"));
    assert!(req.headers.get("cookie").is_none());
}

#[test]
fn strip_removes_every_credential_and_keeps_the_rest_in_order() {
    let q = format!("/p?a=1&token={TOKEN}&b=2&preview_token=x&c");
    let cookie = format!("x=1; {SESSION_COOKIE}={TOKEN}; y=2");
    let bearer = format!("Bearer {TOKEN}");
    let mut req =
        request(&q, &[("x-portico-preview-token", "t"), ("cookie", &cookie), ("authorization", &bearer)]);
    let grant = authenticate(&route(), candidates(&req)).expect("valid");
    strip(&mut req, Some(&grant)).expect("strips");
    assert_eq!(req.uri.to_string(), "/p?a=1&b=2&c");
    assert!(req.headers.get("x-portico-preview-token").is_none());
    assert_eq!(req.headers.get("cookie").and_then(|v| v.to_str().ok()), Some("x=1; y=2"));
    // The query credential opened the route, so the app's Authorization stays.
    assert!(req.headers.get("authorization").is_some());
}

#[test]
fn a_query_credential_sets_a_partitioned_session_cookie() {
    let req = request(&format!("/?token={TOKEN}"), &[]);
    let grant = authenticate(&route(), candidates(&req)).expect("valid");
    let cookie = session_cookie(&grant).expect("cookie");
    assert!(cookie.starts_with(&format!(
        "{SESSION_COOKIE}={TOKEN}; Path=/; HttpOnly; Secure; SameSite=None; Partitioned; Max-Age="
    )));
    let req = request("/", &[("x-portico-preview-token", TOKEN)]);
    let grant = authenticate(&route(), candidates(&req)).expect("valid");
    assert_eq!(session_cookie(&grant), None);
}

#[test]
fn malformed_input_never_panics() {
    for uri in ["/?token=%ff%fe", "/?token=%", "/?&&&=&token", "/?token=a=b=c"] {
        let req = request(uri, &[("cookie", ";;=;preview_session"), ("authorization", "Bearer")]);
        let _ = authenticate(&route(), candidates(&req));
        let mut req = req;
        strip(&mut req, None).expect("strips");
    }
}
