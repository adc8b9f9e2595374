//! The iframe flow in a real browser (Debian's headless Chromium through chromedriver) against
//! `portico up`: a platform page on another origin embeds a private preview with an `mp_` token.
//! Screenshots of the branded error pages land in `target/test-artifacts/screenshots/`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use axum::extract::Query;
use axum::response::Html;
use axum::Router;
use common::browser::{browser, start_up};
use common::sandbox::FakeSandbox;
use common::{free_port, sandbox_ip};
use fantoccini::{Client, Locator};
use serde_json::{json, Value};

/// The platform's own page: embeds `src` in an iframe and records every message the frame posts.
async fn parent_site() -> (u16, tokio::task::JoinHandle<()>) {
    async fn page(Query(q): Query<std::collections::HashMap<String, String>>) -> Html<String> {
        let src = q.get("src").cloned().unwrap_or_default().replace('"', "&quot;");
        Html(format!(
            r#"<!doctype html><html><body><h1>Platform</h1>
<script>window.__messages=[];addEventListener("message",e=>window.__messages.push(e.data));</script>
<iframe id="preview" src="{src}" width="800" height="500"></iframe></body></html>"#
        ))
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let app = Router::new().fallback(page);
    (
        port,
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        }),
    )
}

/// The text of the iframe's document, read from inside the frame.
async fn frame_text(c: &Client) -> String {
    c.enter_frame(0).await.expect("enter frame");
    let text = c.find(Locator::Css("body")).await;
    let text = match text {
        Ok(body) => body.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    c.enter_parent_frame().await.expect("back to parent");
    text
}

async fn wait_for_frame_text(c: &Client, what: &str, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = frame_text(c).await;
        if text.contains(needle) {
            return text;
        }
        assert!(Instant::now() < deadline, "{what}: the frame never showed {needle:?}; it shows {text:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn screenshots_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts/screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

#[tokio::test]
async fn an_embedded_private_preview_works_in_a_real_browser() {
    let up = start_up().await;
    let (parent_port, _parent) = parent_site().await;
    let tenant = up.api.tenant("acme").await;
    let parent_origin = format!("http://app.localhost:{parent_port}");
    tenant.ok("PUT", "/v1/tenant/frame-ancestors", Some(json!({"sources": [parent_origin]})), 200).await;
    tenant
        .ok(
            "PUT",
            "/v1/tenant/branding",
            Some(json!({"logo_url": "https://cdn.acme.dev/logo.svg", "accent_color": "#0f766e",
                        "support_url": "https://acme.dev/help", "product_name": "Acme Studio"})),
            200,
        )
        .await;
    let fake = FakeSandbox::start(sandbox_ip(), 0).await;
    let sb = tenant.sandbox(json!({"address": fake.addr.ip().to_string()})).await;
    let id = sb["id"].as_str().unwrap();
    let mint = |ttl: u64| {
        tenant.ok(
            "POST",
            "/v1/preview-tokens",
            Some(json!({"sandbox_id": id, "port": fake.port(), "ttl_seconds": ttl})),
            201,
        )
    };
    let minted: Value = mint(600).await;
    let embed = minted["embed_url"].as_str().unwrap().replace(":8080", &format!(":{}", up.http));
    assert!(embed.contains("?token=mp_"));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let driver = browser().await;
    let c = &driver.client;
    let parent = |src: &str, origin: &str| format!("{origin}/parent?src={}", urlencode(src));

    // 1. The preview renders inside the iframe of an allowed parent, through the token in the query.
    c.goto(&parent(&embed, &parent_origin)).await.expect("parent loads");
    let text = wait_for_frame_text(c, "first load", "\"uri\"").await;
    assert!(!text.contains("mp_"), "the sandbox must not see the token: {text}");
    // The edge answered the navigation with a redirect: the token is gone from the frame's address, and
    // so from its history and every `Referer` the page sends.
    c.enter_frame(0).await.expect("enter frame");
    let href = c.execute("return location.href", vec![]).await.expect("frame location");
    c.enter_parent_frame().await.expect("parent");
    assert!(!href.as_str().unwrap_or_default().contains("token="), "token left in the address bar: {href}");

    // 2. A second navigation inside the frame works without the token: the session cookie carries it.
    c.enter_frame(0).await.expect("enter frame");
    c.execute("location.href = '/second-page?x=1'", vec![]).await.expect("navigate in frame");
    c.enter_parent_frame().await.expect("parent");
    let text = wait_for_frame_text(c, "second navigation", "/second-page?x=1").await;
    assert!(!text.contains("token_required"), "{text}");

    // 3. A parent origin that is not in frame-ancestors is blocked by the browser.
    let evil = format!("http://evil.localhost:{parent_port}");
    c.goto(&parent(&embed, &evil)).await.expect("evil parent loads");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let text = frame_text(c).await;
    assert!(!text.contains("\"uri\""), "the browser must refuse to render the preview under {evil}: {text}");

    // 4. With a 2 s token the parent hears `portico:preview:expired` once it has run out.
    let short = mint(2).await;
    let short_embed = short["embed_url"].as_str().unwrap().replace(":8080", &format!(":{}", up.http));
    c.goto(&parent(&short_embed, &parent_origin)).await.expect("parent loads");
    wait_for_frame_text(c, "short token", "\"uri\"").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    c.enter_frame(0).await.expect("enter frame");
    c.execute("location.reload()", vec![]).await.expect("reload");
    c.enter_parent_frame().await.expect("parent");
    let deadline = Instant::now() + Duration::from_secs(10);
    let message = loop {
        let messages = c.execute("return window.__messages", vec![]).await.expect("messages");
        if let Some(m) =
            messages.as_array().and_then(|a| a.iter().find(|m| m["type"] == "portico:preview:expired"))
        {
            break m.clone();
        }
        assert!(Instant::now() < deadline, "no expiry message reached the parent: {messages}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(message["sandbox"], id);
    assert_eq!(message["port"], fake.port());

    // 5. Branded error pages, for a person to look at.
    let dir = screenshots_dir();
    let host = |port: u16| format!("http://{port}-{id}.sandbox.localhost:{}/", up.http);
    let closed = free_port();
    let public =
        tenant.sandbox(json!({"address": fake.addr.ip().to_string(), "default_visibility": "public"})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (name, url) in [
        ("401-token-required", host(fake.port())),
        ("404-not-found", format!("http://nosuch01.preview.localhost:{}/", up.http)),
        (
            "502-upstream-unreachable",
            format!("http://{closed}-{}.sandbox.localhost:{}/", public["id"].as_str().unwrap(), up.http),
        ),
    ] {
        c.goto(&url).await.expect("error page loads");
        let body = c.find(Locator::Css("body")).await.expect("body").text().await.expect("text");
        let png = c.screenshot().await.expect("screenshot");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
        if name != "404-not-found" {
            assert!(body.contains("Acme Studio"), "{name} is branded: {body}");
            assert!(!body.to_lowercase().contains("portico"), "{name} never names Portico: {body}");
        }
    }
    driver.client.clone().close().await.expect("close browser");
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
