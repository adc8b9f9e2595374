//! A real Vite dev server behind a private preview, in headless Chromium: the page renders, Vite's
//! hot-reload socket connects through the edge, an edit shows without a reload, and the dev server
//! never sees a credential. The app and its pinned Vite live in `tests/vite/` (`npm ci --prefix tests/vite`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::IpAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::browser::{browser, start_up};
use common::{client_to, sandbox_ip, until_status};
use fantoccini::{Client, Locator};
use serde_json::{json, Value};

const FIRST_TEXT: &str = "Rendered by main.js: hello from the sandbox";
const EDITED_TEXT: &str = "Rendered by main.js: edited while the page was open";

/// `tests/vite/`: the app, its config and (after `npm ci`) its `node_modules`.
fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vite")
}

/// A Vite dev server serving a temp copy of `tests/vite/app`, killed with its process group on drop.
struct Vite {
    child: Child,
    dir: tempfile::TempDir,
}

impl Vite {
    fn start(ip: IpAddr, port: u16) -> Vite {
        let vite = fixture().join("node_modules/vite/bin/vite.js");
        assert!(
            vite.exists(),
            "{} is missing: run `npm ci --prefix tests/vite` first (.ci/run does)",
            vite.display()
        );
        let dir = tempfile::tempdir().expect("tempdir");
        copy_dir(&fixture().join("app"), &dir.path().join("app"));
        let out = std::fs::File::create(dir.path().join("vite.out")).expect("vite output file");
        let child = Command::new("node")
            .arg(&vite)
            .arg("--config")
            .arg(fixture().join("vite.config.js"))
            .args(["--host", &ip.to_string(), "--port", &port.to_string(), "--strictPort"])
            .env("PORTICO_VITE_ROOT", dir.path().join("app"))
            .env("PORTICO_VITE_REQUEST_LOG", dir.path().join("requests.jsonl"))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone().expect("clone")))
            .stderr(Stdio::from(out))
            // Its own process group, so drop takes whatever node started with it.
            .process_group(0)
            .spawn()
            .expect("node starts (this test needs node 20.19+ on PATH)");
        Vite { child, dir }
    }

    fn source(&self, path: &str) -> PathBuf {
        self.dir.path().join("app").join(path)
    }

    /// What Vite printed, for failure messages.
    fn output(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("vite.out")).unwrap_or_default()
    }

    /// Every request, upgrade and accepted HMR socket the dev server saw (`vite.config.js` logs them).
    fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("requests.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }
}

