//! Waking hibernated sandboxes end to end: real control and edge processes, and an orchestrator stand-in
//! (an HTTP server in this process) that checks control's signature, counts calls, takes its time, then
//! starts the sandbox on a new address.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use common::sandbox::FakeSandbox;
use common::{free_port, sandbox_ip, until_status, wait_until, Api, Control, Edge};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// What the orchestrator answers a correctly signed call with.
#[derive(Clone, Copy)]
enum Answer {
    /// Start the sandbox on a new address, listening on this port, and answer with the address.
    Start {
        port: u16,
    },
    Status(u16),
}

struct Orch {
    secret: Mutex<String>,
    delay: Mutex<Duration>,
    answer: Mutex<Answer>,
    calls: AtomicUsize,
    bad_signatures: AtomicUsize,
    /// Each signed call's body and signature header, for checking them independently.
    seen: Mutex<Vec<(Vec<u8>, String)>>,
    started: Mutex<Vec<FakeSandbox>>,
    /// When the last answer was sent.
    answered_at: Mutex<Option<Instant>>,
}

struct Orchestrator {
    url: String,
    state: Arc<Orch>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Orchestrator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Orchestrator {
    async fn start(delay: Duration, answer: Answer) -> Orchestrator {
        let state = Arc::new(Orch {
            secret: Mutex::new(String::new()),
            delay: Mutex::new(delay),
            answer: Mutex::new(answer),
            calls: AtomicUsize::new(0),
            bad_signatures: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
            started: Mutex::new(Vec::new()),
            answered_at: Mutex::new(None),
        });
        let app = axum::Router::new().route("/wake", axum::routing::post(wake)).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind orchestrator");
        let url = format!("http://{}/wake", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Orchestrator { url, state, task }
    }

    fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }

    fn set(&self, delay: Duration, answer: Answer) {
        *self.state.delay.lock().unwrap() = delay;
        *self.state.answer.lock().unwrap() = answer;
    }
}

fn hmac_hex(secret: &str, message: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    ring::hmac::sign(&key, message).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// How an orchestrator checks a call: `X-Portico-Signature: t=<unix secs>,v1=<hex>` where the hex is
/// HMAC-SHA256(secret, "<t>.<raw body>"), and `t` is recent.
fn signature_ok(secret: &str, header: &str, body: &[u8]) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<u64>().ok(),
            Some(("v1", v)) => v1 = Some(v),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else { return false };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let mut message = format!("{t}.").into_bytes();
    message.extend_from_slice(body);
    now.abs_diff(t) <= 300 && hmac_hex(secret, &message) == v1
}

async fn wake(State(orch): State<Arc<Orch>>, headers: HeaderMap, body: Bytes) -> axum::response::Response {
    let secret = orch.secret.lock().unwrap().clone();
    let signature = headers.get("x-portico-signature").and_then(|v| v.to_str().ok()).unwrap_or("");
    if !signature_ok(&secret, signature, &body) {
        orch.bad_signatures.fetch_add(1, Ordering::SeqCst);
        return StatusCode::UNAUTHORIZED.into_response();
    }
    orch.calls.fetch_add(1, Ordering::SeqCst);
    orch.seen.lock().unwrap().push((body.to_vec(), signature.to_string()));
    let delay = *orch.delay.lock().unwrap();
    let answer = *orch.answer.lock().unwrap();
    tokio::time::sleep(delay).await;
    let response = match answer {
        Answer::Status(status) => StatusCode::from_u16(status).unwrap().into_response(),
        Answer::Start { port } => {
            let sandbox = FakeSandbox::start(sandbox_ip(), port).await;
            let address = sandbox.addr.ip().to_string();
            orch.started.lock().unwrap().push(sandbox);
            Json(json!({ "address": address })).into_response()
        }
    };
    *orch.answered_at.lock().unwrap() = Some(Instant::now());
    response
}

/// Control pointed at the orchestrator, an edge following it, a tenant with generous rate limits.
struct WakeStack {
    dir: tempfile::TempDir,
    control: Control,
    edge: Edge,
    tenant: Api,
    orch: Orchestrator,
}

impl WakeStack {
    async fn start(delay: Duration, answer: Answer, control_args: &[&str], edge_args: &[&str]) -> WakeStack {
        let dir = tempfile::tempdir().expect("tempdir");
        let orch = Orchestrator::start(delay, answer).await;
        let mut args = vec!["--wake-url", orch.url.as_str()];
        args.extend_from_slice(control_args);
        let control = Control::start_with(&dir.path().join("control"), free_port(), &args).await;
        *orch.state.secret.lock().unwrap() = wake_secret(&control.data_dir);
        let edge = Edge::start_with(&control.url, &dir.path().join("edge"), edge_args).await;
        let tenant = Api::admin(&control.url).tenant("acme").await;
        let limit = json!({"rps": 100000, "burst": 100000});
        let limits = json!({"public_per_ip": limit, "private_per_token": limit,
                            "auth_failures_per_ip": {"per_minute": 30}});
        tenant.ok("PUT", "/v1/tenant/rate-limits", Some(limits), 200).await;
        WakeStack { dir, control, edge, tenant, orch }
    }

