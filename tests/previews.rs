//! Previews end to end: control and edge as separate processes, fake sandboxes on their own addresses.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::sandbox::{header, FakeSandbox};
use common::{sandbox_ip, until_status, Stack};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

async fn public_sandbox(stack: &Stack) -> (common::Api, FakeSandbox, String) {
    let tenant = stack.admin.tenant("acme").await;
    tenant
        .ok("PUT", "/v1/tenant/frame-ancestors", Some(json!({"sources": ["https://app.acme.dev"]})), 200)
        .await;
    let fake = FakeSandbox::start(sandbox_ip(), 0).await;
    let sb =
        tenant.sandbox(json!({"address": fake.addr.ip().to_string(), "default_visibility": "public"})).await;
    stack.synced().await;
    (tenant, fake, sb["id"].as_str().expect("id").to_string())
}

#[tokio::test]
async fn public_sandbox_port_is_proxied_with_host_unchanged_and_forwarded_headers() {
    let stack = Stack::start().await;
    let (_, fake, id) = public_sandbox(&stack).await;
    let host = format!("{}-{id}.sandbox.localhost", fake.port());
    let resp = stack
        .edge
        .client()
        .get(stack.edge.url(&host, "/some/path?x=1&y=2"))
        .header("host", format!("{}:{}", host.to_uppercase(), stack.edge.addr.port()))
        .header("origin", "https://elsewhere.example")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert_eq!(h["content-security-policy"], "default-src 'self'; frame-ancestors https://app.acme.dev");
    assert!(h.get("x-frame-options").is_none(), "X-Frame-Options must be removed");
    assert!(h.keys().all(|k| !k.as_str().starts_with("access-control-")), "no CORS headers added: {h:?}");
    let echo: Value = resp.json().await.expect("json");
    assert_eq!(echo["uri"], "/some/path?x=1&y=2");
    let want_host = format!("{}:{}", host.to_uppercase(), stack.edge.addr.port());
    assert_eq!(header(&echo, "host"), Some(want_host.as_str()), "Host passes unchanged");
    assert_eq!(header(&echo, "x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(header(&echo, "x-forwarded-proto"), Some("http"));
    assert_eq!(header(&echo, "x-forwarded-host"), Some(want_host.as_str()));
}

#[tokio::test]
async fn a_sandbox_response_cannot_widen_its_tenants_policies() {
    let stack = Stack::start().await;
    let (_, fake, id) = public_sandbox(&stack).await;
    let host = format!("{}-{id}.sandbox.localhost", fake.port());
    let q = |h: &str| format!("h={}", h.replace('%', "%25").replace('&', "%26").replace(' ', "%20"));
    let query = [
        q("content-security-policy: default-src *, frame-ancestors *"),
        q("content-security-policy: script-src 'self'; frame-ancestors https://evil.example"),
        q("x-frame-options: ALLOWALL"),
        q("set-cookie: theme=dark; Domain=sandbox.localhost; Path=/; SameSite=Lax"),
        q("set-cookie: preview_session=forged; Path=/"),
        q("set-cookie: PREVIEW_SESSION=forged2"),
    ]
    .join("&");
    let resp = stack
        .edge
        .client()
        .get(stack.edge.url(&host, &format!("/respond?{query}")))
        .header("forwarded", "for=1.2.3.4")
        .header("x-real-ip", "1.2.3.4")
        .header("x-forwarded-port", "443")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let h = resp.headers();
    let csp: Vec<&str> = h.get_all("content-security-policy").iter().map(|v| v.to_str().unwrap()).collect();
    let fa = "frame-ancestors https://app.acme.dev";
    assert_eq!(csp, vec![format!("default-src *; {fa}, {fa}"), format!("script-src 'self'; {fa}")]);
    assert!(h.get("x-frame-options").is_none());
    let cookies: Vec<&str> = h.get_all("set-cookie").iter().map(|v| v.to_str().unwrap()).collect();
    assert_eq!(cookies, vec!["theme=dark; Path=/; SameSite=Lax"], "host-only, and never the edge's session");

    // Client headers that claim to say who the client is never reach the sandbox.
    let resp =
        stack.edge.client().get(stack.edge.url(&host, "/")).header("x-real-ip", "1.2.3.4").send().await;
    let echo: Value = resp.expect("request").json().await.expect("json");
    assert_eq!(header(&echo, "x-real-ip"), None);
}

#[tokio::test]
async fn a_port_that_does_not_speak_http_is_upstream_bad_response_not_unreachable() {
    let stack = Stack::start().await;
    let tenant = stack.admin.tenant("acme").await;
    let ip = common::sandbox_ip();
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let _server = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        while let Ok((mut conn, _)) = listener.accept().await {
            let _ = conn.write_all(b"SSH-2.0-OpenSSH_9.2\r\n").await;
        }
    });
    let sb = tenant.sandbox(json!({"address": ip.to_string(), "default_visibility": "public"})).await;
    stack.synced().await;
    let host = format!("{port}-{}.sandbox.localhost", sb["id"].as_str().unwrap());
    let resp = stack
        .edge
        .client()
        .get(stack.edge.url(&host, "/"))
        .header("sec-fetch-mode", "navigate")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["x-edge-error"], "upstream_bad_response");
    let page = resp.text().await.unwrap();
    assert!(page.contains("did not answer in HTTP"), "{page}");
    assert!(!page.contains("Nothing is listening"), "{page}");
}

