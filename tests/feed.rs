//! The feed between control and edges: propagation, outages, restarts, catching up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::sandbox::FakeSandbox;
use common::{sandbox_ip, until_status, Control, Edge, Stack};
use serde_json::json;

#[tokio::test]
async fn changes_reach_the_edge_within_1s() {
    let stack = Stack::start().await;
    let tenant = stack.admin.tenant("acme").await;
    let fake = FakeSandbox::start(sandbox_ip(), 0).await;
    let sb =
        tenant.sandbox(json!({"address": fake.addr.ip().to_string(), "default_visibility": "public"})).await;
    let id = sb["id"].as_str().unwrap();
    let client = stack.edge.client();
    let mut delays = Vec::new();
    for _ in 0..20 {
        let p = tenant
            .ok("POST", &format!("/v1/sandboxes/{id}/previews"), Some(json!({"port": fake.port()})), 201)
            .await;
        let created = Instant::now();
        let url = stack.edge.url(&format!("{}.preview.localhost", p["slug"].as_str().unwrap()), "/");
        loop {
            if client.get(&url).send().await.map(|r| r.status() == 200).unwrap_or(false) {
                break;
            }
            assert!(created.elapsed() < Duration::from_secs(1), "change not in force within 1 s");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        delays.push(created.elapsed());
    }
    delays.sort();
    println!("propagation over 20 changes: p50 {:?}, max {:?}", delays[10], delays[19]);
}

#[tokio::test]
async fn edge_keeps_serving_when_control_dies_and_after_its_own_restart() {
    let mut stack = Stack::start().await;
    let tenant = stack.admin.tenant("acme").await;
    let fake = FakeSandbox::start(sandbox_ip(), 0).await;
    let sb =
        tenant.sandbox(json!({"address": fake.addr.ip().to_string(), "default_visibility": "public"})).await;
    let url =
        stack.edge.url(&format!("{}-{}.sandbox.localhost", fake.port(), sb["id"].as_str().unwrap()), "/");
    until_status(&stack.edge.client(), &url, 200, Duration::from_secs(1)).await;
    // Let the edge write its state dir (it saves at most about once a second).
    tokio::time::sleep(Duration::from_millis(2500)).await;

    stack.control.proc.kill();
    for _ in 0..5 {
        assert_eq!(stack.edge.client().get(&url).send().await.expect("edge up").status(), 200);
    }

    // A restarted edge with control still down serves from its state dir.
    stack.edge.proc.kill();
    let edge = Edge::start(&stack.control.url, &stack.edge.state_dir).await;
    let url = edge.url(&format!("{}-{}.sandbox.localhost", fake.port(), sb["id"].as_str().unwrap()), "/");
    assert_eq!(edge.client().get(&url).send().await.expect("edge up").status(), 200);
    assert!(edge.metric("portico_config_age_seconds").await.expect("age") >= 1.0);
}

#[tokio::test]
async fn a_restart_replays_the_change_log_and_a_damaged_state_dir_never_stops_the_edge() {
    let mut stack = Stack::start().await;
    let tenant = stack.admin.tenant("acme").await;
    let fake = FakeSandbox::start(sandbox_ip(), 0).await;
    let public = json!({"address": fake.addr.ip().to_string(), "default_visibility": "public"});
    let a = tenant.sandbox(public.clone()).await;
    let host =
        |sb: &serde_json::Value| format!("{}-{}.sandbox.localhost", fake.port(), sb["id"].as_str().unwrap());
    until_status(&stack.edge.client(), &stack.edge.url(&host(&a), "/"), 200, Duration::from_secs(1)).await;
    // The first snapshot from control is saved as the base; what follows is appended to the log.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let b = tenant.sandbox(public).await;
    until_status(&stack.edge.client(), &stack.edge.url(&host(&b), "/"), 200, Duration::from_secs(1)).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let dir = stack.edge.state_dir.clone();
    let log = std::fs::read(dir.join("changes.log")).expect("a change log");
    assert!(log.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count() >= 2, "a marker and a record");

    // Control down: the restarted edge has both sandboxes, the second one from the log.
    stack.control.proc.kill();
    stack.edge.proc.kill();
    let mut edge = Edge::start(&stack.control.url, &dir).await;
    for sb in [&a, &b] {
        assert_eq!(edge.client().get(edge.url(&host(sb), "/")).send().await.expect("edge up").status(), 200);
    }

    // A torn log tail: the edge starts, with the base and the valid prefix.
    edge.proc.kill();
    std::fs::write(dir.join("changes.log"), &log[..log.len() - 5]).expect("truncate");
    let mut edge = Edge::start(&stack.control.url, &dir).await;
    assert_eq!(edge.client().get(edge.url(&host(&a), "/")).send().await.expect("edge up").status(), 200);

    // A garbage base: the edge still starts (and waits for control, routing nothing meanwhile).
    edge.proc.kill();
    std::fs::write(dir.join("snapshot.bin"), b"\x00garbage{").expect("garbage");
    let edge = Edge::start(&stack.control.url, &dir).await;
    assert_eq!(edge.client().get(edge.url(&host(&a), "/")).send().await.expect("edge up").status(), 404);
}

#[tokio::test]
async fn edge_catches_up_with_changes_made_while_it_was_away() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut control = Control::start(&dir.path().join("control")).await;
    let edge = Edge::start(&control.url, &dir.path().join("edge")).await;
    let admin = common::Api::admin(&control.url);
    let tenant = admin.tenant("acme").await;
    let fake = FakeSandbox::start(sandbox_ip(), 0).await;
    let a =
        tenant.sandbox(json!({"address": fake.addr.ip().to_string(), "default_visibility": "public"})).await;
    let url_a = edge.url(&format!("{}-{}.sandbox.localhost", fake.port(), a["id"].as_str().unwrap()), "/");
    until_status(&edge.client(), &url_a, 200, Duration::from_secs(1)).await;

    // Control goes away and comes back on the same address and database.
    control.proc.kill();
    let control = Control::start_on(&dir.path().join("control"), control.port).await;
    let tenant = tenant.with_key(&tenant.key);
    assert_eq!(tenant.url, control.url);
    let b =
        tenant.sandbox(json!({"address": fake.addr.ip().to_string(), "default_visibility": "public"})).await;
    tenant.ok("DELETE", &format!("/v1/sandboxes/{}", a["id"].as_str().unwrap()), None, 204).await;

    let url_b = edge.url(&format!("{}-{}.sandbox.localhost", fake.port(), b["id"].as_str().unwrap()), "/");
    // The edge's retry backoff is at most 5 s; it must then see both changes, in order.
    until_status(&edge.client(), &url_b, 200, Duration::from_secs(8)).await;
    until_status(&edge.client(), &url_a, 404, Duration::from_secs(1)).await;
}

