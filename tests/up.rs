//! `portico up`: control and edge in one process, as a person trying Portico runs it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::Duration;

use common::sandbox::FakeSandbox;
use common::{client_to, free_port, portico, sandbox_ip, until_status, wait_until, Api, Proc};
use serde_json::json;

struct Up {
    proc: Proc,
    http: u16,
    control: String,
}

fn start_up(dir: &std::path::Path) -> (Up, std::process::ChildStdout) {
    let (http, control, metrics) = (free_port(), free_port(), free_port());
    let mut child = portico()
        .env_remove("PORTICO_ADMIN_KEY")
        .env_remove("PORTICO_EDGE_TOKEN")
        .arg("up")
        .arg("--data-dir")
        .arg(dir)
        .args(["--http", &format!("127.0.0.1:{http}")])
        .args(["--control-listen", &format!("127.0.0.1:{control}")])
        .args(["--metrics", &format!("127.0.0.1:{metrics}")])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn up");
    let stdout = child.stdout.take().expect("stdout");
    (Up { proc: Proc { child, name: "up" }, http, control: format!("http://127.0.0.1:{control}") }, stdout)
}

#[tokio::test]
async fn up_generates_the_admin_key_once_and_serves_a_preview() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (mut up, mut stdout) = start_up(&data);

    let key_file = data.join("admin.key");
    wait_until("admin key file", Duration::from_secs(20), || {
        let f = key_file.clone();
        async move { f.exists() }
    })
    .await;
    let key = std::fs::read_to_string(&key_file).expect("key").trim().to_string();
    assert_eq!(std::fs::metadata(&key_file).expect("meta").permissions().mode() & 0o777, 0o600);

    let admin = Api::admin(&up.control).with_key(&key);
    let http = reqwest::Client::new();
    let url = format!("{}/v1/tenants", up.control);
    wait_until("control", Duration::from_secs(20), || {
        let (http, url, key) = (http.clone(), url.clone(), key.clone());
        async move { http.get(&url).bearer_auth(&key).send().await.map(|r| r.status() == 200).unwrap_or(false) }
    })
    .await;
    let tenant = admin.tenant("trying-it").await;
    let fake = FakeSandbox::start(sandbox_ip(), 0).await;
    let sb =
        tenant.sandbox(json!({"address": fake.addr.ip().to_string(), "default_visibility": "public"})).await;
    let edge = client_to(format!("127.0.0.1:{}", up.http).parse().expect("addr"));
    let url = format!("http://{}-{}.sandbox.localhost:{}/", fake.port(), sb["id"].as_str().unwrap(), up.http);
    until_status(&edge, &url, 200, Duration::from_secs(5)).await;

    // Every file holding a secret or key material is readable by the owner only (SPEC §6): the database,
    // the generated keys and the edge's saved state (which carries certificates' private keys).
    let saved = data.join("edge/snapshot.bin");
    wait_until("the edge to save its state", Duration::from_secs(10), || {
        let saved = saved.clone();
        async move { saved.exists() }
    })
    .await;
    for file in [data.join("portico.db"), data.join("admin.key"), data.join("edge.token"), saved] {
        let mode = std::fs::metadata(&file)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{} is mode {:o}", file.display(), mode & 0o777);
    }

    let took = up.proc.terminate();
    assert!(took < Duration::from_secs(10), "up took {took:?} to stop");
    let mut printed = String::new();
    stdout.read_to_string(&mut printed).expect("stdout");
    assert!(printed.contains(&key), "the generated admin key is printed once");
    let token_file = data.join("edge.token");
    let token = std::fs::read_to_string(&token_file).expect("edge token file").trim().to_string();
    assert_eq!(std::fs::metadata(&token_file).expect("meta").permissions().mode() & 0o777, 0o600);
    assert!(
        token.len() >= 16 && !printed.contains(&token),
        "only the edge token's path is printed: {printed}"
    );
    assert!(printed.contains(token_file.to_str().unwrap()), "{printed}");

    // A second start reuses the stored key and does not print it again.
    let (mut again, mut stdout) = start_up(&data);
    let edge = client_to(format!("127.0.0.1:{}", again.http).parse().expect("addr"));
    let url =
        format!("http://{}-{}.sandbox.localhost:{}/", fake.port(), sb["id"].as_str().unwrap(), again.http);
    until_status(&edge, &url, 200, Duration::from_secs(20)).await;
    again.proc.terminate();
    let mut printed = String::new();
    stdout.read_to_string(&mut printed).expect("stdout");
    assert!(!printed.contains(&key), "the admin key is shown only once");
}
