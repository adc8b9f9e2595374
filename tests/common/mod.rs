//! The end-to-end harness: real `portico` processes and fake sandboxes on loopback, one set per test.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod browser;
pub mod sandbox;

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const ADMIN_KEY: &str = "mpa_test_admin_key_0123456789";
pub const EDGE_TOKEN: &str = "edge_test_token_0123456789";

/// A free port on 127.0.0.1 (bound and released: good enough on loopback for one test run).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A fresh 127.0.0.x address for each fake sandbox in this test binary.
pub fn sandbox_ip() -> IpAddr {
    static NEXT: AtomicU8 = AtomicU8::new(10);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("127.0.0.{n}").parse().expect("ip")
}

/// A child process killed when dropped, so a failing test leaves nothing running.
pub struct Proc {
    pub child: Child,
    pub name: &'static str,
}

impl Proc {
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for exit; returns how long it took.
    pub fn terminate(&mut self) -> Duration {
        let start = Instant::now();
        unsafe_kill(self.child.id(), "TERM");
        let _ = self.child.wait();
        start.elapsed()
    }
}

fn unsafe_kill(pid: u32, sig: &str) {
    let _ = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn portico() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_portico"));
    c.env("PORTICO_ADMIN_KEY", ADMIN_KEY)
        .env("PORTICO_EDGE_TOKEN", EDGE_TOKEN)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(child_stderr());
    c
}

/// Where a spawned process's log goes: nowhere, or this terminal with `PORTICO_TEST_LOGS=1`.
pub fn child_stderr() -> Stdio {
    if std::env::var_os("PORTICO_TEST_LOGS").is_some() {
        Stdio::inherit()
    } else {
        Stdio::null()
    }
}

/// Sends the process's log (stderr, at `info`) to `path`, for tests that read what was logged.
pub fn log_to(c: &mut Command, path: &Path) {
    let file = std::fs::File::create(path).expect("log file");
    c.env("RUST_LOG", "info").stderr(Stdio::from(file));
}

pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

pub struct Control {
    pub proc: Proc,
    pub url: String,
    pub port: u16,
    pub data_dir: PathBuf,
}

impl Control {
    pub async fn start(data_dir: &Path) -> Control {
        Self::start_on(data_dir, free_port()).await
    }

    pub async fn start_on(data_dir: &Path, port: u16) -> Control {
        Self::start_with(data_dir, port, &[]).await
    }

    /// With extra flags, e.g. `--wake-url`.
    pub async fn start_with(data_dir: &Path, port: u16, extra: &[&str]) -> Control {
        let child = portico()
            .args(["control", "--listen", &format!("127.0.0.1:{port}")])
            // Test sandboxes live on 127.0.0.x, outside control's default upstream policy.
            .args(["--upstream-allow", "127.0.0.0/8"])
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .spawn()
            .expect("spawn control");
        let url = format!("http://127.0.0.1:{port}");
        let c = Control {
            proc: Proc { child, name: "control" },
            url: url.clone(),
            port,
            data_dir: data_dir.into(),
        };
        let http = reqwest::Client::new();
        wait_until("control to answer", Duration::from_secs(20), || {
            let http = http.clone();
            let url = url.clone();
            async move { http.get(format!("{url}/v1/tenants")).bearer_auth(ADMIN_KEY).send().await.is_ok() }
        })
        .await;
        c
    }
}

pub struct Edge {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub metrics: SocketAddr,
    pub state_dir: PathBuf,
}

impl Edge {
    /// Everything the edge logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state_dir.with_extension("log")).unwrap_or_default()
    }

    pub async fn start(control_url: &str, state_dir: &Path) -> Edge {
        Self::start_with(control_url, state_dir, &[]).await
    }

    pub async fn start_with(control_url: &str, state_dir: &Path, extra: &[&str]) -> Edge {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        std::fs::create_dir_all(state_dir).expect("state dir");
        let mut cmd = portico();
        log_to(&mut cmd, &state_dir.with_extension("log"));
        let child = cmd
            .args(["edge", "--control-url", control_url, "--threads", "1"])
            .args(["--http", &addr.to_string(), "--metrics", &metrics.to_string()])
            .arg("--state-dir")
            .arg(state_dir)
            .args(extra)
            .spawn()
            .expect("spawn edge");
        let e = Edge { proc: Proc { child, name: "edge" }, addr, metrics, state_dir: state_dir.into() };
        let http = reqwest::Client::new();
        let url = format!("http://{metrics}/metrics");
        wait_until("edge metrics to answer", Duration::from_secs(20), || {
            let http = http.clone();
            let url = url.clone();
            async move { http.get(&url).send().await.is_ok() }
        })
        .await;
        e
    }

    /// A client that sends every host name to this edge, as DNS for `*.localhost` would.
    pub fn client(&self) -> reqwest::Client {
        client_to(self.addr)
    }

    pub fn url(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.addr.port())
    }

    pub async fn metrics_text(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.metrics))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }

    /// The value of one sample line (`name{labels}`) in the metrics text.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let text = self.metrics_text().await;
        text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
    }

    pub async fn config_version(&self) -> u64 {
        self.metric("portico_config_version").await.unwrap_or(0.0) as u64
    }
}