    /// A hibernated sandbox at an address where nothing listens; `body` adds fields.
    async fn hibernated(&self, body: Value) -> (String, Option<String>) {
        let mut req = json!({"address": sandbox_ip().to_string(), "state": "hibernated"});
        req.as_object_mut().unwrap().extend(body.as_object().unwrap().clone());
        let sb = self.tenant.sandbox(req).await;
        self.synced().await;
        let token = sb["preview_auth_token"].as_str().map(str::to_string);
        (sb["id"].as_str().unwrap().to_string(), token)
    }

    async fn synced(&self) {
        sync_edge(&self.control.url, &self.edge).await;
    }

    async fn sandbox(&self, id: &str) -> Value {
        self.tenant.ok("GET", &format!("/v1/sandboxes/{id}"), None, 200).await
    }

    async fn wakes(&self, outcome: &str) -> f64 {
        self.edge.metric(&format!("portico_wakes_total{{outcome=\"{outcome}\"}}")).await.unwrap_or(0.0)
    }
}

/// Waits until `edge` has applied everything control has at this moment.
async fn sync_edge(control_url: &str, edge: &Edge) {
    let resp = reqwest::Client::new()
        .get(format!("{control_url}/v1/edge/feed?since=0"))
        .bearer_auth(common::EDGE_TOKEN)
        .send()
        .await
        .expect("feed");
    let v: Value = resp.json().await.expect("json");
    let want = v["snapshot"]["version"].as_u64().unwrap_or(0);
    wait_until(
        "edge to catch up",
        Duration::from_secs(5),
        || async move { edge.config_version().await >= want },
    )
    .await;
}

/// The signing secret control generated into its data dir (no `PORTICO_WAKE_SECRET` in the tests).
fn wake_secret(data_dir: &Path) -> String {
    let path = data_dir.join("wake.secret");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&path).expect("wake.secret").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the wake secret is readable by its owner only");
    std::fs::read_to_string(path).expect("read").trim().to_string()
}

fn host(port: u16, id: &str) -> String {
    format!("{port}-{id}.sandbox.localhost")
}

#[tokio::test]
async fn requests_without_a_valid_credential_never_wake_a_sandbox() {
    let port = free_port();
    let stack = WakeStack::start(Duration::ZERO, Answer::Start { port }, &[], &[]).await;
    let (id, _token) = stack.hibernated(json!({"preview_auth": {"token": "auto"}})).await;
    let client = stack.edge.client();
    let url = stack.edge.url(&host(port, &id), "/");
    for i in 0..50 {
        let req = client.get(&url);
        let req =
            if i % 5 == 0 { req } else { req.header("x-portico-preview-token", format!("wrong-token-{i}")) };
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        // 401 until the IP's auth-failure limit, 429 after it: never a wake.
        assert!(status == 401 || status == 429, "request {i}: {status}");
    }
    assert_eq!(stack.orch.calls(), 0);
    assert_eq!(stack.orch.state.bad_signatures.load(Ordering::SeqCst), 0);
    assert_eq!(stack.sandbox(&id).await["state"], "hibernated");
    let wakes: f64 =
        futures_util::future::join_all(["woken", "failed", "timeout", "disabled"].map(|o| stack.wakes(o)))
            .await
            .into_iter()
            .sum();
    assert_eq!(wakes, 0.0);
}