#[tokio::test]
async fn second_sandbox_host_form_and_preview_slugs_route() {
    let stack = Stack::start().await;
    let (tenant, fake, id) = public_sandbox(&stack).await;
    let client = stack.edge.client();
    let url = stack.edge.url(&format!("sb-{id}-p{}.workers.localhost.", fake.port()), "/");
    assert_eq!(client.get(url).send().await.expect("req").status(), 200);

    let p = tenant
        .ok("POST", &format!("/v1/sandboxes/{id}/previews"), Some(json!({"port": fake.port()})), 201)
        .await;
    assert_eq!(p["visibility"], "public", "a preview follows its sandbox's default visibility");
    let slug = p["slug"].as_str().expect("slug");
    let url = stack.edge.url(&format!("{slug}.preview.localhost"), "/");
    until_status(&client, &url, 200, Duration::from_secs(1)).await;
}

#[tokio::test]
async fn unknown_hosts_get_404_not_found_as_json_or_html() {
    let stack = Stack::start().await;
    let client = stack.edge.client();
    for host in ["nothing.example.com", "3000-nosuch01.sandbox.localhost", "nosuch01.preview.localhost"] {
        let resp = client.get(stack.edge.url(host, "/")).send().await.expect("req");
        assert_eq!(resp.status(), 404, "{host}");
        assert_eq!(resp.headers()["x-edge-error"], "not_found");
        assert_eq!(resp.headers()["cache-control"], "no-store");
        assert!(resp.headers()["content-security-policy"].to_str().unwrap().starts_with("frame-ancestors"));
        let v: Value = resp.json().await.expect("json body for API clients");
        assert_eq!(v["error"]["code"], "not_found");
    }
    let resp = client
        .get(stack.edge.url("nothing.example.com", "/"))
        .header("sec-fetch-mode", "navigate")
        .header("accept", "text/html")
        .send()
        .await
        .expect("req");
    assert_eq!(resp.status(), 404);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(resp.text().await.expect("text").contains("<!doctype html>"));
}

#[tokio::test]
async fn deleted_preview_and_replaced_slug_stop_routing_within_1s() {
    let stack = Stack::start().await;
    let (tenant, fake, id) = public_sandbox(&stack).await;
    let client = stack.edge.client();
    let path = format!("/v1/sandboxes/{id}/previews");
    let create = || tenant.ok("POST", &path, Some(json!({"port": fake.port()})), 201);
    let first = create().await;
    let first_url = stack.edge.url(&format!("{}.preview.localhost", first["slug"].as_str().unwrap()), "/");
    until_status(&client, &first_url, 200, Duration::from_secs(1)).await;

    // Creating a preview on the same port rotates the URL: the old slug must stop routing.
    let second = create().await;
    assert_ne!(first["slug"], second["slug"]);
    let second_url = stack.edge.url(&format!("{}.preview.localhost", second["slug"].as_str().unwrap()), "/");
    until_status(&client, &first_url, 404, Duration::from_secs(1)).await;
    until_status(&client, &second_url, 200, Duration::from_secs(1)).await;

    tenant.ok("DELETE", &format!("/v1/previews/{}", second["id"].as_str().unwrap()), None, 204).await;
    until_status(&client, &second_url, 404, Duration::from_secs(1)).await;

    // Deleting the sandbox takes its port hosts with it.
    let port_url = stack.edge.url(&format!("{}-{id}.sandbox.localhost", fake.port()), "/");
    until_status(&client, &port_url, 200, Duration::from_secs(1)).await;
    tenant.ok("DELETE", &format!("/v1/sandboxes/{id}"), None, 204).await;
    until_status(&client, &port_url, 404, Duration::from_secs(1)).await;
}

