//! Running Portico on a node: zero-downtime upgrade of an edge, `--check`, logs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::sandbox::FakeSandbox;
use common::{portico, sandbox_ip, until_status, Proc, Stack, EDGE_TOKEN};
use serde_json::json;

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
    assert!(ok.map(|s| s.success()).unwrap_or(false), "kill -{sig} {pid}");
}

#[tokio::test]
async fn an_edge_upgrade_takes_over_the_sockets_without_refusing_a_connection() {
    let mut stack = Stack::start().await;
    let tenant = stack.admin.tenant("acme").await;
    let fake = FakeSandbox::start(sandbox_ip(), 0).await;
    let sb =
        tenant.sandbox(json!({"address": fake.addr.ip().to_string(), "default_visibility": "public"})).await;
    let url =
        stack.edge.url(&format!("{}-{}.sandbox.localhost", fake.port(), sb["id"].as_str().unwrap()), "/");
    until_status(&stack.edge.client(), &url, 200, Duration::from_secs(2)).await;

    // 200 requests, each on a new connection, spread over the switch.
    let client = common::builder_to(stack.edge.addr).pool_max_idle_per_host(0).build().unwrap();
    let load = tokio::spawn({
        let (client, url) = (client.clone(), url.clone());
        async move {
            let mut failures = Vec::new();
            for i in 0..200 {
                match client.get(&url).send().await {
                    Ok(r) if r.status() == 200 => {}
                    Ok(r) => failures.push(format!("request {i}: status {}", r.status())),
                    Err(e) => failures.push(format!("request {i}: {e}")),
                }
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            failures
        }
    });

    // The new edge starts with --upgrade on the same addresses and state dir, then the old one is told
    // to hand its listening sockets over (SIGQUIT), as a deploy script or systemd's ExecReload would.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut cmd = portico();
    common::log_to(&mut cmd, &stack.edge.state_dir.with_extension("upgraded.log"));
    let child = cmd
        .args(["edge", "--control-url", &stack.control.url, "--threads", "1", "--upgrade"])
        .args(["--http", &stack.edge.addr.to_string(), "--metrics", &stack.edge.metrics.to_string()])
        .arg("--state-dir")
        .arg(&stack.edge.state_dir)
        .spawn()
        .expect("spawn the new edge");
    let _new = Proc { child, name: "new edge" };
    tokio::time::sleep(Duration::from_millis(500)).await;
    signal(stack.edge.proc.child.id(), "QUIT");
    let started = Instant::now();
    let old_exit = tokio::task::spawn_blocking(move || {
        let status = stack.edge.proc.child.wait();
        (status, stack)
    });
    let failures = load.await.unwrap();
    let (status, _stack) = old_exit.await.unwrap();
    assert!(status.is_ok(), "the old edge exits after handing over");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(failures.is_empty(), "requests failed during the upgrade: {failures:?}");
    // The new process serves on the same address.
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
}

fn check(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = portico();
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out =
        cmd.args(args).arg("--check").stdout(Stdio::piped()).stderr(Stdio::piped()).output().expect("runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[tokio::test]
async fn short_secrets_are_refused_and_secret_files_are_read() {
    let stack = Stack::start().await;
    let url = stack.control.url.clone();
    let (ok, text) = check(&["edge", "--control-url", &url], &[("PORTICO_EDGE_TOKEN", "short")]);
    assert!(!ok && text.contains("at least 16 characters"), "{text}");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("edge.token");
    std::fs::write(&file, format!("{EDGE_TOKEN}\n")).expect("write");
    let file = file.to_str().expect("utf-8 path");
    let (ok, text) = check(
        &["edge", "--control-url", &url],
        &[("PORTICO_EDGE_TOKEN", ""), ("PORTICO_EDGE_TOKEN_FILE", file)],
    );
    assert!(ok, "the token file (trailing newline trimmed) is the edge token: {text}");
    let (ok, text) = check(
        &["control", "--data-dir", dir.path().to_str().expect("utf-8")],
        &[("PORTICO_ADMIN_KEY", "tooshort")],
    );
    assert!(!ok && text.contains("PORTICO_ADMIN_KEY must be at least 16 characters"), "{text}");
}

#[tokio::test]
async fn edge_check_reaches_control_and_fails_clearly_when_it_cannot() {
    let stack = Stack::start().await;
    let (ok, text) = check(&["edge", "--control-url", &stack.control.url], &[]);
    assert!(ok, "{text}");
    let dead = format!("http://127.0.0.1:{}", common::free_port());
    let (ok, text) = check(&["edge", "--control-url", &dead], &[]);
    assert!(!ok && text.contains(&dead), "{text}");
    let (ok, text) = check(
        &["edge", "--control-url", &stack.control.url],
        &[("PORTICO_EDGE_TOKEN", "wrong-token-0123456789")],
    );
    assert!(!ok && text.contains("edge token"), "{text}");
    assert_ne!(EDGE_TOKEN, "wrong-token-0123456789");
}

#[tokio::test]
async fn control_check_opens_the_database_and_fails_clearly_when_it_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, text) = check(&["control", "--data-dir", dir.path().to_str().unwrap()], &[]);
    assert!(ok, "{text}");
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"x").unwrap();
    let bad = format!("sqlite://{}/sub/portico.db?mode=rwc", blocker.display());
    let (ok, text) = check(&["control", "--database", &bad, "--data-dir", dir.path().to_str().unwrap()], &[]);
    assert!(!ok && text.contains("database"), "{text}");
    let (ok, text) = check(&["control", "--host-template", "{nope}.x.dev"], &[]);
    assert!(!ok && text.contains("nope"), "{text}");
}

