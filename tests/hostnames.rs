//! Sandboxes addressed by host name (SPEC §3 "Sandboxes", §7 "Upstream policy"): the edge resolves the name
//! itself, dials it only when every address it resolves to lies inside the policy, and answers 502
//! `upstream_unreachable` otherwise, without stalling or losing the worker.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr};

use common::sandbox::{header, FakeSandbox};
use common::{free_port, sandbox_ip, Api, Control, Edge, Stack};
use serde_json::{json, Value};

/// Control (and so the edge) allowing both loopbacks, as `portico up` does: `localhost` is 127.0.0.1 and ::1.
async fn loopback_stack() -> Stack {
    let dir = tempfile::tempdir().expect("tempdir");
    let control =
        Control::start_with(&dir.path().join("control"), free_port(), &["--upstream-allow", "::1/128"]).await;
    let edge = Edge::start(&control.url, &dir.path().join("edge")).await;
    let admin = Api::admin(&control.url);
    Stack { dir, control, edge, admin }
}

/// A public sandbox at `address`; returns its id.
async fn public_sandbox(tenant: &Api, address: &str) -> String {
    let sb = tenant.sandbox(json!({"address": address, "default_visibility": "public"})).await;
    assert_eq!(sb["address"], address);
    sb["id"].as_str().expect("id").to_string()
}

async fn get(stack: &Stack, id: &str, port: u16) -> reqwest::Response {
    let url = stack.edge.url(&format!("{port}-{id}.sandbox.localhost"), "/hello");
    stack.edge.client().get(url).send().await.expect("request")
}

fn assert_unreachable(resp: &reqwest::Response, what: &str) {
    assert_eq!(resp.status(), 502, "{what}");
    assert_eq!(resp.headers()["x-edge-error"], "upstream_unreachable", "{what}");
}

#[tokio::test]
async fn a_sandbox_addressed_as_localhost_is_reached_on_loopback() {
    let stack = loopback_stack().await;
    let tenant = stack.admin.tenant("acme").await;
    let fake = FakeSandbox::start(IpAddr::V4(Ipv4Addr::LOCALHOST), 0).await;
    let id = public_sandbox(&tenant, "localhost").await;
    stack.synced().await;

    let resp = get(&stack, &id, fake.port()).await;
    assert_eq!(resp.status(), 200);
    let echo: Value = resp.json().await.expect("json");
    assert_eq!(echo["uri"], "/hello");
    let host = format!("{}-{id}.sandbox.localhost:{}", fake.port(), stack.edge.addr.port());
    assert_eq!(header(&echo, "host"), Some(host.as_str()), "Host passes unchanged");
}

#[tokio::test]
async fn a_name_that_does_not_resolve_is_502_and_the_edge_keeps_serving() {
    let stack = loopback_stack().await;
    let tenant = stack.admin.tenant("acme").await;
    let fake = FakeSandbox::start(sandbox_ip(), 0).await;
    let good = public_sandbox(&tenant, &fake.addr.ip().to_string()).await;
    let bad = public_sandbox(&tenant, "nosuch.invalid").await;
    stack.synced().await;

    // Before: resolving inside Pingora panicked the request and the client got an empty reply.
    for round in 0..3 {
        let resp = get(&stack, &bad, fake.port()).await;
        assert_unreachable(&resp, &format!("round {round}"));
        let body: Value = resp.json().await.expect("json error body");
        assert_eq!(body["error"]["code"], "upstream_unreachable");
        assert_eq!(
            get(&stack, &good, fake.port()).await.status(),
            200,
            "round {round}: the edge still serves"
        );
    }
    let mut edge = stack.edge;
    assert!(edge.proc.child.try_wait().expect("edge status").is_none(), "the edge is still running");
    edge.proc.kill();
}

#[tokio::test]
async fn a_name_with_an_address_outside_the_policy_is_502_though_its_ip_is_reachable() {
    // The harness's control allows 127.0.0.0/8 but not ::1, and `localhost` is both.
    let stack = Stack::start().await;
    let tenant = stack.admin.tenant("acme").await;
    let fake = FakeSandbox::start(IpAddr::V4(Ipv4Addr::LOCALHOST), 0).await;
    let by_ip = public_sandbox(&tenant, "127.0.0.1").await;
    // Control cannot check a name (it may resolve differently where the edges run): the edge does.
    let by_name = public_sandbox(&tenant, "localhost").await;
    stack.synced().await;

    assert_eq!(get(&stack, &by_ip, fake.port()).await.status(), 200, "the sandbox itself is reachable");
    assert_unreachable(&get(&stack, &by_name, fake.port()).await, "a name that also resolves to ::1");
}

#[tokio::test]
async fn control_accepts_host_names_and_refuses_malformed_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let control = Control::start(&dir.path().join("control")).await;
    let tenant = Api::admin(&control.url).tenant("acme").await;
    let sb = tenant.sandbox(json!({"address": "Web-1.Sandboxes.Internal."})).await;
    assert_eq!(sb["address"], "web-1.sandboxes.internal", "stored lowercase, without the root dot");
    let too_long = format!("{}.internal", vec!["a".repeat(63); 4].join("."));
    let long_label = format!("{}.internal", "a".repeat(64));
    for bad in [
        "http://web-1",
        "web-1:3000",
        "-web.internal",
        "web..internal",
        "we b",
        long_label.as_str(),
        too_long.as_str(),
    ] {
        let (status, body) = tenant.call("POST", "/v1/sandboxes", Some(json!({"address": bad}))).await;
        assert_eq!(status, 422, "{bad:?}: {body}");
        assert_eq!(body["error"]["code"], "invalid_field", "{bad:?}");
    }
}
