//! Private previews end to end: preview tokens, share links and sandbox tokens, checked at the edge
//! before anything reaches a sandbox.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::sandbox::{header, FakeSandbox};
use common::{sandbox_ip, Api, Stack};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

struct Private {
    stack: Stack,
    tenant: Api,
    fake: FakeSandbox,
    id: String,
    /// The sandbox's own preview-auth token.
    sandbox_token: String,
}

impl Private {
    async fn start() -> Private {
        let stack = Stack::start().await;
        let tenant = stack.admin.tenant("acme").await;
        let fake = FakeSandbox::start(sandbox_ip(), 0).await;
        let sb = tenant
            .sandbox(json!({"address": fake.addr.ip().to_string(), "preview_auth": {"token": "auto"}}))
            .await;
        stack.synced().await;
        Private {
            id: sb["id"].as_str().unwrap().to_string(),
            sandbox_token: sb["preview_auth_token"].as_str().unwrap().to_string(),
            stack,
            tenant,
            fake,
        }
    }

    fn host(&self) -> String {
        format!("{}-{}.sandbox.localhost", self.fake.port(), self.id)
    }

    fn url(&self, path: &str) -> String {
        self.stack.edge.url(&self.host(), path)
    }

    async fn mint(&self, body: Value) -> Value {
        self.tenant.ok("POST", "/v1/preview-tokens", Some(body), 201).await
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut req = self.stack.edge.client().get(self.url(path));
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        req.send().await.expect("edge answers")
    }

    /// A share of a new preview, protected by `password`, in force at the edge.
    async fn password_share(&self, password: &str) -> Value {
        let preview = self.preview().await;
        let share = self
            .tenant
            .ok(
                "POST",
                &format!("/v1/previews/{}/shares", preview["id"].as_str().unwrap()),
                Some(json!({"password": password})),
                201,
            )
            .await;
        self.stack.synced().await;
        share
    }

    /// A preview of the sandbox's port, in force at the edge.
    async fn preview(&self) -> Value {
        let p = self
            .tenant
            .ok(
                "POST",
                &format!("/v1/sandboxes/{}/previews", self.id),
                Some(json!({"port": self.fake.port()})),
                201,
            )
            .await;
        self.stack.synced().await;
        p
    }
}

fn code(resp: &reqwest::Response) -> (u16, String) {
    let code =
        resp.headers().get("x-edge-error").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    (resp.status().as_u16(), code)
}

#[tokio::test]
async fn preview_token_opens_its_sandbox_through_every_transport() {
    let p = Private::start().await;
    let minted = p.mint(json!({"sandbox_id": p.id, "port": p.fake.port()})).await;
    let token = minted["token"].as_str().unwrap();
    assert!(token.starts_with("mp_"));
    assert!(minted["embed_url"].as_str().unwrap().contains(&format!("?token={token}")));

    let resp = p.get(&format!("/?preview_token={token}"), &[]).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["set-cookie"].to_str().unwrap().starts_with("preview_session="));
    for (name, value) in [
        ("x-portico-preview-token", token.to_string()),
        ("x-oc-preview-token", token.to_string()),
        ("x-miosa-preview-token", token.to_string()),
        ("authorization", format!("Bearer {token}")),
        ("cookie", format!("preview_session={token}")),
    ] {
        let resp = p.get("/t", &[(name, &value)]).await;
        assert_eq!(resp.status(), 200, "{name}");
        let echo: Value = resp.json().await.unwrap();
        assert!(!echo.to_string().contains(token), "{name}: the sandbox saw the token");
    }
}