#[tokio::test]
async fn control_logs_each_mutation_with_its_actor_and_never_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let log = dir.path().join("control.log");
    let mut cmd = portico();
    common::log_to(&mut cmd, &log);
    let child = cmd
        .args(["control", "--listen", &format!("127.0.0.1:{port}"), "--log-format", "json"])
        // Test sandboxes live on 127.0.0.x, outside control's default upstream policy.
        .args(["--upstream-allow", "127.0.0.0/8"])
        .arg("--data-dir")
        .arg(dir.path())
        .spawn()
        .unwrap();
    let _control = Proc { child, name: "control" };
    let admin = common::Api::admin(&format!("http://127.0.0.1:{port}"));
    let url = format!("{}/v1/tenants", admin.url);
    common::wait_until("control", Duration::from_secs(20), || {
        let url = url.clone();
        async move { reqwest::get(&url).await.is_ok() }
    })
    .await;
    let tenant = admin.tenant("acme").await;
    let tenant_id = tenant.ok("GET", "/v1/tenant", None, 200).await["id"].as_str().unwrap().to_string();
    tenant.sandbox(json!({"address": "127.0.0.9"})).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let mutation = |path: &str| lines.iter().find(|l| l["path"] == path && l["method"] == "POST").cloned();
    let created =
        mutation("/v1/tenants").unwrap_or_else(|| panic!("no log line for POST /v1/tenants in {text}"));
    assert_eq!(created["actor"], "admin");
    let sandbox =
        mutation("/v1/sandboxes").unwrap_or_else(|| panic!("no log line for POST /v1/sandboxes in {text}"));
    assert_eq!(sandbox["actor"], tenant_id.as_str());
    assert!(!text.contains(&tenant.key) && !text.contains(common::ADMIN_KEY), "a key reached the log");
}

#[test]
fn every_flag_also_reads_its_portico_environment_variable() {
    // The flag's variable is read: a bad value there is refused like the flag itself.
    let (ok, text) = check(&["control"], &[("PORTICO_DEFAULT_PUBLIC_PER_IP", "fast")]);
    assert!(!ok && text.contains("RPS/BURST"), "{text}");
    let (ok, text) = check(&["control"], &[("PORTICO_HOST_TEMPLATE", "{nope}.x.dev")]);
    assert!(!ok && text.contains("nope"), "{text}");
    let dead = format!("http://127.0.0.1:{}", common::free_port());
    let (ok, text) = check(&["edge"], &[("PORTICO_CONTROL_URL", &dead)]);
    assert!(!ok && text.contains(&dead), "{text}");
}

/// The edge's metrics listener, as a probe or Prometheus sees it: (status, body).
async fn probe(url: String) -> (u16, String) {
    let resp = reqwest::get(url).await.expect("probe answers");
    (resp.status().as_u16(), resp.text().await.expect("text"))
}