#[tokio::test]
async fn nothing_listening_is_502_naming_the_port_and_slow_app_is_504() {
    let dir = tempfile::tempdir().expect("tempdir");
    let control = common::Control::start(&dir.path().join("c")).await;
    let edge =
        common::Edge::start_with(&control.url, &dir.path().join("e"), &["--upstream-timeout", "1"]).await;
    let stack = Stack { admin: common::Api::admin(&control.url), dir, control, edge };
    let (_, fake, id) = public_sandbox(&stack).await;
    let client = stack.edge.client();

    let closed_port = common::free_port();
    let resp = client
        .get(stack.edge.url(&format!("{closed_port}-{id}.sandbox.localhost"), "/"))
        .header("accept", "text/html")
        .send()
        .await
        .expect("req");
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["x-edge-error"], "upstream_unreachable");
    assert_eq!(resp.headers()["content-security-policy"], "frame-ancestors https://app.acme.dev");
    let page = resp.text().await.expect("page");
    assert!(page.contains(&format!("port {closed_port}")));
    assert!(page.contains("0.0.0.0"));
    assert!(page.contains("http-equiv=\"refresh\""), "the page retries by itself");

    let resp = client
        .get(stack.edge.url(&format!("{}-{id}.sandbox.localhost", fake.port()), "/slow"))
        .send()
        .await
        .expect("req");
    assert_eq!(resp.status(), 504);
    assert_eq!(resp.headers()["x-edge-error"], "upstream_timeout");
}

#[tokio::test]
async fn websocket_upgrade_is_proxied_both_ways_with_host_unchanged() {
    let stack = Stack::start().await;
    let (_, fake, id) = public_sandbox(&stack).await;
    let host = format!("{}-{id}.sandbox.localhost", fake.port());
    let mut req = format!("ws://{}/ws", stack.edge.addr).into_client_request().expect("ws request");
    req.headers_mut().insert("host", host.parse().expect("host"));
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.expect("upgrade through the edge");
    assert_eq!(resp.status(), 101);
    let first = ws.next().await.expect("message").expect("ok");
    assert_eq!(first, Message::Text(format!("host={host}").into()));
    for i in 0..5 {
        ws.send(Message::Text(format!("hot-reload {i}").into())).await.expect("send");
        let back = ws.next().await.expect("echo").expect("ok");
        assert_eq!(back, Message::Text(format!("hot-reload {i}").into()));
    }
    ws.close(None).await.expect("close");
}

#[tokio::test]
async fn branded_error_pages_carry_tenant_branding_and_no_portico() {
    let stack = Stack::start().await;
    let (tenant, _fake, id) = public_sandbox(&stack).await;
    tenant
        .ok(
            "PUT",
            "/v1/tenant/branding",
            Some(json!({
                "logo_url": "https://cdn.acme.dev/logo.svg",
                "accent_color": "#12ab34",
                "support_url": "https://acme.dev/support",
                "product_name": "Acme <Builder>"
            })),
            200,
        )
        .await;
    stack.synced().await;
    let port = common::free_port();
    let resp = stack
        .edge
        .client()
        .get(stack.edge.url(&format!("{port}-{id}.sandbox.localhost"), "/"))
        .header("sec-fetch-mode", "navigate")
        .send()
        .await
        .expect("req");
    assert_eq!(resp.status(), 502);
    let page = resp.text().await.expect("page");
    assert!(page.contains("https://cdn.acme.dev/logo.svg"));
    assert!(page.contains("#12ab34"));
    assert!(page.contains("https://acme.dev/support"));
    assert!(page.contains("Acme &lt;Builder&gt;"), "tenant strings are escaped");
    assert!(!page.to_lowercase().contains("portico"));
}

#[tokio::test]
async fn metrics_count_requests_with_bounded_labels() {
    let stack = Stack::start().await;
    let (_, fake, id) = public_sandbox(&stack).await;
    let client = stack.edge.client();
    let secret = "supersecrettoken123456";
    for _ in 0..3 {
        let url =
            stack.edge.url(&format!("{}-{id}.sandbox.localhost", fake.port()), &format!("/p?token={secret}"));
        client.get(url).send().await.expect("req");
    }
    client.get(stack.edge.url("unknown.example.com", "/")).send().await.expect("req");
    let text = stack.edge.metrics_text().await;
    let tenant_id = common::Api::admin(&stack.control.url)
        .ok("GET", "/v1/tenants", None, 200)
        .await
        .as_array()
        .and_then(|a| a.first().cloned())
        .expect("tenant")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let line =
        format!("portico_requests_total{{route=\"sandbox_port\",status=\"200\",tenant=\"{tenant_id}\"}} 3");
    assert!(text.contains(&line), "{line} in\n{text}");
    assert!(text.contains("portico_upstream_seconds_bucket"));
    assert!(text.contains("portico_config_age_seconds"));
    assert!(stack.edge.config_version().await > 0);
    for leak in [secret, "127.0.0", "localhost", "example.com", id.as_str(), "/p"] {
        assert!(!text.contains(leak), "metrics must not contain {leak}");
    }
}

