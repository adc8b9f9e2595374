//! Many edges on one control (issue 17): ten edges cold-starting at once all come to route the same state.
//! Control builds the first snapshot once and shares it (`control/src/feed/snapshots.rs`); this proves the
//! edges that waited on that one build got a whole, current state each, not a partial or stale one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::sandbox::FakeSandbox;
use common::{sandbox_ip, wait_until, Api, Control, Edge};
use futures_util::stream::{self, StreamExt};
use serde_json::{json, Value};

const EDGES: usize = 10;
/// Two tenants at the default quota of 1,000 sandboxes each.
const TENANTS: usize = 2;
const PER_TENANT: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_edges_cold_starting_at_once_from_one_control_route_the_same_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let control = Control::start(&dir.path().join("control")).await;
    let admin = Api::admin(&control.url);
    let fake = FakeSandbox::start(sandbox_ip(), 0).await;
    let body = json!({"address": fake.addr.ip().to_string(), "default_visibility": "public"});

    let mut tenants = Vec::new();
    for t in 0..TENANTS {
        tenants.push(admin.tenant(&format!("fleet-{t}")).await);
    }
    let creates = (0..TENANTS).flat_map(|t| std::iter::repeat_n(t, PER_TENANT));
    // (tenant, sandbox id), in whatever order the creations finished.
    let ids: Vec<(usize, String)> = stream::iter(creates)
        .map(|t| {
            let (api, body) = (&tenants[t], body.clone());
            async move { (t, api.sandbox(body).await["id"].as_str().expect("id").to_string()) }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let of_tenant =
        |t: usize| ids.iter().find(|(owner, _)| *owner == t).map(|(_, id)| id.clone()).expect("one");
    // The state is more than creations: a deletion and a preview too.
    let deleted = of_tenant(0);
    tenants[0].ok("DELETE", &format!("/v1/sandboxes/{deleted}"), None, 204).await;
    let previewed = of_tenant(1);
    let preview: Value = tenants[1]
        .ok("POST", &format!("/v1/sandboxes/{previewed}/previews"), Some(json!({"port": fake.port()})), 201)
        .await;
    // Created last (where the deletion made room under the quota): an edge that routes it has every
    // change before it, since the feed applies them in order.
    let marker = tenants[0].sandbox(body.clone()).await["id"].as_str().expect("id").to_string();

    let state_dirs: Vec<_> = (0..EDGES).map(|i| dir.path().join(format!("edge{i}"))).collect();
    let edges: Vec<Edge> =
        futures_util::future::join_all(state_dirs.iter().map(|d| Edge::start(&control.url, d))).await;

    let port_host = |id: &str| format!("{}-{id}.sandbox.localhost", fake.port());
    // Generous: ten edges and control share a small CI machine; what is asserted is the state, not the time.
    for edge in &edges {
        let (client, url) = (edge.client(), edge.url(&port_host(&marker), "/"));
        wait_until("every edge to route the last sandbox created", Duration::from_secs(120), || {
            let (client, url) = (client.clone(), url.clone());
            async move { client.get(&url).send().await.is_ok_and(|r| r.status() == 200) }
        })
        .await;
    }

    let versions: Vec<u64> = stream::iter(&edges).then(|e| e.config_version()).collect().await;
    assert!(
        versions.iter().all(|v| *v == versions[0] && *v > 0),
        "edges at different versions: {versions:?}"
    );
    // Every edge answers every one of a spread of hosts the same way.
    let slug_host = format!("{}.preview.localhost", preview["slug"].as_str().expect("slug"));
    let mut checks: Vec<(String, u16)> =
        ids.iter().filter(|(_, id)| *id != deleted).step_by(37).map(|(_, id)| (port_host(id), 200)).collect();
    checks.push((port_host(&deleted), 404));
    checks.push((slug_host, 200));
    for (i, edge) in edges.iter().enumerate() {
        let client = edge.client();
        for (host, want) in &checks {
            let status = client.get(edge.url(host, "/")).send().await.expect("edge answers").status();
            assert_eq!(status.as_u16(), *want, "edge {i}, host {host}");
        }
    }
}