#[tokio::test]
async fn two_hundred_requests_during_a_slow_wake_make_one_orchestrator_call_and_all_succeed() {
    let port = free_port();
    let stack = WakeStack::start(Duration::from_secs(2), Answer::Start { port }, &[], &[]).await;
    let (id, token) = stack.hibernated(json!({"preview_auth": {"token": "auto"}})).await;
    let token = token.expect("preview_auth_token");
    let client = stack.edge.client();
    let url = stack.edge.url(&host(port, &id), "/hello");
    let requests = (0..200).map(|_| {
        let req = client.get(&url).header("x-portico-preview-token", &token);
        async move {
            let resp = req.send().await.expect("request");
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            (status, body)
        }
    });
    let answers = futures_util::future::join_all(requests).await;
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(body["uri"], "/hello", "answered by the woken sandbox");
    }
    assert_eq!(stack.orch.calls(), 1, "one orchestrator call for 200 waiting requests");
    assert_eq!(stack.orch.state.bad_signatures.load(Ordering::SeqCst), 0);
    let sb = stack.sandbox(&id).await;
    assert_eq!(sb["state"], "running");
    let woken_at = stack.orch.state.started.lock().unwrap()[0].addr.ip().to_string();
    assert_eq!(sb["address"], woken_at.as_str(), "control records the orchestrator's address");
    assert_eq!(stack.wakes("woken").await, 1.0);
    assert!(stack.edge.metrics_text().await.contains("portico_wake_seconds_count 1"));
    // Later requests go straight through: no second wake.
    let resp = client.get(&url).header("x-portico-preview-token", &token).send().await.expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(stack.orch.calls(), 1);
}

#[tokio::test]
async fn a_wake_slower_than_wake_timeout_answers_503_wake_timeout_and_still_completes() {
    let port = free_port();
    let stack =
        WakeStack::start(Duration::from_secs(4), Answer::Start { port }, &[], &["--wake-timeout", "1"]).await;
    let (id, _) = stack.hibernated(json!({"default_visibility": "public"})).await;
    let client = stack.edge.client();
    let url = stack.edge.url(&host(port, &id), "/");
    let resp = client.get(&url).send().await.expect("request");
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["x-edge-error"], "wake_timeout");
    assert_eq!(resp.headers()["cache-control"], "no-store");
    assert_eq!(stack.wakes("timeout").await, 1.0);
    // Control keeps waiting for the orchestrator; once it answers, the sandbox serves.
    until_status(&client, &url, 200, Duration::from_secs(15)).await;
    assert_eq!(stack.orch.calls(), 1, "retries during the wake joined it");
    assert_eq!(stack.sandbox(&id).await["state"], "running");
}

#[tokio::test]
async fn a_failing_orchestrator_answers_503_wake_failed_and_leaves_the_sandbox_hibernated() {
    let port = free_port();
    let stack = WakeStack::start(Duration::ZERO, Answer::Status(500), &[], &[]).await;
    let (id, _) = stack.hibernated(json!({"default_visibility": "public"})).await;
    let client = stack.edge.client();
    let url = stack.edge.url(&host(port, &id), "/");
    let resp = client.get(&url).send().await.expect("request");
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["x-edge-error"], "wake_failed");
    assert_eq!(stack.wakes("failed").await, 1.0);
    assert_eq!(stack.sandbox(&id).await["state"], "hibernated", "not stuck in waking");

    // The platform asking directly gets the reason.
    let (status, err) = stack.tenant.call("POST", &format!("/v1/sandboxes/{id}/wake"), None).await;
    assert_eq!(status, 502, "{err}");
    assert_eq!(err["error"]["code"], "wake_failed");
    assert!(err["error"]["message"].as_str().unwrap().contains("500"), "{err}");

    // Once the orchestrator works again, the next request wakes the sandbox.
    stack.orch.set(Duration::ZERO, Answer::Start { port });
    until_status(&client, &url, 200, Duration::from_secs(10)).await;
    assert_eq!(stack.sandbox(&id).await["state"], "running");
}

#[tokio::test]
async fn control_gives_up_on_an_orchestrator_slower_than_wake_url_timeout() {
    let port = free_port();
    let stack =
        WakeStack::start(Duration::from_secs(5), Answer::Start { port }, &["--wake-url-timeout", "1"], &[])
            .await;
    let (id, _) = stack.hibernated(json!({})).await;
    let (status, err) = stack.tenant.call("POST", &format!("/v1/sandboxes/{id}/wake"), None).await;
    assert_eq!(status, 504, "{err}");
    assert_eq!(err["error"]["code"], "wake_timeout");
    assert_eq!(stack.sandbox(&id).await["state"], "hibernated");
}