#[tokio::test]
async fn feed_refuses_a_wrong_edge_token() {
    let stack = Stack::start().await;
    let resp = reqwest::Client::new()
        .get(format!("{}/v1/edge/feed?since=0", stack.control.url))
        .bearer_auth("not-the-edge-token")
        .send()
        .await
        .expect("req");
    assert_eq!(resp.status(), 401);
    let resp = reqwest::Client::new()
        .get(format!("{}/v1/edge/feed?since=0", stack.control.url))
        .bearer_auth(common::ADMIN_KEY)
        .send()
        .await
        .expect("req");
    assert_eq!(resp.status(), 401, "the admin key is not an edge token");
}

#[tokio::test]
async fn edge_stops_promptly_on_sigterm() {
    let mut stack = Stack::start().await;
    let took = stack.edge.proc.terminate();
    assert!(took < Duration::from_secs(10), "edge took {took:?} to stop");
    let took = stack.control.proc.terminate();
    assert!(took < Duration::from_secs(10), "control took {took:?} to stop");
}

#[tokio::test]
async fn control_packs_the_snapshot_for_an_edge_that_asks_and_sends_json_to_any_other() {
    let dir = tempfile::tempdir().expect("tempdir");
    // No lag: each answer is built at the current version, so the two forms can be compared.
    let control =
        Control::start_with(&dir.path().join("control"), common::free_port(), &["--feed-snapshot-lag", "0"])
            .await;
    let tenant = common::Api::admin(&control.url).tenant("acme").await;
    for _ in 0..3 {
        tenant.sandbox(json!({"address": sandbox_ip().to_string(), "default_visibility": "public"})).await;
    }
    let get = |accept: &'static str| {
        reqwest::Client::new()
            .get(format!("{}/v1/edge/feed?since=0", control.url))
            .bearer_auth(common::EDGE_TOKEN)
            .header("accept", accept)
            .send()
    };
    let content_type =
        |r: &reqwest::Response| r.headers()["content-type"].to_str().expect("ascii").to_owned();

    let resp = get("application/vnd.portico.snapshot.v1, application/json").await.expect("feed");
    assert_eq!(content_type(&resp), portico_wire::packed::MEDIA_TYPE);
    let packed = portico_wire::packed::decode(&resp.bytes().await.expect("body")).expect("decodes");
    let resp = get("application/json").await.expect("feed");
    assert_eq!(content_type(&resp), "application/json");
    let portico_wire::FeedMessage::Snapshot { snapshot } = resp.json().await.expect("json") else {
        panic!("not a snapshot")
    };
    assert_eq!(packed, snapshot);
    assert_eq!(packed.sandboxes.len(), 3);
    // What an edge gets: zstd-compressed, the same snapshot.
    let resp = reqwest::Client::builder()
        .no_gzip()
        .build()
        .expect("client")
        .get(format!("{}/v1/edge/feed?since=0", control.url))
        .bearer_auth(common::EDGE_TOKEN)
        .header("accept", portico_wire::packed::MEDIA_TYPE)
        .header("accept-encoding", "zstd, gzip")
        .send()
        .await
        .expect("feed");
    assert_eq!(resp.headers()["content-encoding"], "zstd");
    let body = zstd::decode_all(&resp.bytes().await.expect("body")[..]).expect("zstd");
    assert_eq!(portico_wire::packed::decode(&body).expect("decodes"), snapshot);
    // A format this control does not write (a newer edge's): JSON, which every edge reads.
    let resp = get("application/vnd.portico.snapshot.v2").await.expect("feed");
    assert_eq!(content_type(&resp), "application/json");
}
