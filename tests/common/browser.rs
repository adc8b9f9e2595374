//! What the browser tests share: `portico up` on loopback, and Debian's headless Chromium driven
//! through chromedriver.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder};
use serde_json::json;

use super::{free_port, portico, wait_until, Api, Proc, ADMIN_KEY};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

pub struct Driver {
    child: Child,
    _profile: tempfile::TempDir,
    pub client: Client,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Chromium runs in chromedriver's process group: a test that panics before closing the session
        // must not leave a browser behind.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-s", "KILL", "--", &group]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn browser() -> Driver {
    assert!(
        std::path::Path::new(CHROMIUM).exists() && std::path::Path::new(CHROMEDRIVER).exists(),
        "this test needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; .ci/run does)"
    );
    // fantoccini's client is built for TLS too; one crypto provider must be chosen for the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let port = free_port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("chromedriver starts");
    let profile = tempfile::tempdir().expect("profile dir");
    let caps = json!({
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1000,800", format!("--user-data-dir={}", profile.path().display()),
            ]
        }
    });
    let caps = caps.as_object().cloned().expect("object");
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let client = loop {
        match ClientBuilder::rustls().expect("tls").capabilities(caps.clone()).connect(&url).await {
            Ok(c) => break c,
            Err(e) if Instant::now() > deadline => panic!("chromedriver did not start: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    Driver { child, _profile: profile, client }
}

/// `portico up` with its own data dir and ports: the edge answers on `127.0.0.1:<http>`, which is where
/// browsers send `*.localhost`.
pub struct Up {
    _proc: Proc,
    _dir: tempfile::TempDir,
    pub http: u16,
    pub api: Api,
}

pub async fn start_up() -> Up {
    let dir = tempfile::tempdir().expect("tempdir");
    let (http, control, metrics) = (free_port(), free_port(), free_port());
    let child = portico()
        .arg("up")
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--http", &format!("127.0.0.1:{http}")])
        .args(["--control-listen", &format!("127.0.0.1:{control}")])
        .args(["--metrics", &format!("127.0.0.1:{metrics}")])
        .spawn()
        .expect("spawn up");
    let api = Api::admin(&format!("http://127.0.0.1:{control}"));
    let (url, http_client) = (format!("{}/v1/tenants", api.url), reqwest::Client::new());
    wait_until("portico up", Duration::from_secs(30), || {
        let (url, c) = (url.clone(), http_client.clone());
        async move { c.get(&url).bearer_auth(ADMIN_KEY).send().await.is_ok() }
    })
    .await;
    Up { _proc: Proc { child, name: "up" }, _dir: dir, http, api }
}