#[tokio::test]
async fn preview_token_bound_to_a_port_or_sandbox_opens_nothing_else() {
    let p = Private::start().await;
    let other = p.tenant.sandbox(json!({"address": p.fake.addr.ip().to_string()})).await;
    let other_port = p.mint(json!({"sandbox_id": p.id, "port": 1})).await;
    let other_sandbox = p.mint(json!({"sandbox_id": other["id"], "port": p.fake.port()})).await;
    let any_port = p.mint(json!({"sandbox_id": p.id})).await;
    p.stack.synced().await;
    for (what, t) in [("other port", &other_port), ("other sandbox", &other_sandbox)] {
        let resp = p.get("/", &[("x-portico-preview-token", t["token"].as_str().unwrap())]).await;
        assert_eq!(code(&resp), (401, "token_invalid".into()), "{what}");
    }
    let resp = p.get("/", &[("x-portico-preview-token", any_port["token"].as_str().unwrap())]).await;
    assert_eq!(resp.status(), 200, "a token without a port opens every port");

    // Another tenant's token for this sandbox cannot be minted at all.
    let mallory = p.stack.admin.tenant("mallory").await;
    let (status, _) = mallory.call("POST", "/v1/preview-tokens", Some(json!({"sandbox_id": p.id}))).await;
    assert!(status == 403 || status == 422, "{status}");
}

#[tokio::test]
async fn tampered_and_malformed_tokens_are_invalid() {
    let p = Private::start().await;
    let token = p.mint(json!({"sandbox_id": p.id})).await["token"].as_str().unwrap().to_string();
    let (payload, sig) = token.split_once('.').unwrap();
    let flipped = format!("{payload}.{}{}", if sig.starts_with('A') { "B" } else { "A" }, &sig[1..]);
    for bad in [flipped.as_str(), "mp_", "mp_x.y", "ms_nope", "garbage", &"mp_a".repeat(2000)] {
        let resp = p.get("/", &[("x-portico-preview-token", bad)]).await;
        assert_eq!(code(&resp), (401, "token_invalid".into()), "{bad:.40}");
    }
    assert_eq!(code(&p.get("/", &[]).await), (401, "token_required".into()));
}

#[tokio::test]
async fn mint_validates_ttl_and_scopes() {
    let p = Private::start().await;
    for body in [
        json!({"sandbox_id": p.id, "ttl_seconds": 0}),
        json!({"sandbox_id": p.id, "ttl_seconds": 86401}),
        json!({"sandbox_id": p.id, "scopes": ["preview:admin"]}),
        json!({"sandbox_id": p.id, "port": 0}),
    ] {
        let (status, v) = p.tenant.call("POST", "/v1/preview-tokens", Some(body.clone())).await;
        assert_eq!(status, 422, "{body} → {v}");
    }
}

