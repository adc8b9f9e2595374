//! Usage end to end: edges count requests and bytes, control answers totals, across a control outage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::sandbox::FakeSandbox;
use common::{sandbox_ip, Api, Control, Stack, EDGE_TOKEN};
use serde_json::{json, Value};

/// Sends `n` requests to the sandbox's port host; returns the response body bytes received.
async fn traffic(stack: &Stack, sandbox: &str, port: u16, n: usize) -> u64 {
    let mut bytes = 0;
    for i in 0..n {
        let resp = stack
            .edge
            .client()
            .get(stack.edge.url(&format!("{port}-{sandbox}.sandbox.localhost"), &format!("/r{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        bytes += resp.bytes().await.unwrap().len() as u64;
    }
    bytes
}

/// `GET /v1/usage?group_by=…` as `{group: (requests, bytes_out)}`, or `None` while control is away.
async fn usage(
    tenant: &Api,
    query: &str,
    key: &str,
) -> Option<std::collections::HashMap<String, (u64, u64)>> {
    let resp = reqwest::Client::new()
        .get(format!("{}/v1/usage?{query}", tenant.url))
        .bearer_auth(&tenant.key)
        .send()
        .await
        .ok()?;
    let rows: Vec<Value> = resp.json().await.ok()?;
    Some(
        rows.iter()
            .map(|r| {
                let group = r[key].as_str().unwrap_or("null").to_string();
                (group, (r["requests"].as_u64().unwrap(), r["bytes_out"].as_u64().unwrap()))
            })
            .collect(),
    )
}

async fn until_usage(tenant: &Api, query: &str, key: &str, want: &[(&str, (u64, u64))]) {
    let want: std::collections::HashMap<String, (u64, u64)> =
        want.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    let mut last = None;
    let found = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            last = usage(tenant, query, key).await;
            if last.as_ref() == Some(&want) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(found.is_ok(), "usage {query}: wanted {want:?}, last saw {last:?}");
}

#[tokio::test]
async fn usage_totals_equal_what_was_sent_also_across_a_control_outage_and_an_edge_restart() {
    let mut stack = Stack::start().await;
    let tenant = stack.admin.tenant("acme").await;
    let fake = FakeSandbox::start(sandbox_ip(), 0).await;
    for (id, user) in [("usera001", "user-a"), ("userb001", "user-b")] {
        let address = fake.addr.ip().to_string();
        tenant
            .sandbox(json!({"id": id, "address": address, "default_visibility": "public", "external_user_id": user}))
            .await;
    }
    stack.synced().await;
    let a1 = traffic(&stack, "usera001", fake.port(), 5).await;
    let b = traffic(&stack, "userb001", fake.port(), 3).await;
    until_usage(
        &tenant,
        "group_by=external_user_id",
        "external_user_id",
        &[("user-a", (5, a1)), ("user-b", (3, b))],
    )
    .await;

    // Control goes away; the edge keeps serving and keeps the counts, also across its own restart.
    stack.control.proc.kill();
    let a2 = traffic(&stack, "usera001", fake.port(), 4).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let took = stack.edge.proc.terminate();
    assert!(took < Duration::from_secs(10), "edge took {took:?} to stop");
    stack.edge = common::Edge::start(&stack.control.url, &stack.edge.state_dir.clone()).await;
    stack.control = Control::start_on(&stack.control.data_dir.clone(), stack.control.port).await;
    let tenant = Api::admin(&stack.control.url).with_key(&tenant.key);
    until_usage(
        &tenant,
        "group_by=external_user_id",
        "external_user_id",
        &[("user-a", (9, a1 + a2)), ("user-b", (3, b))],
    )
    .await;
    until_usage(
        &tenant,
        "group_by=sandbox",
        "sandbox_id",
        &[("usera001", (9, a1 + a2)), ("userb001", (3, b))],
    )
    .await;
    // Counts are per minute: a window that ends before any of them holds nothing.
    until_usage(&tenant, "group_by=sandbox&from=0&to=1000", "sandbox_id", &[]).await;
    until_usage(
        &tenant,
        "group_by=sandbox&from=2000-01-01T00:00:00Z",
        "sandbox_id",
        &[("usera001", (9, a1 + a2)), ("userb001", (3, b))],
    )
    .await;
    assert_eq!(tenant.call("GET", "/v1/usage?group_by=colour", None).await.0, 400);

    // Another tenant sees none of it.
    let other = Api::admin(&stack.control.url).tenant("other").await;
    assert_eq!(usage(&other, "group_by=sandbox", "sandbox_id").await, Some(Default::default()));
}

#[tokio::test]
async fn a_resent_usage_batch_is_counted_once() {
    let stack = Stack::start().await;
    let tenant = stack.admin.tenant("acme").await;
    let me = tenant.ok("GET", "/v1/tenant", None, 200).await;
    let batch = json!({
        "edge_id": "edge-test",
        "seq": 7,
        "entries": [{"tenant_id": me["id"], "subject": "deployment", "id": "dp_x", "minute": 60_000, "requests": 2, "bytes_out": 10}],
    });
    let edge = reqwest::Client::new();
    for _ in 0..3 {
        let resp = edge
            .post(format!("{}/v1/edge/usage", stack.control.url))
            .bearer_auth(EDGE_TOKEN)
            .json(&batch)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let totals = usage(&tenant, "group_by=deployment", "deployment_id").await.unwrap();
    assert_eq!(totals.get("dp_x"), Some(&(2, 10)));
    // Only the edge token may post counts.
    let refused = edge
        .post(format!("{}/v1/edge/usage", stack.control.url))
        .bearer_auth(&tenant.key)
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
}