/// reqwest resolving every name to `addr`'s IP, keeping the URL's port.
pub fn client_to(addr: SocketAddr) -> reqwest::Client {
    builder_to(addr).build().expect("client")
}

/// The builder behind [`client_to`], for tests that need more (a source address, no pooling).
pub fn builder_to(addr: SocketAddr) -> reqwest::ClientBuilder {
    struct To(IpAddr);
    impl reqwest::dns::Resolve for To {
        fn resolve(&self, _: reqwest::dns::Name) -> reqwest::dns::Resolving {
            let addr = SocketAddr::new(self.0, 0);
            Box::pin(async move { Ok(Box::new(std::iter::once(addr)) as reqwest::dns::Addrs) })
        }
    }
    reqwest::Client::builder()
        .dns_resolver(Arc::new(To(addr.ip())))
        .redirect(reqwest::redirect::Policy::none())
}

/// The control API as a platform backend calls it.
#[derive(Clone)]
pub struct Api {
    pub url: String,
    pub key: String,
    http: reqwest::Client,
}

impl Api {
    pub fn admin(url: &str) -> Api {
        Api { url: url.into(), key: ADMIN_KEY.into(), http: reqwest::Client::new() }
    }

    pub fn with_key(&self, key: &str) -> Api {
        Api { url: self.url.clone(), key: key.into(), http: self.http.clone() }
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, format!("{}{path}", self.url)).bearer_auth(&self.key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("control reachable");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Asserts the status and returns the body.
    pub async fn ok(&self, method: &str, path: &str, body: Option<Value>, want: u16) -> Value {
        let (status, v) = self.call(method, path, body).await;
        assert_eq!(status, want, "{method} {path} → {v}");
        v
    }

    /// A new tenant and an API for it.
    pub async fn tenant(&self, name: &str) -> Api {
        let t = self.ok("POST", "/v1/tenants", Some(json!({"name": name})), 201).await;
        self.with_key(t["api_key"].as_str().expect("api_key"))
    }

    pub async fn sandbox(&self, body: Value) -> Value {
        self.ok("POST", "/v1/sandboxes", Some(body), 201).await
    }
}

/// A control and an edge on loopback with their own temp dirs.
pub struct Stack {
    pub dir: tempfile::TempDir,
    pub control: Control,
    pub edge: Edge,
    pub admin: Api,
}

impl Stack {
    pub async fn start() -> Stack {
        Self::start_with(&[]).await
    }

    /// With extra flags for the edge, e.g. `--access-log`.
    pub async fn start_with(edge_flags: &[&str]) -> Stack {
        let dir = tempfile::tempdir().expect("tempdir");
        let control = Control::start(&dir.path().join("control")).await;
        let edge = Edge::start_with(&control.url, &dir.path().join("edge"), edge_flags).await;
        let admin = Api::admin(&control.url);
        Stack { dir, control, edge, admin }
    }

    /// Waits until the edge has applied everything control has at this moment.
    pub async fn synced(&self) {
        let feed = self.feed_version().await;
        let edge = &self.edge;
        wait_until("edge to catch up", Duration::from_secs(5), || async move {
            edge.config_version().await >= feed
        })
        .await;
    }

    /// Control's current version, as an edge would reach it: the first answer may be control's cached
    /// snapshot, which can be some versions behind (`--feed-snapshot-lag`), so the changes after it count too.
    async fn feed_version(&self) -> u64 {
        let feed = |since: u64| async move {
            let resp = reqwest::Client::new()
                .get(format!("{}/v1/edge/feed?since={since}&wait=0", self.control.url))
                .bearer_auth(EDGE_TOKEN)
                .send()
                .await
                .expect("feed");
            resp.json::<Value>().await.expect("json")
        };
        let mut version = feed(0).await["snapshot"]["version"].as_u64().unwrap_or(0);
        loop {
            let next = feed(version).await;
            match next["version"].as_u64() {
                Some(v) if v > version => version = v,
                _ => return version,
            }
        }
    }
}

/// Polls `url` through `client` until its status is `want`; returns how long that took.
pub async fn until_status(client: &reqwest::Client, url: &str, want: u16, timeout: Duration) -> Duration {
    let start = Instant::now();
    wait_until(&format!("{url} to answer {want}"), timeout, || async {
        client.get(url).send().await.map(|r| r.status().as_u16() == want).unwrap_or(false)
    })
    .await;
    start.elapsed()
}