#[tokio::test]
async fn private_sandbox_needs_its_token_and_the_upstream_never_sees_it() {
    let stack = Stack::start().await;
    let tenant = stack.admin.tenant("acme").await;
    let fake = FakeSandbox::start(sandbox_ip(), 0).await;
    let sb = tenant
        .sandbox(json!({"address": fake.addr.ip().to_string(), "preview_auth": {"token": "auto"}}))
        .await;
    let token = sb["preview_auth_token"].as_str().expect("token shown once").to_string();
    let id = sb["id"].as_str().unwrap();
    stack.synced().await;
    let client = stack.edge.client();
    let host = format!("{}-{id}.sandbox.localhost", fake.port());

    let resp = client.get(stack.edge.url(&host, "/")).send().await.expect("req");
    assert_eq!(
        (resp.status().as_u16(), resp.headers()["x-edge-error"].to_str().unwrap()),
        (401, "token_required")
    );
    let resp = client.get(stack.edge.url(&host, "/?token=wrong-token-000000")).send().await.expect("req");
    assert_eq!(
        (resp.status().as_u16(), resp.headers()["x-edge-error"].to_str().unwrap()),
        (401, "token_invalid")
    );

    let resp = client
        .get(stack.edge.url(&host, &format!("/a?x=1&token={token}&y=2")))
        .header("cookie", "theme=dark")
        .send()
        .await
        .expect("req");
    assert_eq!(resp.status(), 200);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.contains("HttpOnly") && cookie.contains("Secure") && cookie.contains("SameSite=None"));
    assert!(cookie.contains("Partitioned") && cookie.contains("Path=/") && cookie.contains("Max-Age="));
    let echo: Value = resp.json().await.expect("json");
    assert_eq!(echo["uri"], "/a?x=1&y=2");
    assert!(!echo.to_string().contains(&token), "the sandbox must never see the credential");

    // The cookie alone opens later navigations, and is not passed on either.
    let session = cookie.split(';').next().unwrap().to_string();
    let resp = client
        .get(stack.edge.url(&host, "/next"))
        .header("cookie", format!("theme=dark; {session}"))
        .send()
        .await
        .expect("req");
    assert_eq!(resp.status(), 200);
    let echo: Value = resp.json().await.expect("json");
    assert_eq!(header(&echo, "cookie"), Some("theme=dark"));
    assert!(!echo.to_string().contains(&token));

    for name in ["x-portico-preview-token", "x-oc-preview-token", "x-miosa-preview-token", "authorization"] {
        let value = if name == "authorization" { format!("Bearer {token}") } else { token.clone() };
        let resp = client.get(stack.edge.url(&host, "/h")).header(name, value).send().await.expect("req");
        assert_eq!(resp.status(), 200, "{name}");
        let echo: Value = resp.json().await.expect("json");
        assert!(!echo.to_string().contains(&token), "{name} reached the sandbox");
    }
}