#[tokio::test]
async fn expired_token_is_token_expired_and_tells_the_parent_page() {
    let p = Private::start().await;
    let token =
        p.mint(json!({"sandbox_id": p.id, "ttl_seconds": 1})).await["token"].as_str().unwrap().to_string();
    assert_eq!(p.get("/", &[("x-portico-preview-token", &token)]).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let resp = p.get(&format!("/?token={token}"), &[("sec-fetch-mode", "navigate")]).await;
    assert_eq!(code(&resp), (401, "token_expired".into()));
    let page = resp.text().await.unwrap();
    assert!(page.contains("portico:preview:expired") && page.contains("window.parent.postMessage"));
    assert!(page.contains(&p.id) && page.contains(&p.fake.port().to_string()));
}

/// A client that shows redirects instead of following them.
fn no_redirects(p: &Private) -> reqwest::Client {
    common::builder_to(p.stack.edge.addr).redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

#[tokio::test]
async fn a_navigation_with_a_query_token_is_sent_to_the_clean_url_with_a_session_cookie() {
    let p = Private::start().await;
    let token =
        p.mint(json!({"sandbox_id": p.id, "ttl_seconds": 600})).await["token"].as_str().unwrap().to_string();
    let client = no_redirects(&p);
    let resp = client
        .get(p.url(&format!("/page?a=1&token={token}&b=2&token=vite-own")))
        .header("sec-fetch-mode", "navigate")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    let location = resp.headers()["location"].to_str().unwrap();
    assert_eq!(
        location, "/page?a=1&b=2&token=vite-own",
        "only the credential leaves; the rest keeps its order"
    );
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.starts_with(&format!("preview_session={token};")), "{cookie}");
    let max_age: u64 =
        cookie.split("Max-Age=").nth(1).and_then(|v| v.split(';').next()).unwrap().parse().unwrap();
    assert!(max_age > 600, "the cookie outlives its credential, to say token_expired later: {max_age}");

    // The browser follows with the cookie; a Referer that still carries the token is cleaned.
    let referer = format!("http://{}/page?a=1&token={token}", p.host());
    let resp = client
        .get(p.url(location))
        .header("sec-fetch-mode", "navigate")
        .header("cookie", format!("preview_session={token}"))
        .header("referer", &referer)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = resp.text().await.unwrap();
    assert!(seen.contains("/page?a=1&b=2&token=vite-own"), "{seen}");
    assert!(
        !seen.contains("mp_") && !seen.contains("preview_session"),
        "the sandbox saw a credential: {seen}"
    );
    assert!(seen.contains(&format!("http://{}/page?a=1", p.host())), "the Referer itself passes: {seen}");

    // Not a navigation (fetch, XHR): proxied at once, with the cookie for later requests.
    let resp = client.get(p.url(&format!("/api?token={token}"))).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["set-cookie"].to_str().unwrap().starts_with("preview_session="));
}

#[tokio::test]
async fn an_apps_own_token_parameter_reaches_the_sandbox_when_another_credential_opened_it() {
    let p = Private::start().await;
    let token = p.mint(json!({"sandbox_id": p.id})).await["token"].as_str().unwrap().to_string();
    // Vite's hot-reload socket path, on a page whose session cookie opened the route.
    let resp = p.get("/?token=vite-abc123", &[("cookie", &format!("preview_session={token}"))]).await;
    assert_eq!(resp.status(), 200);
    let seen = resp.text().await.unwrap();
    assert!(seen.contains("\"uri\":\"/?token=vite-abc123\""), "{seen}");
    // The sandbox's own preview-auth token in `token=` is a credential, never the app's.
    let resp = p.get(&format!("/?token={}", p.sandbox_token), &[]).await;
    assert_eq!(resp.status(), 200);
    assert!(!resp.text().await.unwrap().contains(&p.sandbox_token));
    // Alone, an unknown `token=` is a credential that failed.
    assert_eq!(code(&p.get("/?token=vite-abc123", &[]).await), (401, "token_invalid".into()));
}

#[tokio::test]
async fn an_http11_request_without_host_is_a_bad_request() {
    let p = Private::start().await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(p.stack.edge.addr).await.unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\nAccept: application/json\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("x-edge-error: bad_request"), "{answer}");

    // A target that is neither origin- nor absolute-form would reach the sandbox verbatim, token and all.
    let mut conn = tokio::net::TcpStream::connect(p.stack.edge.addr).await.unwrap();
    let request =
        format!("GET {}/p?token={} HTTP/1.1\r\nHost: {}\r\n\r\n", p.host(), p.sandbox_token, p.host());
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("x-edge-error: bad_request"), "{answer}");
}