#[tokio::test]
async fn control_exits_within_5s_of_sigterm_while_an_edge_holds_a_long_poll() {
    let mut stack = Stack::start().await;
    let url = format!("{}/metrics", stack.control.url);
    // The edge is synced and idle: its next feed request waits at control for a change.
    common::wait_until("the edge's long-poll to be open at control", Duration::from_secs(5), || async {
        probe(url.clone()).await.1.lines().any(|l| {
            l.strip_prefix("portico_control_feed_long_polls ").and_then(|v| v.parse::<f64>().ok())
                >= Some(1.0)
        })
    })
    .await;
    let took = stack.control.proc.terminate();
    assert!(took < Duration::from_secs(5), "control took {took:?} to exit after SIGTERM");
    // The edge keeps serving from its state without control.
    let (status, _) = probe(format!("http://{}/healthz", stack.edge.metrics)).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_token_without_a_port_embeds_the_newest_preview_else_port_3000() {
    let stack = Stack::start().await;
    let tenant = stack.admin.tenant("acme").await;
    let sb = tenant.sandbox(json!({"address": "127.0.0.9"})).await;
    let id = sb["id"].as_str().unwrap();
    let mint = || tenant.ok("POST", "/v1/preview-tokens", Some(json!({"sandbox_id": id})), 201);
    let minted = mint().await;
    let token = minted["token"].as_str().unwrap();
    assert_eq!(
        minted["embed_url"].as_str(),
        Some(format!("http://3000-{id}.sandbox.localhost/?token={token}").as_str()),
        "no preview: the default embed port"
    );
    let previews = format!("/v1/sandboxes/{id}/previews");
    tenant.ok("POST", &previews, Some(json!({"port": 5173})), 201).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let newest = tenant.ok("POST", &previews, Some(json!({"port": 4000})), 201).await;
    let minted = mint().await;
    let token = minted["token"].as_str().unwrap();
    assert_eq!(
        minted["embed_url"].as_str(),
        Some(format!("{}?token={token}", newest["url"].as_str().unwrap()).as_str()),
        "the newest preview: {minted}"
    );
}

#[tokio::test]
async fn a_2mb_json_body_is_answered_413_with_a_readable_error() {
    let stack = Stack::start().await;
    let tenant = stack.admin.tenant("acme").await;
    let body =
        format!(r#"{{"address":"127.0.0.9","metadata":{{"blob":"{}"}}}}"#, "x".repeat(2 * 1024 * 1024));
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/sandboxes", stack.control.url))
        .bearer_auth(&tenant.key)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("the whole body is taken and answered, no broken pipe");
    assert_eq!(resp.status(), 413);
    let v: serde_json::Value = resp.json().await.expect("a JSON error body");
    assert_eq!(v["error"]["code"], "payload_too_large", "{v}");
    assert!(v["error"]["message"].as_str().is_some_and(|m| m.contains("larger than")), "{v}");
}

#[tokio::test]
async fn edges_answer_health_and_readiness_on_the_metrics_listener() {
    let stack = Stack::start().await;
    let edge = &stack.edge;
    assert_eq!(probe(format!("http://{}/healthz", edge.metrics)).await, (200, "ok\n".to_string()));
    let (status, body) = probe(format!("http://{}/readyz", edge.metrics)).await;
    assert_eq!(status, 200, "{body}");
    let synced = edge.metric("portico_config_last_sync_timestamp_seconds").await.expect("last sync");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!((now - 30.0..=now + 1.0).contains(&synced), "{synced} vs {now}");

    // A state older than --ready-max-age: still served, but not ready. (An idle edge hears from control
    // at least every 25 s, well inside the default 60 s.)
    let dir = tempfile::tempdir().unwrap();
    let strict =
        common::Edge::start_with(&stack.control.url, &dir.path().join("strict"), &["--ready-max-age", "1s"])
            .await;
    let url = format!("http://{}/readyz", strict.metrics);
    common::wait_until("the strict edge to turn unready", Duration::from_secs(10), || async {
        let (status, body) = probe(url.clone()).await;
        status == 503 && body.starts_with("routing state ") && body.trim_end().ends_with("s old")
    })
    .await;

    // An edge that never reached control: alive, not ready, and its age counts from its start.
    let dead = format!("http://127.0.0.1:{}", common::free_port());
    let lost = common::Edge::start(&dead, &dir.path().join("lost")).await;
    assert_eq!(probe(format!("http://{}/healthz", lost.metrics)).await.0, 200);
    let (status, body) = probe(format!("http://{}/readyz", lost.metrics)).await;
    assert_eq!((status, body.as_str()), (503, "never synced with control\n"));
    assert_eq!(lost.metric("portico_config_last_sync_timestamp_seconds").await, Some(0.0));
    let age = lost.metric("portico_config_age_seconds").await.expect("age");
    assert!((0.0..60.0).contains(&age), "seconds since start, not a sentinel: {age}");
}

#[tokio::test]
async fn metrics_name_the_build_the_process_and_keep_control_apart() {
    let stack = Stack::start().await;
    let text = stack.edge.metrics_text().await;
    let version = env!("CARGO_PKG_VERSION");
    assert!(text.contains(&format!("portico_build_info{{version=\"{version}\"}} 1")), "{text}");
    assert!(text.contains("\nprocess_start_time_seconds "), "process metrics: {text}");
    assert!(
        !text.contains("portico_certificate_soonest_expiry_timestamp_seconds "),
        "no certificate, no sample"
    );
    assert!(!text.contains(" -1\n"), "no -1 sentinels: {text}");

    let (status, control) = probe(format!("{}/metrics", stack.control.url)).await;
    assert_eq!(status, 200);
    for series in [
        format!("portico_control_build_info{{version=\"{version}\"}} 1"),
        "portico_control_database_up 1".to_string(),
        "portico_control_certificates{state=\"uploaded\"} 0".to_string(),
        "portico_control_process_start_time_seconds ".to_string(),
        "portico_control_feed_version ".to_string(),
    ] {
        assert!(control.contains(&series), "{series} in {control}");
    }
    let samples = control.lines().filter(|l| !l.starts_with('#'));
    for line in samples {
        assert!(
            line.starts_with("portico_control_"),
            "control's series share no name with the edge's: {line}"
        );
    }
    let (status, body) = probe(format!("{}/readyz", stack.control.url)).await;
    assert_eq!((status, body.as_str()), (200, r#"{"ok":true}"#));
}

#[tokio::test]
async fn every_request_has_an_id_in_errors_upstream_and_the_access_log() {
    let stack = Stack::start().await;
    let client = stack.edge.client();
    // An error: the id in the header, the JSON body and the HTML page.
    let resp = client
        .get(stack.edge.url("nothing.sandbox.localhost", "/"))
        .header("x-request-id", "planted-by-a-client")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()), "generated, not the client's: {id}");
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["request_id"], id.as_str(), "{v}");
    assert_eq!(v["error"]["code"], "not_found");
    let page = client
        .get(stack.edge.url("nothing.sandbox.localhost", "/"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    let page_id = page.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_ne!(page_id, id, "one id per request");
    assert!(page.text().await.unwrap().contains(&format!("Reference: {page_id}")));

    // Proxied: the sandbox sees the edge's id, never the one an untrusted client sent.
    let tenant = stack.admin.tenant("acme").await;
    let fake = FakeSandbox::start(sandbox_ip(), 0).await;
    let sb =
        tenant.sandbox(json!({"address": fake.addr.ip().to_string(), "default_visibility": "public"})).await;
    let host = format!("{}-{}.sandbox.localhost", fake.port(), sb["id"].as_str().unwrap());
    until_status(&client, &stack.edge.url(&host, "/"), 200, Duration::from_secs(2)).await;
    let echo: serde_json::Value = client
        .get(stack.edge.url(&host, "/"))
        .header("x-request-id", "planted-by-a-client")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let upstream = common::sandbox::header(&echo, "x-request-id").expect("sent upstream").to_string();
    assert!(upstream.len() == 32 && upstream.bytes().all(|b| b.is_ascii_hexdigit()), "{upstream}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = stack.edge.log();
    assert!(
        log.lines().any(|l| l.contains(&format!("\"request_id\":\"{upstream}\""))),
        "the access log line names {upstream}: {log}"
    );
    assert!(
        log.lines().any(|l| l.contains(&format!("\"request_id\":\"{id}\""))),
        "errors are logged with theirs"
    );

    // Behind a trusted proxy, its sane id is kept end to end; an insane one is replaced.
    let dir = tempfile::tempdir().unwrap();
    let behind = common::Edge::start_with(
        &stack.control.url,
        &dir.path().join("behind"),
        &["--trusted-proxy", "127.0.0.1/32"],
    )
    .await;
    let via = behind.client();
    until_status(&via, &behind.url(&host, "/"), 200, Duration::from_secs(2)).await;
    let upstream_id = |value: String| {
        let (via, url) = (via.clone(), behind.url(&host, "/"));
        async move {
            let echo: serde_json::Value =
                via.get(url).header("x-request-id", value).send().await.unwrap().json().await.unwrap();
            common::sandbox::header(&echo, "x-request-id").map(str::to_string)
        }
    };
    assert_eq!(upstream_id("lb-7f3a:42".into()).await.as_deref(), Some("lb-7f3a:42"));
    let long = "a".repeat(129);
    let replaced = upstream_id(long.clone()).await.unwrap();
    assert!(replaced != long && replaced.len() == 32, "{replaced}");
    let resp = via
        .get(behind.url("nothing.sandbox.localhost", "/"))
        .header("x-request-id", "lb-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "lb-1");
}