#[tokio::test]
async fn logs_name_requests_but_never_a_credential() {
    let stack = Stack::start().await;
    let (_, fake, id) = public_sandbox(&stack).await;
    let client = stack.edge.client();
    let secret = "credential-in-query-0123456789";
    let closed = common::free_port();
    for port in [fake.port(), closed] {
        let url = stack.edge.url(
            &format!("{port}-{id}.sandbox.localhost"),
            &format!("/logged?token={secret}&preview_token={secret}"),
        );
        client.get(url).header("x-portico-preview-token", secret).send().await.expect("req");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = stack.edge.log();
    assert!(log.contains("/logged"), "one access-log line per request:\n{log}");
    assert!(!log.contains(secret), "a credential reached the log:\n{log}");
}

#[tokio::test]
async fn access_log_file_gets_one_json_line_per_request_without_query_or_credential() {
    let logs = tempfile::tempdir().expect("tempdir");
    let path = logs.path().join("access.log");
    let stack = Stack::start_with(&["--access-log", path.to_str().expect("utf-8 path")]).await;
    let tenant = stack.admin.tenant("acme").await;
    let fake = FakeSandbox::start(sandbox_ip(), 0).await;
    let sb = tenant
        .sandbox(json!({"address": fake.addr.ip().to_string(), "preview_auth": {"token": "auto"}}))
        .await;
    let token = sb["preview_auth_token"].as_str().expect("preview_auth_token").to_string();
    stack.synced().await;
    let host = format!("{}-{}.sandbox.localhost", fake.port(), sb["id"].as_str().expect("id"));
    let client = stack.edge.client();

    let sent = [
        (client.get(stack.edge.url(&host, &format!("/in-query?token={token}&x=1"))), 200),
        (
            client
                .get(stack.edge.url(&host, "/in-header?q=private"))
                .header("x-portico-preview-token", &token),
            200,
        ),
        (client.get(stack.edge.url(&host, "/without?preview_token=wrong-0123456789")), 401),
        (client.get(stack.edge.url("nothing-here.localhost", "/unknown")), 404),
    ];
    for (req, want) in sent {
        assert_eq!(req.send().await.expect("request").status(), want);
    }

    let mut text = String::new();
    common::wait_until("four access-log lines", Duration::from_secs(5), || {
        text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines = text.lines().count();
        async move { lines >= 4 }
    })
    .await;
    assert!(!text.contains(&token) && !text.contains("wrong-0123456789"), "a credential was logged:\n{text}");
    assert!(!text.contains('?') && !text.contains("private"), "a query string was logged:\n{text}");
    let lines: Vec<Value> =
        text.lines().map(|l| serde_json::from_str(l).expect("one JSON object a line")).collect();
    let got: Vec<(&str, u64)> = lines
        .iter()
        .map(|l| (l["path"].as_str().unwrap_or("?"), l["status"].as_u64().unwrap_or(0)))
        .collect();
    assert_eq!(got, [("/in-query", 200), ("/in-header", 200), ("/without", 401), ("/unknown", 404)]);
    let first = &lines[0];
    assert_eq!(first["method"], "GET");
    assert_eq!(first["client_ip"], "127.0.0.1");
    assert_eq!(first["route"], "sandbox_port");
    assert!(first["host"].as_str().is_some_and(|h| h.starts_with(&host)), "{first}");
    assert!(
        first["tenant"].is_string() && first["upstream_ms"].is_number() && first["duration_ms"].is_number()
    );
    assert!(first["time"].as_str().is_some_and(|t| t.ends_with('Z') && t.contains('T')), "{first}");
    assert!(first.as_object().is_some_and(|o| o.contains_key("request_id")), "{first}");
    assert_eq!(lines[2]["error"], "token_invalid");
    assert!(lines[2]["upstream_ms"].is_null(), "a refused request never reached the sandbox");
    assert_eq!(lines[3]["error"], "not_found");
    assert!(lines[3]["tenant"].is_null());
}

/// Server-sent events and streamed pages (Next.js) must not wait in the edge's write buffer: the first
/// chunk reaches the client while the sandbox still holds the rest back, until the client has it.
#[tokio::test]
async fn a_streamed_response_reaches_the_client_chunk_by_chunk() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stack = Stack::start().await;
    let tenant = stack.admin.tenant("acme").await;
    let ip = common::sandbox_ip();
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (first_seen, mut release) = tokio::sync::mpsc::channel::<()>(1);
    let _server = tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let mut buf = vec![0u8; 4096];
            let _ = conn.read(&mut buf).await;
            let head =
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
            let _ = conn.write_all(format!("{head}d\r\ndata: first\n\n\r\n").as_bytes()).await;
            // The rest only once the client has the first event (or after 30 s, which fails the test).
            let _ = tokio::time::timeout(Duration::from_secs(30), release.recv()).await;
            let _ = conn.write_all(b"e\r\ndata: second\n\n\r\n0\r\n\r\n").await;
        }
    });
    let sb = tenant.sandbox(json!({"address": ip.to_string(), "default_visibility": "public"})).await;
    stack.synced().await;
    let host = format!("{port}-{}.sandbox.localhost", sb["id"].as_str().unwrap());
    let mut resp = stack.edge.client().get(stack.edge.url(&host, "/events")).send().await.expect("request");
    assert_eq!(resp.status(), 200);
    let first = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
        .await
        .expect("the first event arrives while the sandbox holds the second back")
        .expect("body")
        .expect("a chunk");
    assert_eq!(&first[..], b"data: first\n\n");
    first_seen.send(()).await.expect("origin waiting");
    let mut rest = Vec::new();
    while let Some(chunk) = resp.chunk().await.expect("body") {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(rest, b"data: second\n\n");
}
