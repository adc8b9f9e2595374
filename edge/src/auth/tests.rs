use super::*;

const TOKEN: &str = "sandbox-token-0123456789";

fn request(uri: &str, headers: &[(&str, &str)]) -> RequestHeader {
    let mut req = RequestHeader::build("GET", uri.as_bytes(), None).expect("req");
    for (n, v) in headers {
        req.append_header(n.to_string(), *v).expect("header");
    }
    req
}

fn transports(req: &RequestHeader) -> Vec<(Transport, String)> {
    candidates(req).into_iter().map(|c| (c.transport, c.token)).collect()
}

fn grant(transport: Transport) -> Grant {
    Grant {
        kind: Kind::PreviewAuth,
        credential: Credential { token: TOKEN.into(), transport },
        remaining_secs: 60,
    }
}

#[test]
fn every_transport_is_read_in_the_specs_order() {
    let bearer = format!("Bearer {TOKEN}");
    let cookie = format!("a=b; {SESSION_COOKIE}=c%20d");
    let req = request(
        "/?x=1&token=q1&preview_token=q2",
        &[("x-oc-preview-token", "h1"), ("authorization", &bearer), ("cookie", &cookie)],
    );
    assert_eq!(
        transports(&req),
        vec![
            (Transport::Query, "q1".into()),
            (Transport::Query, "q2".into()),
            (Transport::Header, "h1".into()),
            (Transport::Bearer, TOKEN.into()),
            (Transport::Cookie, "c d".into()),
        ]
    );
    for h in HEADERS {
        assert_eq!(transports(&request("/", &[(h, TOKEN)])), vec![(Transport::Header, TOKEN.into())], "{h}");
    }
}

#[test]
fn empty_values_and_floods_of_candidates_are_bounded() {
    assert!(candidates(&request("/?token=&preview_token=", &[])).is_empty());
    let many = (0..50).map(|i| format!("token=t{i}")).collect::<Vec<_>>().join("&");
    assert_eq!(candidates(&request(&format!("/?{many}"), &[])).len(), MAX_CANDIDATES);
}

#[test]
fn the_apps_own_authorization_passes_when_something_else_opened_the_route() {
    let mut req = request("/", &[("authorization", "Bearer app-jwt"), ("cookie", "preview_session=x")]);
    strip(&mut req, Some(&grant(Transport::Cookie))).expect("strips");
    assert_eq!(req.headers.get("authorization").and_then(|v| v.to_str().ok()), Some("Bearer app-jwt"));
    assert!(req.headers.get("cookie").is_none());
}

#[test]
fn our_token_formats_never_pass_in_authorization() {
    for t in ["mp_abc.def", "ms_abc", "ps1.sh.1.mac"] {
        let mut req = request("/", &[("authorization", &format!("Bearer {t}"))]);
        strip(&mut req, None).expect("strips");
        assert!(req.headers.get("authorization").is_none(), "{t}");
    }
}

#[test]
fn strip_removes_every_credential_and_keeps_the_rest_in_order() {
    let q = format!("/p?a=1&token={TOKEN}&b=2&preview_token=x&c");
    let cookie = format!("x=1; {SESSION_COOKIE}={TOKEN}; y=2");
    let bearer = format!("Bearer {TOKEN}");
    let mut req =
        request(&q, &[("x-portico-preview-token", "t"), ("cookie", &cookie), ("authorization", &bearer)]);
    strip(&mut req, Some(&grant(Transport::Bearer))).expect("strips");
    assert_eq!(req.uri.to_string(), "/p?a=1&b=2&c");
    assert!(req.headers.get("x-portico-preview-token").is_none());
    assert!(req.headers.get("authorization").is_none());
    assert_eq!(req.headers.get("cookie").and_then(|v| v.to_str().ok()), Some("x=1; y=2"));
    assert_eq!(location_without_credentials(&request(&format!("/p?token={TOKEN}"), &[])), "/p");
}

#[test]
fn a_query_credential_sets_a_partitioned_session_cookie() {
    let cookie = session_cookie(&grant(Transport::Query)).expect("cookie");
    assert_eq!(
        cookie,
        format!("{SESSION_COOKIE}={TOKEN}; Path=/; HttpOnly; Secure; SameSite=None; Partitioned; Max-Age=60")
    );
    assert_eq!(session_cookie(&grant(Transport::Header)), None);
    assert!(cookie_for("a;b c", 1).starts_with("preview_session=a%3Bb%20c;"));
}

#[test]
fn malformed_input_never_panics() {
    for uri in ["/?token=%ff%fe", "/?token=%", "/?&&&=&token", "/?token=a=b=c"] {
        let mut req = request(uri, &[("cookie", ";;=;preview_session"), ("authorization", "Bearer")]);
        let _ = candidates(&req);
        strip(&mut req, None).expect("strips");
    }
}
