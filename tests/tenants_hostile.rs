//! SPEC §7 end to end: the upstream policy as `portico control` applies it by default and as the admin
//! narrows it per tenant (control refuses, edges stop dialling), addresses an orchestrator hands back,
//! quotas from flags and environment, and custom domains that have not proven their owner.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::sandbox::FakeSandbox;
use common::{free_port, portico, sandbox_ip, until_status, wait_until, Api, Control, Proc, Stack};
use serde_json::{json, Value};

/// `portico control` with only `args` (no test-friendly `--upstream-allow`), logging to `<data_dir>.log`.
async fn bare_control(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Control {
    let port = free_port();
    let mut cmd = portico();
    std::fs::create_dir_all(data_dir).expect("dir");
    common::log_to(&mut cmd, &data_dir.with_extension("log"));
    let child = cmd
        .args(["control", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .envs(env.iter().copied())
        .spawn()
        .expect("spawn control");
    let url = format!("http://127.0.0.1:{port}");
    let c =
        Control { proc: Proc { child, name: "control" }, url: url.clone(), port, data_dir: data_dir.into() };
    let http = reqwest::Client::new();
    wait_until("control to answer", Duration::from_secs(20), || {
        let (http, url) = (http.clone(), url.clone());
        async move { http.get(format!("{url}/v1/tenants")).bearer_auth(common::ADMIN_KEY).send().await.is_ok() }
    })
    .await;
    c
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

#[tokio::test]
async fn control_defaults_refuse_loopback_and_metadata_and_quota_flags_apply() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The quota default comes from the environment, as every flag's may.
    let control = bare_control(&dir.path().join("c"), &[], &[("PORTICO_QUOTA_SANDBOXES", "1")]).await;
    let tenant = Api::admin(&control.url).tenant("acme").await;
    for address in ["127.0.0.1", "169.254.169.254", "[::1]"] {
        let (status, body) = tenant.call("POST", "/v1/sandboxes", Some(json!({"address": address}))).await;
        assert_eq!((status, code(&body)), (422, "invalid_field"), "{address}: {body}");
    }
    let sb = tenant.sandbox(json!({"address": "10.20.30.40"})).await;
    let (status, body) = tenant.call("POST", "/v1/sandboxes", Some(json!({"address": "10.20.30.41"}))).await;
    assert_eq!((status, code(&body)), (409, "quota_exceeded"), "{body}");
    assert!(body["error"]["message"].as_str().unwrap_or("").contains("sandboxes quota is 1"), "{body}");
    tenant.ok("DELETE", &format!("/v1/sandboxes/{}", sb["id"].as_str().unwrap()), None, 204).await;
    tenant.sandbox(json!({"address": "10.20.30.41"})).await;
    let shown = tenant.ok("GET", "/v1/tenant", None, 200).await;
    assert_eq!(shown["quotas"]["sandboxes"], 1, "{shown}");
    assert_eq!(shown["quotas"]["previews"], 10_000, "{shown}");

    // Naming loopback in the policy lets it through.
    let allowed = bare_control(&dir.path().join("c2"), &["--upstream-allow", "127.0.0.0/8"], &[]).await;
    let tenant = Api::admin(&allowed.url).tenant("acme").await;
    tenant.sandbox(json!({"address": "127.0.0.1"})).await;
    let (status, _) = tenant.call("POST", "/v1/sandboxes", Some(json!({"address": "169.254.169.254"}))).await;
    assert_eq!(status, 422, "link-local stays refused");
}

#[tokio::test]
async fn narrowing_a_tenant_refuses_new_addresses_and_edges_stop_dialling_old_ones() {
    let stack = Stack::start().await;
    let (tenant_id, tenant) = {
        let t = stack.admin.ok("POST", "/v1/tenants", Some(json!({"name": "acme"})), 201).await;
        (t["id"].as_str().unwrap().to_string(), stack.admin.with_key(t["api_key"].as_str().unwrap()))
    };
    let fake = FakeSandbox::start(sandbox_ip(), 0).await;
    let ip = fake.addr.ip().to_string();
    let sb = tenant.sandbox(json!({"address": ip, "default_visibility": "public"})).await;
    let id = sb["id"].as_str().unwrap();
    let client = stack.edge.client();
    let url = stack.edge.url(&format!("{}-{id}.sandbox.localhost", fake.port()), "/");
    until_status(&client, &url, 200, Duration::from_secs(5)).await;

    // Inside 127.0.0.0/8 (the test control's policy) but not this sandbox's address.
    let narrowed = stack
        .admin
        .ok(
            "PATCH",
            &format!("/v1/tenants/{tenant_id}"),
            Some(json!({"upstream_cidrs": ["127.0.0.254/32"]})),
            200,
        )
        .await;
    assert_eq!(narrowed["upstream_cidrs"], json!(["127.0.0.254/32"]), "{narrowed}");
    let (status, body) = tenant.call("POST", "/v1/sandboxes", Some(json!({"address": ip}))).await;
    assert_eq!((status, code(&body)), (422, "invalid_field"), "{body}");

    // The existing sandbox stays stored, but the edge no longer dials it: within a second.
    let took = until_status(&client, &url, 502, Duration::from_secs(1)).await;
    let resp = client.get(&url).send().await.expect("request");
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["x-edge-error"], "upstream_unreachable");
    assert!(took < Duration::from_secs(1), "{took:?}");

    let listed = stack.admin.ok("GET", "/v1/tenants", None, 200).await;
    assert_eq!(listed[0]["upstream_cidrs"], json!(["127.0.0.254/32"]), "{listed}");
    stack
        .admin
        .ok("PATCH", &format!("/v1/tenants/{tenant_id}"), Some(json!({"upstream_cidrs": null})), 200)
        .await;
    until_status(&client, &url, 200, Duration::from_secs(1)).await;
}

/// An orchestrator stand-in that answers every wake with `address`.
async fn orchestrator(address: &'static str) -> (String, tokio::task::JoinHandle<()>) {
    let app = axum::Router::new().route(
        "/wake",
        axum::routing::post(move || async move { axum::Json(json!({ "address": address })) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/wake", listener.local_addr().expect("addr"));
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, task)
}

#[tokio::test]
async fn a_wake_answered_with_an_address_outside_the_policy_fails_and_is_logged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (url, task) = orchestrator("169.254.169.254").await;
    let control = bare_control(&dir.path().join("c"), &["--wake-url", &url], &[]).await;
    let tenant = Api::admin(&control.url).tenant("acme").await;
    let sb = tenant.sandbox(json!({"address": "10.1.1.1", "state": "hibernated"})).await;
    let id = sb["id"].as_str().unwrap();
    let (status, body) = tenant.call("POST", &format!("/v1/sandboxes/{id}/wake"), None).await;
    assert_eq!((status, code(&body)), (502, "wake_failed"), "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap_or("").contains("outside the upstream policy"),
        "{body}"
    );
    let shown = tenant.ok("GET", &format!("/v1/sandboxes/{id}"), None, 200).await;
    assert_eq!(shown["state"], "hibernated", "{shown}");
    assert_eq!(shown["address"], "10.1.1.1", "the refused address is not stored: {shown}");
    let log = std::fs::read_to_string(dir.path().join("c.log")).unwrap_or_default();
    assert!(log.contains("outside the upstream policy") && log.contains("169.254.169.254"), "{log}");
    task.abort();
}

#[tokio::test]
async fn an_unverified_custom_domain_is_answered_domain_unverified_by_the_edge() {
    let stack = Stack::start().await;
    let tenant = stack.admin.tenant("acme").await;
    let fake = FakeSandbox::start(sandbox_ip(), 0).await;
    let dep =
        tenant.ok("POST", "/v1/deployments", Some(json!({"name": "shop", "workspace": "acme"})), 201).await;
    let id = dep["id"].as_str().unwrap();
    let v = tenant
        .ok(
            "POST",
            &format!("/v1/deployments/{id}/versions"),
            Some(json!({"instances": [fake.addr.to_string()]})),
            201,
        )
        .await;
    tenant
        .ok("POST", &format!("/v1/deployments/{id}/promote"), Some(json!({"version_id": v["id"]})), 200)
        .await;
    let added = tenant
        .ok(
            "POST",
            &format!("/v1/deployments/{id}/domains"),
            Some(json!({"hostname": "shop.example.com"})),
            201,
        )
        .await;
    assert_eq!(added["status"], "pending", "{added}");
    stack.synced().await;
    let resp =
        stack.edge.client().get(stack.edge.url("shop.example.com", "/")).send().await.expect("request");
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["x-edge-error"], "domain_unverified");
    // The deployment's own host routes meanwhile.
    let app = stack.edge.url(dep["hostname"].as_str().unwrap(), "/");
    until_status(&stack.edge.client(), &app, 200, Duration::from_secs(1)).await;
}