impl Drop for Vite {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-s", "KILL", "--", &group]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

async fn body_text(c: &Client) -> String {
    match c.find(Locator::Css("body")).await {
        Ok(body) => body.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

async fn wait_for_text(c: &Client, vite: &Vite, what: &str, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = body_text(c).await;
        if text.contains(needle) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the page never showed {needle:?}; it shows {text:?}\nVite printed:\n{}",
            vite.output()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn header<'a>(entry: &'a Value, name: &str) -> &'a str {
    entry["headers"][name].as_str().unwrap_or("")
}

/// Where a credential could be hiding in a logged request, and the name to report it under.
fn credential_carriers(entry: &Value) -> Vec<(String, &str)> {
    let mut out = vec![("URL".to_string(), entry["url"].as_str().unwrap_or(""))];
    if let Some(headers) = entry["headers"].as_object() {
        out.extend(headers.iter().filter_map(|(n, v)| Some((format!("header {n}"), v.as_str()?))));
    }
    out
}

/// `mp_…` or `ms_…` starting a word: how our token formats look inside a URL or header.
fn looks_like_our_token(s: &str) -> bool {
    ["mp_", "ms_"]
        .iter()
        .any(|p| s.match_indices(p).any(|(i, _)| i == 0 || !s.as_bytes()[i - 1].is_ascii_alphanumeric()))
}

#[tokio::test]
async fn a_vite_dev_server_behind_a_private_preview_hot_reloads_in_a_real_browser() {
    let up = start_up().await;
    let tenant = up.api.tenant("vite").await;
    let ip = sandbox_ip();
    let port = std::net::TcpListener::bind((ip, 0)).expect("bind").local_addr().expect("addr").port();
    let sandbox = tenant.sandbox(json!({"address": ip.to_string(), "preview_auth": {"token": "auto"}})).await;
    let id = sandbox["id"].as_str().unwrap();
    let preview_auth = sandbox["preview_auth_token"].as_str().expect("a preview-auth token").to_string();
    let host = format!("{port}-{id}.sandbox.localhost:{}", up.http);

    let vite = Vite::start(ip, port);
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect((ip, port)).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "Vite never listened on {ip}:{port}; it printed:\n{}",
            vite.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Routed once the edge has the sandbox: 401 instead of 404, without reaching Vite.
    let edge = client_to(([127, 0, 0, 1], up.http).into());
    until_status(&edge, &format!("http://{host}/"), 401, Duration::from_secs(5)).await;

    let minted = tenant
        .ok(
            "POST",
            "/v1/preview-tokens",
            Some(json!({"sandbox_id": id, "port": port, "ttl_seconds": 600})),
            201,
        )
        .await;
    let token = minted["token"].as_str().unwrap();
    let embed = minted["embed_url"].as_str().unwrap().replace(":8080", &format!(":{}", up.http));
    assert!(embed.starts_with(&format!("http://{host}/?token=mp_")), "{embed}");

    let driver = browser().await;
    let c = &driver.client;
    c.goto(&embed).await.expect("the preview loads");

    // 1. The page renders: index.html, main.js and the module it imports, all through the edge.
    wait_for_text(c, &vite, "first load", FIRST_TEXT).await;

    // 2. Vite's hot-reload socket connects through the edge: Vite answered 101 to a request whose Host is
    //    the preview host. (When the socket through the edge fails, Vite's client falls back to the dev
    //    server's own address, which a browser on this machine can reach: that must not count.)
    let deadline = Instant::now() + Duration::from_secs(15);
    let hmr = loop {
        let requests = vite.requests();
        let connected: Vec<&Value> = requests.iter().filter(|r| r["kind"] == "hmr-connected").collect();
        if let Some(hmr) = connected.iter().find(|r| header(r, "host") == host) {
            break (*hmr).clone();
        }
        if Instant::now() > deadline {
            let upgrades: Vec<String> = requests
                .iter()
                .filter(|r| r["kind"] != "request")
                .map(|r| format!("{} {} host={}", r["kind"], r["url"], header(r, "host")))
                .collect();
            panic!(
                "Vite's HMR socket never connected through the edge ({host}); upgrades the dev server saw:\n{}\n\
                 (an `upgrade` through the edge without `?token=` means the edge took Vite's own token for a \
                 credential and removed it; an `hmr-connected` with host {ip}:{port} is Vite's client falling \
                 back to a direct connection)\nVite printed:\n{}",
                upgrades.join("\n"),
                vite.output()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let vite_token = hmr["url"].as_str().unwrap().split_once("token=").map(|(_, t)| t.to_string());
    let vite_token = vite_token.filter(|t| !t.is_empty()).expect("Vite checks its own ?token= on the socket");
    assert!(!header(&hmr, "x-forwarded-for").is_empty(), "the socket came through the edge: {hmr}");

    // 3. An edit shows without a reload: the marker set before it survives.
    c.execute("window.__marker = 'set before the edit'; return true", vec![]).await.expect("set marker");
    std::fs::write(
        vite.source("src/message.js"),
        "export const message = 'edited while the page was open'\n",
    )
    .expect("edit message.js");
    wait_for_text(c, &vite, "after the edit", EDITED_TEXT).await;
    let marker = c.execute("return window.__marker ?? null", vec![]).await.expect("read marker");
    assert_eq!(
        marker,
        json!("set before the edit"),
        "the edit reloaded the page instead of updating it in place"
    );

    // 4. The dev server never saw a credential: not in a URL, Referer, Cookie, Authorization or any header.
    let requests = vite.requests();
    let through_edge = requests.iter().filter(|r| header(r, "host") == host).count();
    assert!(through_edge >= 3, "the page, its modules and the socket came through the edge: {requests:?}");
    for entry in &requests {
        for (carrier, value) in credential_carriers(entry) {
            // Vite's socket token is random base64url: it may happen to contain `mp_`.
            let value = &value.replace(&vite_token, "");
            let found = [(token, "the mp_ token"), (preview_auth.as_str(), "the preview-auth token")]
                .into_iter()
                .find(|(secret, _)| value.contains(secret))
                .map(|(_, name)| name)
                .or_else(|| value.contains("preview_session").then_some("the session cookie"))
                .or_else(|| looks_like_our_token(value).then_some("an mp_/ms_ token"));
            if let Some(what) = found {
                panic!(
                    "the dev server saw {what} in the {carrier} of {} {}: {value:?}",
                    entry["kind"], entry["url"]
                );
            }
        }
    }

    // 5. The token left the address bar (SPEC §4: a navigation with the credential in the query is sent
    //    to the same URL without it, with the session cookie).
    let url = c.current_url().await.expect("current url");
    assert_eq!(url.as_str(), format!("http://{host}/"), "the token must not stay in the address bar");

    driver.client.clone().close().await.expect("close browser");
}