#[tokio::test]
async fn public_sandboxes_wake_on_request_unless_their_wake_policy_is_off() {
    let port = free_port();
    let stack = WakeStack::start(Duration::ZERO, Answer::Start { port }, &[], &[]).await;
    let (off, _) = stack.hibernated(json!({"default_visibility": "public", "wake_policy": "off"})).await;
    let (on, _) = stack.hibernated(json!({"default_visibility": "public"})).await;
    let client = stack.edge.client();

    let resp = client.get(stack.edge.url(&host(port, &off), "/")).send().await.expect("request");
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["x-edge-error"], "sandbox_hibernated");
    assert_eq!(stack.orch.calls(), 0);

    let resp = client.get(stack.edge.url(&host(port, &on), "/")).send().await.expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(stack.orch.calls(), 1);

    // Hibernating through the API puts it to sleep again at the edge; the next request wakes it anew.
    stack.tenant.ok("POST", &format!("/v1/sandboxes/{on}/hibernate"), None, 200).await;
    stack.synced().await;
    let resp = client.get(stack.edge.url(&host(port, &on), "/")).send().await.expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(stack.orch.calls(), 2);
}

#[tokio::test]
async fn tenant_wakes_coalesce_into_one_call_signed_so_the_orchestrator_can_verify_it() {
    let port = free_port();
    let stack = WakeStack::start(Duration::from_millis(500), Answer::Start { port }, &[], &[]).await;
    let (id, _) = stack.hibernated(json!({})).await;
    let path = format!("/v1/sandboxes/{id}/wake");
    let calls = (0..10).map(|_| stack.tenant.call("POST", &path, None));
    for (status, sb) in futures_util::future::join_all(calls).await {
        assert_eq!(status, 200, "{sb}");
        assert_eq!(sb["state"], "running");
    }
    assert_eq!(stack.orch.calls(), 1);
    // A running sandbox answers at once, without the orchestrator.
    stack.tenant.ok("POST", &path, None, 200).await;
    assert_eq!(stack.orch.calls(), 1);

    let (body, signature) = stack.orch.state.seen.lock().unwrap()[0].clone();
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap(), json!({"sandbox_id": id}));
    let secret = wake_secret(&stack.control.data_dir);
    assert!(signature_ok(&secret, &signature, &body));
    assert!(!signature_ok(&secret, &signature, br#"{"sandbox_id":"someoneelse"}"#), "the body is signed");
    assert!(!signature_ok("another secret", &signature, &body), "the secret is needed");
    // Another tenant cannot wake it.
    let other = Api::admin(&stack.control.url).tenant("other").await;
    assert_eq!(other.call("POST", &path, None).await.0, 403);
}

#[tokio::test]
async fn last_request_at_advances_with_requests_and_open_websockets() {
    let stack = WakeStack::start(Duration::ZERO, Answer::Status(500), &[], &[]).await;
    let fake = FakeSandbox::start(sandbox_ip(), 0).await;
    let sb = stack
        .tenant
        .sandbox(json!({"address": fake.addr.ip().to_string(), "default_visibility": "public"}))
        .await;
    let id = sb["id"].as_str().unwrap().to_string();
    assert_eq!(sb["last_request_at"], Value::Null);
    stack.synced().await;
    let idle = |secs: u64| {
        let tenant = stack.tenant.clone();
        async move {
            let list = tenant.ok("GET", &format!("/v1/sandboxes?idle_for={secs}"), None, 200).await;
            list.as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap().to_string()).collect::<Vec<_>>()
        }
    };
    assert_eq!(idle(0).await, [id.as_str()], "never requested: idle since created");
    assert!(idle(3600).await.is_empty());

    let client = stack.edge.client();
    let url = stack.edge.url(&host(fake.port(), &id), "/");
    let last = || async { stack.sandbox(&id).await["last_request_at"].as_str().map(str::to_string) };
    assert_eq!(client.get(&url).send().await.expect("request").status(), 200);
    wait_until("the first report", Duration::from_secs(20), || async { last().await.is_some() }).await;
    let first = last().await.unwrap();

    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(client.get(&url).send().await.expect("request").status(), 200);
    wait_until("last_request_at to advance", Duration::from_secs(20), || async {
        last().await.unwrap() > first
    })
    .await;
    let second = last().await.unwrap();

    // An open WebSocket keeps the sandbox active with no requests at all.
    let mut req = format!("ws://{}/ws", stack.edge.addr).into_client_request().expect("ws request");
    req.headers_mut().insert("host", host(fake.port(), &id).parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.expect("upgrade");
    ws.next().await.expect("hello").expect("ok");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    wait_until("an open WebSocket to count as activity", Duration::from_secs(20), || async {
        last().await.unwrap() > second
    })
    .await;
    ws.send(Message::Close(None)).await.expect("close");

    // Hibernated sandboxes are not suspension candidates; running idle ones are.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(idle(3600).await.is_empty());
    assert_eq!(idle(0).await, [id.as_str()]);
    stack.tenant.ok("POST", &format!("/v1/sandboxes/{id}/hibernate"), None, 200).await;
    assert!(idle(0).await.is_empty());
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// `n` concurrent GETs of `url` through `client`, spawned; each yields its status and when it completed.
fn spawn_requests(
    client: &reqwest::Client,
    url: &str,
    n: usize,
) -> Vec<tokio::task::JoinHandle<(u16, Instant)>> {
    (0..n)
        .map(|_| {
            let (client, url) = (client.clone(), url.to_string());
            tokio::spawn(async move {
                let resp = client.get(&url).send().await.expect("request");
                let status = resp.status().as_u16();
                let _ = resp.bytes().await;
                (status, Instant::now())
            })
        })
        .collect()
}

/// The numbers for the issue's note: edge memory and latency of 1,000 requests waiting on one wake, next to
/// the same 1,000 requests waiting on a slow running sandbox at another edge (what any in-flight request
/// costs: its connection, Pingora's session, and an upstream connection the waiting ones do not have).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_requests_waiting_on_one_wake_cost_little_memory_and_one_call() {
    const N: usize = 1000;
    let port = free_port();
    let wake = Duration::from_secs(5);
    let stack = WakeStack::start(wake, Answer::Start { port }, &[], &[]).await;
    let (id, _) = stack.hibernated(json!({"default_visibility": "public"})).await;
    let fake = FakeSandbox::start(sandbox_ip(), 0).await;
    let running = stack
        .tenant
        .sandbox(json!({"address": fake.addr.ip().to_string(), "default_visibility": "public"}))
        .await;
    let baseline = Edge::start_with(&stack.control.url, &stack.dir.path().join("edge2"), &[]).await;
    stack.synced().await;
    sync_edge(&stack.control.url, &baseline).await;
    let warm = |edge: &Edge| {
        let (client, url) = (edge.client(), edge.url("nothing.example", "/"));
        async move {
            for _ in 0..20 {
                client.get(&url).send().await.expect("request");
            }
        }
    };
    warm(&baseline).await;
    warm(&stack.edge).await;

    // Baseline: N requests in flight to a running sandbox that answers late.
    let pid = baseline.proc.child.id();
    let base_before = rss_kib(pid);
    let slow = baseline.url(&host(fake.port(), running["id"].as_str().unwrap()), "/slow");
    let tasks = spawn_requests(&baseline.client(), &slow, N);
    tokio::time::sleep(wake * 7 / 10).await;
    let base_during = rss_kib(pid);
    tasks.iter().for_each(|t| t.abort());

    // N requests waiting on one wake.
    let pid = stack.edge.proc.child.id();
    let before = rss_kib(pid);
    let started = Instant::now();
    let tasks = spawn_requests(&stack.edge.client(), &stack.edge.url(&host(port, &id), "/"), N);
    tokio::time::sleep(wake * 7 / 10).await;
    let waiting = rss_kib(pid);
    let mut done = Vec::new();
    for t in tasks {
        done.push(t.await.expect("task"));
    }
    let total = started.elapsed();
    let answered_at = stack.orch.state.answered_at.lock().unwrap().expect("orchestrator answered");

    assert!(done.iter().all(|(s, _)| *s == 200), "all {N} requests answered 200");
    assert_eq!(stack.orch.calls(), 1);
    let mut after_wake: Vec<Duration> =
        done.iter().map(|(_, at)| at.saturating_duration_since(answered_at)).collect();
    after_wake.sort();
    let per = |from: u64, to: u64| to.saturating_sub(from) * 1024 / N as u64;
    println!(
        "edge RSS, {N} requests waiting on one wake: {before} -> {waiting} KiB (~{} B per request); \
         same {N} requests in flight to a slow running sandbox: {base_before} -> {base_during} KiB (~{} B per \
         request). From the orchestrator's answer to each response: p50 {:?}, p99 {:?}, max {:?}; all {N} \
         answered {total:?} after the first was sent ({wake:?} of it the orchestrator's own delay)",
        per(before, waiting),
        per(base_before, base_during),
        percentile(&after_wake, 0.5),
        percentile(&after_wake, 0.99),
        percentile(&after_wake, 1.0),
    );
    // Loose: a waiting request must not cost more than an ordinary in-flight one (plus slack for noise).
    assert!(per(before, waiting) <= per(base_before, base_during) + 16 * 1024);
}
