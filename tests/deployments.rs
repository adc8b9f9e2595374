//! Deployments end to end: real `portico` processes, runtime instances on their own 127.0.0.x addresses.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::routing::get as route_get;
use axum::Router;
use common::{sandbox_ip, until_status, wait_until, Api, Stack};
use serde_json::{json, Value};

/// A runtime instance that answers with its name. Killing it drops its whole runtime, so its listener and
/// every open connection close, as when a process dies.
struct Instance {
    addr: SocketAddr,
    name: &'static str,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Instance {
    fn start(name: &'static str) -> Instance {
        Self::start_on(SocketAddr::new(sandbox_ip(), 0), name)
    }

    fn start_on(addr: SocketAddr, name: &'static str) -> Instance {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.spawn(async move {
                let app = Router::new()
                    .route("/healthz", route_get(|| async { "ok" }))
                    .route(
                        "/slow",
                        route_get(move || async move {
                            tokio::time::sleep(Duration::from_millis(1500)).await;
                            name
                        }),
                    )
                    // What reached the instance of the headers the edge sets or removes.
                    .route(
                        "/forwarded",
                        route_get(move |headers: axum::http::HeaderMap| async move {
                            let all = |n: &str| -> Vec<String> {
                                headers.get_all(n).iter().map(|v| v.to_str().unwrap().to_string()).collect()
                            };
                            let names = ["x-forwarded-for", "x-request-id", "forwarded", "x-real-ip"];
                            let seen: serde_json::Map<String, Value> =
                                names.iter().map(|n| (n.to_string(), json!(all(n)))).collect();
                            axum::Json(json!({"name": name, "headers": seen}))
                        }),
                    )
                    .fallback(move || async move { name });
                let listener = tokio::net::TcpListener::bind(addr).await.expect("bind instance");
                ready_tx.send(listener.local_addr().unwrap()).unwrap();
                let _ = axum::serve(listener, app).await;
            });
            rt.block_on(async {
                let _ = tokio::task::spawn_blocking(move || stopped.recv()).await;
            });
            rt.shutdown_background();
        });
        let addr = ready.recv_timeout(Duration::from_secs(10)).expect("instance up");
        Instance { addr, name, stop: Some(stop), thread: Some(thread) }
    }

    fn kill(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn deployment(tenant: &Api, name: &str) -> (String, String) {
    let d = tenant.ok("POST", "/v1/deployments", Some(json!({"name": name, "workspace": "acme"})), 201).await;
    assert_eq!(d["hostname"], format!("{name}.acme.apps.localhost"));
    (d["id"].as_str().unwrap().to_string(), d["hostname"].as_str().unwrap().to_string())
}

async fn version(tenant: &Api, id: &str, body: Value) -> String {
    let v = tenant.ok("POST", &format!("/v1/deployments/{id}/versions"), Some(body), 201).await;
    v["id"].as_str().unwrap().to_string()
}

async fn promote(tenant: &Api, id: &str, version: &str) -> Value {
    tenant
        .ok("POST", &format!("/v1/deployments/{id}/promote"), Some(json!({"version_id": version})), 200)
        .await
}

/// (status, body) of one GET through the edge.
async fn get(stack: &Stack, host: &str, path: &str) -> (u16, String) {
    match stack.edge.client().get(stack.edge.url(host, path)).send().await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

#[tokio::test]
async fn instances_share_traffic_leave_rotation_when_killed_and_come_back() {
    let stack = Stack::start().await;
    let tenant = stack.admin.tenant("acme").await;
    let a = Instance::start("instance-a");
    let mut b = Instance::start("instance-b");
    let (id, host) = deployment(&tenant, "web").await;
    let v1 = version(
        &tenant,
        &id,
        json!({"instances": [a.addr.to_string(), b.addr.to_string()], "health_check": {"path": "/healthz", "interval_ms": 200}}),
    )
    .await;
    promote(&tenant, &id, &v1).await;
    stack.synced().await;

    let mut seen = std::collections::HashSet::new();
    for _ in 0..10 {
        let (status, body) = get(&stack, &host, "/").await;
        assert_eq!(status, 200, "{body}");
        seen.insert(body);
    }
    assert_eq!(seen.len(), 2, "round-robin reaches both instances: {seen:?}");

    // Killed: a GET that meets the dead instance is retried on the other one, so nothing fails even
    // before the health check notices; once it has, the survivor gets everything.
    b.kill();
    wait_until("the killed instance to leave the rotation", Duration::from_secs(10), || async {
        let mut all_a = true;
        for _ in 0..6 {
            let (status, body) = get(&stack, &host, "/").await;
            assert_eq!(status, 200, "no 5xx after an instance dies: {body}");
            all_a &= body == a.name;
        }
        all_a
    })
    .await;
    for _ in 0..20 {
        assert_eq!(get(&stack, &host, "/").await, (200, a.name.to_string()));
    }

    let _b = Instance::start_on(b.addr, "instance-b");
    wait_until("the instance to come back into rotation", Duration::from_secs(10), || async {
        get(&stack, &host, "/").await == (200, "instance-b".to_string())
    })
    .await;
}

#[tokio::test]
async fn a_request_retried_on_another_instance_carries_the_edges_forwarding_headers_only() {
    let stack = Stack::start().await;
    let tenant = stack.admin.tenant("acme").await;
    let a = Instance::start("instance-a");
    let mut b = Instance::start("instance-b");
    let (id, host) = deployment(&tenant, "retry").await;
    // Checked once an hour: the killed instance stays in rotation, so every other request meets it first.
    let v = version(
        &tenant,
        &id,
        json!({"instances": [a.addr.to_string(), b.addr.to_string()], "health_check": {"interval_ms": 3_600_000}}),
    )
    .await;
    promote(&tenant, &id, &v).await;
    stack.synced().await;
    wait_until("both instances in rotation", Duration::from_secs(10), || async {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..4 {
            seen.insert(get(&stack, &host, "/").await.1);
        }
        seen.len() == 2
    })
    .await;

    b.kill();
    for _ in 0..6 {
        let resp = stack
            .edge
            .client()
            .get(stack.edge.url(&host, "/forwarded"))
            .header("forwarded", "for=6.6.6.6")
            .header("x-real-ip", "6.6.6.6")
            .header("x-forwarded-for", "6.6.6.6")
            .header("x-request-id", "planted")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "a refused GET is retried on the other instance");
        let got: Value = resp.json().await.unwrap();
        assert_eq!(got["name"], "instance-a");
        let seen = &got["headers"];
        let xff = seen["x-forwarded-for"].as_array().unwrap();
        assert_eq!(xff.len(), 1, "one X-Forwarded-For, the edge's: {seen}");
        assert!(!xff[0].as_str().unwrap().contains("6.6.6.6"), "the client's claim is replaced: {seen}");
        let ids = seen["x-request-id"].as_array().unwrap();
        assert_eq!(ids.len(), 1, "{seen}");
        assert_ne!(ids[0], "planted", "an untrusted client's id is replaced: {seen}");
        assert_eq!(seen["forwarded"], json!([]), "{seen}");
        assert_eq!(seen["x-real-ip"], json!([]), "{seen}");
    }
}

#[tokio::test]
async fn promote_and_rollback_are_in_force_within_a_second_and_in_flight_requests_finish() {
    let stack = Stack::start().await;
    let tenant = stack.admin.tenant("acme").await;
    let one = Instance::start("v1");
    let two = Instance::start("v2");
    let (id, host) = deployment(&tenant, "shop").await;
    let client = stack.edge.client();
    let url = stack.edge.url(&host, "/");
    assert_eq!(get(&stack, &host, "/").await.0, 404, "a deployment with no promoted version routes nothing");

    let v1 = version(&tenant, &id, json!({"instances": [one.addr.to_string()]})).await;
    let v2 = version(
        &tenant,
        &id,
        json!({"instances": [two.addr.to_string()], "health_check": {"interval_ms": 250}}),
    )
    .await;
    promote(&tenant, &id, &v1).await;
    until_status(&client, &url, 200, Duration::from_secs(1)).await;
    assert_eq!(get(&stack, &host, "/").await.1, "v1");

    // A slow request on v1 is in flight while v2 is promoted: it finishes on v1.
    let slow = tokio::spawn({
        let (client, url) = (client.clone(), stack.edge.url(&host, "/slow"));
        async move { client.get(url).send().await.unwrap().text().await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    for (target, name) in [(&v2, "v2"), (&v1, "v1")] {
        let started = Instant::now();
        promote(&tenant, &id, target).await;
        wait_until(&format!("{name} to serve"), Duration::from_secs(1), || async {
            get(&stack, &host, "/").await.1 == name
        })
        .await;
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    assert_eq!(slow.await.unwrap(), "v1");

    let shown = tenant.ok("GET", &format!("/v1/deployments/{id}"), None, 200).await;
    assert_eq!(shown["active_version"]["id"], v1.as_str());
    assert_eq!(shown["active_version"]["number"], 1);
    let history: Vec<u64> =
        shown["history"].as_array().unwrap().iter().map(|h| h["number"].as_u64().unwrap()).collect();
    assert_eq!(history, [1, 2, 1], "every promotion, the rollback included");
    assert_eq!(shown["versions"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn no_healthy_instance_answers_502_with_the_tenants_page() {
    let stack = Stack::start().await;
    let tenant = stack.admin.tenant("acme").await;
    tenant
        .ok(
            "PUT",
            "/v1/tenant/branding",
            Some(json!({"logo_url": "https://cdn.acme.dev/logo.svg", "accent_color": "#12ab34", "product_name": "Acme Apps"})),
            200,
        )
        .await;
    let (id, host) = deployment(&tenant, "down").await;
    // Nothing listens there.
    let dead = SocketAddr::new(sandbox_ip(), common::free_port());
    let v =
        version(&tenant, &id, json!({"instances": [dead.to_string()], "health_check": {"interval_ms": 200}}))
            .await;
    promote(&tenant, &id, &v).await;
    stack.synced().await;
    for _ in 0..2 {
        // Before the first check completes (a refused connection) and after it (no healthy instance).
        let resp = stack
            .edge
            .client()
            .get(stack.edge.url(&host, "/"))
            .header("sec-fetch-mode", "navigate")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 502);
        assert_eq!(resp.headers()["x-edge-error"], "upstream_unreachable");
        assert!(resp.headers()["content-security-policy"].to_str().unwrap().contains("frame-ancestors"));
        let page = resp.text().await.unwrap();
        assert!(page.contains("Acme Apps") && !page.to_lowercase().contains("portico"), "{page}");
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
}

#[tokio::test]
async fn custom_domains_route_and_cannot_be_claimed_twice() {
    let stack = Stack::start().await;
    let acme = stack.admin.tenant("acme").await;
    let other = stack.admin.tenant("other").await;
    let instance = Instance::start("shop");
    let (id, host) = deployment(&acme, "shop").await;
    let v = version(&acme, &id, json!({"instances": [instance.addr.to_string()]})).await;
    promote(&acme, &id, &v).await;

    // The app host is one per platform: another tenant (or the same one) cannot take it again.
    let clash =
        other.call("POST", "/v1/deployments", Some(json!({"name": "shop", "workspace": "acme"}))).await;
    assert_eq!(clash.0, 409, "{}", clash.1);
    assert_eq!(
        acme.call("POST", "/v1/deployments", Some(json!({"name": "Shop!", "workspace": "acme"}))).await.0,
        422
    );

    acme.ok(
        "POST",
        &format!("/v1/deployments/{id}/domains"),
        Some(json!({"hostname": "Shop.Example.localhost"})),
        201,
    )
    .await;
    // `.localhost` names resolve to loopback only: verified at once, nothing to prove.
    let added = acme
        .ok(
            "POST",
            &format!("/v1/deployments/{id}/domains"),
            Some(json!({"hostname": "shop.example.localhost"})),
            200,
        )
        .await;
    assert_eq!(added["status"], "verified", "{added}");
    assert_eq!(added["verification"]["name"], "_portico-challenge.shop.example.localhost", "{added}");
    let client = stack.edge.client();
    let custom = stack.edge.url("shop.example.localhost", "/");
    until_status(&client, &custom, 200, Duration::from_secs(1)).await;
    assert_eq!(get(&stack, "shop.example.localhost", "/").await, (200, "shop".to_string()));
    assert_eq!(get(&stack, &host, "/").await, (200, "shop".to_string()));

    // Without ACME and without an uploaded certificate, the domain has no certificate yet; an uploaded
    // one that covers it shows as issued, with its expiry.
    let shown = acme.ok("GET", &format!("/v1/deployments/{id}"), None, 200).await;
    assert_eq!(shown["domains"][0]["hostname"], "shop.example.localhost");
    assert!(shown["domains"][0]["certificate"].is_null(), "{shown}");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["shop.example.localhost".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    stack
        .admin
        .ok(
            "PUT",
            "/v1/certificates/shop.example.localhost",
            Some(json!({"cert_pem": cert.pem(), "key_pem": key.serialize_pem()})),
            200,
        )
        .await;
    let shown = acme.ok("GET", &format!("/v1/deployments/{id}"), None, 200).await;
    assert_eq!(shown["domains"][0]["certificate"]["state"], "issued", "{shown}");
    assert!(shown["domains"][0]["certificate"]["expires_at"].is_string(), "{shown}");
    let metrics =
        reqwest::get(format!("{}/metrics", acme.url)).await.expect("metrics").text().await.expect("text");
    assert!(metrics.contains("portico_control_certificates{state=\"uploaded\"} 1"), "{metrics}");
    assert!(metrics.contains("portico_control_certificate_soonest_expiry_timestamp_seconds "), "{metrics}");

    let (oid, _) = deployment(&other, "other").await;
    let taken = other
        .call(
            "POST",
            &format!("/v1/deployments/{oid}/domains"),
            Some(json!({"hostname": "shop.example.localhost"})),
        )
        .await;
    assert_eq!(taken.0, 409, "{}", taken.1);
    let templated = other
        .call(
            "POST",
            &format!("/v1/deployments/{oid}/domains"),
            Some(json!({"hostname": "3000-abcd1234.sandbox.localhost"})),
        )
        .await;
    assert_eq!(templated.0, 422, "a host the templates route cannot be claimed: {}", templated.1);
    assert_eq!(other.call("GET", &format!("/v1/deployments/{id}"), None).await.0, 403);

    let shown = acme.ok("GET", &format!("/v1/deployments/{id}"), None, 200).await;
    assert_eq!(shown["domains"].as_array().map(Vec::len), Some(1));
    acme.ok("DELETE", &format!("/v1/deployments/{id}/domains/shop.example.localhost"), None, 204).await;
    until_status(&client, &custom, 404, Duration::from_secs(1)).await;

    acme.ok("DELETE", &format!("/v1/deployments/{id}"), None, 204).await;
    until_status(&client, &stack.edge.url(&host, "/"), 404, Duration::from_secs(1)).await;
    // Freed: the name can be taken again.
    other.ok("POST", "/v1/deployments", Some(json!({"name": "shop", "workspace": "acme"})), 201).await;
}
