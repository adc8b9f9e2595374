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
        refused: 0,
    }
}

fn strip(req: &mut RequestHeader, grant: Option<&Grant>) -> pingora::Result<()> {
    Ours { grant, sandbox: None }.strip(req)
}

#[test]
fn every_transport_is_read_in_the_specs_order() {
    let bearer = format!("Bearer {TOKEN}");
    let cookie = format!("a=b; {SESSION_COOKIE}=c%20d");
    let req = request(
        "/?x=1&token=q1&preview_token=q2&token=mp_q3",
        &[("x-oc-preview-token", "h1"), ("authorization", &bearer), ("cookie", &cookie)],
    );
    assert_eq!(
        transports(&req),
        vec![
            (Transport::Query, "q2".into()),
            (Transport::Query, "mp_q3".into()),
            (Transport::Header, "h1".into()),
            (Transport::Bearer, TOKEN.into()),
            (Transport::Cookie, "c d".into()),
            // Not one of our formats: tried last, since it may be the app's own parameter.
            (Transport::QueryToken, "q1".into()),
        ]
    );
    for h in &HEADERS {
        let h = h.as_str();
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
    let q = format!("/p?a=1&token={TOKEN}&b=2&preview_token=x&c&token=ms_other");
    let cookie = format!("x=1; {SESSION_COOKIE}={TOKEN}; y=2");
    let bearer = format!("Bearer {TOKEN}");
    let mut req =
        request(&q, &[("x-portico-preview-token", "t"), ("cookie", &cookie), ("authorization", &bearer)]);
    strip(&mut req, Some(&grant(Transport::Bearer))).expect("strips");
    assert_eq!(req.uri.to_string(), "/p?a=1&b=2&c");
    assert!(req.headers.get("x-portico-preview-token").is_none());
    assert!(req.headers.get("authorization").is_none());
    assert_eq!(req.headers.get("cookie").and_then(|v| v.to_str().ok()), Some("x=1; y=2"));
    let query_grant = grant(Transport::QueryToken);
    let ours = Ours { grant: Some(&query_grant), sandbox: None };
    assert_eq!(ours.clean_location(&request(&format!("/p?token={TOKEN}"), &[])), "/p");
}

#[test]
fn a_query_credential_sets_a_partitioned_session_cookie() {
    let cookie = session_cookie(&grant(Transport::Query)).expect("cookie");
    // It outlives the credential, so an expired session is told `token_expired`, not `token_required`.
    let max_age = 60 + SESSION_GRACE_SECS;
    assert_eq!(
        cookie,
        format!(
            "{SESSION_COOKIE}={TOKEN}; Path=/; HttpOnly; Secure; SameSite=None; Partitioned; Max-Age={max_age}"
        )
    );
    assert!(session_cookie(&grant(Transport::QueryToken)).is_some());
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

#[test]
fn the_apps_own_token_parameter_stays_when_another_credential_opened_the_route() {
    // Vite's hot-reload socket: `?token=<vite's>` on a page whose session cookie opened the route.
    let mut req = request("/?token=vite-abc&v=1", &[("cookie", "preview_session=mp_x.y")]);
    strip(&mut req, Some(&grant(Transport::Cookie))).expect("strips");
    assert_eq!(req.uri.to_string(), "/?token=vite-abc&v=1");
    assert!(req.headers.get("cookie").is_none());
}

#[test]
fn a_token_parameter_that_opened_the_route_or_is_ours_never_passes() {
    let mut req = request(&format!("/?a=1&token={TOKEN}&token=mp_z&b=2"), &[]);
    strip(&mut req, Some(&grant(Transport::QueryToken))).expect("strips");
    assert_eq!(req.uri.to_string(), "/?a=1&b=2");
}

#[test]
fn the_sandboxs_preview_auth_token_is_recognised_by_its_hash() {
    let sandbox = portico_wire::Sandbox {
        id: "abcd1234".into(),
        tenant_id: "t1".into(),
        address: "10.0.0.1".into(),
        state: portico_wire::SandboxState::Running,
        default_visibility: portico_wire::Visibility::Private,
        wake_policy: portico_wire::WakePolicy::OnRequest,
        preview_auth_sha256: Some(tokens::Sha256::of(TOKEN)),
        allow_preflight: false,
    };
    let ours = Ours { grant: None, sandbox: Some(&sandbox) };
    assert_eq!(ours.clean_query(&format!("token={TOKEN}&x=1")), "x=1");
    assert_eq!(ours.clean_query("token=somebody-elses&x=1"), "token=somebody-elses&x=1");
}

#[test]
fn referer_loses_credential_parameters_and_keeps_the_rest() {
    let app = "http://3000-abcd.sandbox.localhost/p?x=1&token=vite-abc&preview_token=p#frag";
    let mut req = request("/asset.js", &[("referer", app)]);
    strip(&mut req, Some(&grant(Transport::Cookie))).expect("strips");
    assert_eq!(
        req.headers.get("referer").and_then(|v| v.to_str().ok()),
        Some("http://3000-abcd.sandbox.localhost/p?x=1&token=vite-abc#frag"),
        "token= that is not ours and did not open the route is the app's"
    );
    let referer = format!("http://3000-abcd.sandbox.localhost/p?x=1&token={TOKEN}&preview_token=p#frag");
    let mut req = request("/asset.js", &[("referer", &referer)]);
    strip(&mut req, Some(&grant(Transport::QueryToken))).expect("strips");
    assert_eq!(
        req.headers.get("referer").and_then(|v| v.to_str().ok()),
        Some("http://3000-abcd.sandbox.localhost/p?x=1#frag")
    );
}

#[test]
fn only_navigations_with_a_query_credential_are_sent_to_a_clean_url() {
    let nav = [("sec-fetch-mode", "navigate")];
    assert!(wants_clean_url(&request("/?token=x", &nav), &grant(Transport::QueryToken)));
    assert!(wants_clean_url(&request("/", &[("accept", "text/html,*/*")]), &grant(Transport::Query)));
    assert!(!wants_clean_url(&request("/", &nav), &grant(Transport::Cookie)));
    assert!(!wants_clean_url(&request("/", &[("accept", "*/*")]), &grant(Transport::Query)));
    let ws = [("sec-fetch-mode", "navigate"), ("upgrade", "websocket")];
    assert!(!wants_clean_url(&request("/", &ws), &grant(Transport::Query)));
    let mut post = request("/", &nav);
    post.set_method(http::Method::POST);
    assert!(!wants_clean_url(&post, &grant(Transport::Query)));
}

#[test]
fn decoys_ahead_of_a_valid_credential_count_as_failures() {
    let mut g = grant(Transport::Cookie);
    g.refused = 3;
    assert_eq!(failed_guesses(&Ok(g), 4), 3);
    assert_eq!(failed_guesses(&Err(EdgeError::TokenInvalid), 5), 5);
    assert_eq!(failed_guesses(&Err(EdgeError::TokenExpired), 0), 1);
    assert_eq!(failed_guesses(&Err(EdgeError::TokenRequired), 0), 0);
}

/// Found by fuzz/ (credentials): only the first `Referer` and the first `Authorization` were looked at, so a
/// credential in a second one reached the upstream.
#[test]
fn a_second_referer_or_authorization_loses_its_credential_too() {
    let mut req = request(
        "/",
        &[
            ("referer", "http://h/clean"),
            ("referer", "http://h/?preview_token=p&token=mp_x&a=1"),
            ("authorization", "Basic YXBwOnB3"),
            ("authorization", "Bearer mp_x.y"),
        ],
    );
    strip(&mut req, None).expect("strips");
    let referers: Vec<_> = req.headers.get_all("referer").iter().map(|v| v.to_str().unwrap_or("")).collect();
    assert_eq!(referers, ["http://h/clean", "http://h/?a=1"]);
    assert!(req.headers.get("authorization").is_none());
}

/// Found by fuzz/ (credentials): one cookie that is not ASCII made the whole `Cookie` header unreadable, so
/// the session cookie beside it was neither read nor stripped, and reached the upstream.
#[test]
fn a_cookie_that_is_not_ascii_hides_no_session_cookie() {
    let mut req = RequestHeader::build("GET", b"/", None).expect("req");
    req.append_header("cookie", "name=Jos\u{e9}; preview_session=mp_x.y".as_bytes()).expect("header");
    assert_eq!(transports(&req), vec![(Transport::Cookie, "mp_x.y".into())]);
    strip(&mut req, None).expect("strips");
    assert_eq!(req.headers.get("cookie").map(|v| v.as_bytes()), Some("name=Jos\u{e9}".as_bytes()));
}

/// A cookie whose name only contains the session cookie's, or whose value holds it, is the app's and
/// passes untouched; a session cookie in a second `Cookie` header is found and stripped.
#[test]
fn only_a_cookie_named_exactly_preview_session_is_ours() {
    let mut req = request(
        "/",
        &[("cookie", "xpreview_session=1; a=preview_session=2"), ("cookie", "b=3; preview_session=mp_x.y")],
    );
    assert_eq!(transports(&req), vec![(Transport::Cookie, "mp_x.y".into())]);
    strip(&mut req, None).expect("strips");
    let cookies: Vec<_> = req.headers.get_all("cookie").iter().map(|v| v.to_str().unwrap_or("")).collect();
    assert_eq!(cookies, ["xpreview_session=1; a=preview_session=2; b=3"]);

    let mut app_only = request("/", &[("cookie", "xpreview_session=1")]);
    assert!(transports(&app_only).is_empty());
    strip(&mut app_only, None).expect("strips");
    assert_eq!(app_only.headers.get("cookie").map(|v| v.as_bytes()), Some("xpreview_session=1".as_bytes()));
}

#[test]
fn cookie_values_split_at_semicolons_as_slice_split_does() {
    for value in [&b""[..], b";", b"a=1", b"a=1;", b";a=1", b"a=1; b=2;; c", b"\xff=1;a=2"] {
        let ours: Vec<&[u8]> = split_at_semicolons(value).collect();
        let std: Vec<&[u8]> = value.split(|b| *b == b';').collect();
        assert_eq!(ours, std, "{:?}", String::from_utf8_lossy(value));
    }
}