#[tokio::test]
async fn revoked_preview_token_is_refused_within_1s() {
    let p = Private::start().await;
    let minted = p.mint(json!({"sandbox_id": p.id})).await;
    let token = minted["token"].as_str().unwrap();
    assert_eq!(p.get("/", &[("x-portico-preview-token", token)]).await.status(), 200);
    p.tenant
        .ok("DELETE", &format!("/v1/preview-tokens/{}", minted["jti"].as_str().unwrap()), None, 204)
        .await;
    let start = Instant::now();
    while p.get("/", &[("x-portico-preview-token", token)]).await.status() == 200 {
        assert!(start.elapsed() < Duration::from_secs(1), "revocation not in force within 1 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(code(&p.get("/", &[("x-portico-preview-token", token)]).await), (401, "token_invalid".into()));
}

#[tokio::test]
async fn tokens_signed_before_a_key_rotation_keep_working() {
    let p = Private::start().await;
    let old = p.mint(json!({"sandbox_id": p.id})).await["token"].as_str().unwrap().to_string();
    p.stack.admin.ok("POST", "/v1/signing-keys/rotate", None, 201).await;
    let new = p.mint(json!({"sandbox_id": p.id})).await["token"].as_str().unwrap().to_string();
    p.stack.synced().await;
    for t in [&old, &new] {
        assert_eq!(p.get("/", &[("x-portico-preview-token", t)]).await.status(), 200);
    }
    let keys = p.stack.admin.ok("GET", "/v1/signing-keys", None, 200).await;
    assert_eq!(keys.as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn share_link_works_on_its_first_request_and_stops_within_1s_of_revocation() {
    let p = Private::start().await;
    let preview = p.preview().await;
    let share = p
        .tenant
        .ok("POST", &format!("/v1/previews/{}/shares", preview["id"].as_str().unwrap()), Some(json!({})), 201)
        .await;
    let token = share["token"].as_str().unwrap();
    assert!(token.starts_with("ms_"));
    assert_eq!(share["token_prefix"].as_str().unwrap(), &token[..12]);
    // Straight after minting, before waiting for anything.
    let slug_url = p.stack.edge.url(&format!("{}.preview.localhost", preview["slug"].as_str().unwrap()), "/");
    let resp = p.stack.edge.client().get(format!("{slug_url}?token={token}")).send().await.unwrap();
    assert_eq!(resp.status(), 200, "a share works on its first request");
    assert_eq!(p.get("/", &[("x-portico-preview-token", token)]).await.status(), 200);

    p.tenant.ok("DELETE", &format!("/v1/shares/{}", share["id"].as_str().unwrap()), None, 204).await;
    let start = Instant::now();
    while p.get("/", &[("x-portico-preview-token", token)]).await.status() == 200 {
        assert!(start.elapsed() < Duration::from_secs(1), "share revocation not in force within 1 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn password_guesses_are_counted_at_control_before_any_hashing() {
    let p = Private::start().await;
    let path = format!("/?token={}", p.password_share("open sesame").await["token"].as_str().unwrap());
    let form = p.get(&path, &[("sec-fetch-mode", "navigate")]).await.text().await.unwrap();
    let csrf =
        form.split("name=\"csrf\" value=\"").nth(1).and_then(|r| r.split('"').next()).unwrap().to_string();
    let post = |password: &str| {
        p.stack
            .edge
            .client()
            .post(p.url(&path))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .body(format!("password={password}&csrf={csrf}"))
            .send()
    };
    // Ten guesses a minute from one client IP reach the hash; the eleventh does not, even a right one.
    for i in 0..10 {
        let resp = post(&format!("guess{i}")).await.unwrap();
        assert_eq!(code(&resp), (401, "password_required".into()), "guess {i}");
    }
    let resp = post("open+sesame").await.unwrap();
    assert_eq!(code(&resp), (429, "rate_limited".into()));
    let retry: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
}

#[tokio::test]
async fn expired_share_is_token_expired() {
    let p = Private::start().await;
    let preview = p.preview().await;
    let share = p
        .tenant
        .ok(
            "POST",
            &format!("/v1/previews/{}/shares", preview["id"].as_str().unwrap()),
            Some(json!({"ttl_seconds": 1})),
            201,
        )
        .await;
    let token = share["token"].as_str().unwrap();
    assert_eq!(p.get("/", &[("x-portico-preview-token", token)]).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(code(&p.get("/", &[("x-portico-preview-token", token)]).await), (401, "token_expired".into()));
}

#[tokio::test]
async fn password_share_asks_for_its_password_then_sets_the_session() {
    let p = Private::start().await;
    let share = p.password_share("open sesame").await;
    let token = share["token"].as_str().unwrap();
    let path = format!("/page?x=1&token={token}");

    let resp = p.get(&path, &[("accept", "application/json")]).await;
    assert_eq!(code(&resp), (401, "password_required".into()));
    let resp = p.get(&path, &[("sec-fetch-mode", "navigate")]).await;
    assert_eq!(code(&resp), (401, "password_required".into()));
    let form = resp.text().await.unwrap();
    let csrf =
        form.split("name=\"csrf\" value=\"").nth(1).and_then(|r| r.split('"').next()).expect("csrf field");
    assert!(form.contains("type=\"password\""));

    let post = |password: &str, csrf: &str| {
        let body = format!("password={}&csrf={csrf}", password.replace(' ', "+"));
        p.stack
            .edge
            .client()
            .post(p.url(&path))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("sec-fetch-mode", "navigate")
            .body(body)
            .send()
    };
    let resp = post("wrong guess", csrf).await.unwrap();
    assert_eq!(code(&resp), (401, "password_required".into()));
    assert!(resp.text().await.unwrap().contains("did not work"));
    let resp = post("open sesame", "1.forged").await.unwrap();
    assert_eq!(code(&resp), (401, "password_required".into()), "a forged CSRF token is refused");

    let resp = post("open sesame", csrf).await.unwrap();
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()["location"], "/page?x=1", "the token leaves the address bar");
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.contains("Partitioned") && cookie.contains("HttpOnly"));
    let session = cookie.split(';').next().unwrap();
    assert!(!session.contains(token), "the session cookie is not the share token");
    let resp = p.get("/page?x=1", &[("cookie", session)]).await;
    assert_eq!(resp.status(), 200);
    let echo: Value = resp.json().await.unwrap();
    assert_eq!(header(&echo, "cookie"), None, "the session cookie is not passed on");

    // Revoking the share ends the session too.
    p.tenant.ok("DELETE", &format!("/v1/shares/{}", share["id"].as_str().unwrap()), None, 204).await;
    let start = Instant::now();
    while p.get("/page", &[("cookie", session)]).await.status() == 200 {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "revoking the share did not end its sessions within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn rotated_sandbox_token_stops_working_within_1s() {
    let p = Private::start().await;
    assert_eq!(p.get("/", &[("x-portico-preview-token", &p.sandbox_token)]).await.status(), 200);
    let rotated =
        p.tenant.ok("POST", &format!("/v1/sandboxes/{}/preview-auth/rotate", p.id), None, 200).await;
    let new = rotated["preview_auth_token"].as_str().unwrap();
    assert_eq!(
        p.get("/", &[("x-portico-preview-token", new)]).await.status(),
        200,
        "the new token works at once"
    );
    let start = Instant::now();
    while p.get("/", &[("x-portico-preview-token", &p.sandbox_token)]).await.status() == 200 {
        assert!(start.elapsed() < Duration::from_secs(1), "rotation not in force within 1 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn another_sandboxes_token_does_not_open_this_one() {
    let p = Private::start().await;
    let other = p
        .tenant
        .sandbox(json!({"address": p.fake.addr.ip().to_string(), "preview_auth": {"token": "auto"}}))
        .await;
    p.stack.synced().await;
    let resp =
        p.get("/", &[("x-portico-preview-token", other["preview_auth_token"].as_str().unwrap())]).await;
    assert_eq!(code(&resp), (401, "token_invalid".into()));
}

#[tokio::test]
async fn websocket_upgrades_authenticate_like_any_request() {
    let p = Private::start().await;
    let token = p.mint(json!({"sandbox_id": p.id})).await["token"].as_str().unwrap().to_string();
    let connect = |path: String| {
        let mut req = format!("ws://{}{path}", p.stack.edge.addr).into_client_request().unwrap();
        req.headers_mut().insert("host", p.host().parse().unwrap());
        tokio_tungstenite::connect_async(req)
    };
    let (mut ws, _) = connect(format!("/ws?token={token}")).await.expect("upgrade with a token");
    assert!(ws.next().await.expect("message").is_ok());
    match connect("/ws".into()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 401, "never a redirect")
        }
        other => panic!(
            "an upgrade without a credential must be refused, got {:?}",
            other.map(|(_, r)| r.status())
        ),
    }
}

#[tokio::test]
async fn cors_preflight_needs_the_sandbox_to_allow_it_and_never_wakes() {
    let p = Private::start().await;
    let resp = p
        .stack
        .edge
        .client()
        .request(reqwest::Method::OPTIONS, p.url("/api"))
        .header("origin", "https://app.acme.dev")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(code(&resp), (401, "token_required".into()));

    // A sandbox that allows preflights gets them forwarded, still with no credential.
    p.tenant
        .ok("PATCH", &format!("/v1/sandboxes/{}", p.id), Some(json!({"allow_preflight": true})), 200)
        .await;
    p.stack.synced().await;
    let preflight = || {
        p.stack
            .edge
            .client()
            .request(reqwest::Method::OPTIONS, p.url("/api"))
            .header("origin", "https://app.acme.dev")
            .header("access-control-request-method", "POST")
            .send()
    };
    let resp = preflight().await.unwrap();
    assert_eq!(resp.status(), 200);
    let echo: Value = resp.json().await.unwrap();
    assert_eq!(echo["method"], "OPTIONS");
    // A plain OPTIONS (not a preflight) still needs a credential.
    let resp = p.stack.edge.client().request(reqwest::Method::OPTIONS, p.url("/api")).send().await.unwrap();
    assert_eq!(code(&resp), (401, "token_required".into()));
    // A hibernated sandbox is never woken by a preflight.
    p.tenant.ok("POST", &format!("/v1/sandboxes/{}/hibernate", p.id), None, 200).await;
    p.stack.synced().await;
    assert_eq!(code(&preflight().await.unwrap()), (401, "token_required".into()));
}

#[tokio::test]
async fn a_flood_of_random_tokens_makes_a_bounded_number_of_lookups() {
    let p = Private::start().await;
    // Lift the brute-force lock-out so that every token reaches the credential check.
    p.tenant
        .ok(
            "PUT",
            "/v1/tenant/rate-limits",
            Some(json!({
                "public_per_ip": {"rps": 1000000, "burst": 1000000},
                "private_per_token": {"rps": 1000000, "burst": 1000000},
                "auth_failures_per_ip": {"per_minute": 100000}
            })),
            200,
        )
        .await;
    p.stack.synced().await;
    let sent_before = p.stack.edge.metric("portico_credential_lookups_sent_total").await.unwrap_or(0.0);
    let start = Instant::now();
    let client = p.stack.edge.client();
    let url = p.url("/");
    let total = 10_000;
    let refused = futures_util::stream::iter(0..total)
        .map(|i| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let token = format!("ms_random{i:08}{}", "x".repeat(30));
                client
                    .get(&url)
                    .header("x-portico-preview-token", token)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            }
        })
        .buffer_unordered(32)
        .filter(|r| std::future::ready(matches!(r, Ok(401))))
        .count()
        .await;
    let secs = start.elapsed().as_secs_f64();
    let sent =
        p.stack.edge.metric("portico_credential_lookups_sent_total").await.unwrap_or(0.0) - sent_before;
    println!("flood: {total} random share tokens in {secs:.1} s, all refused: {refused}; look-ups sent to control: {sent}");
    assert_eq!(refused, total);
    // The budget is 50 a second (plus one second's worth at the start).
    assert!(sent <= 50.0 * (secs.ceil() + 2.0), "{sent} look-ups in {secs:.1} s");
}
