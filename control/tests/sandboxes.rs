mod common;

use axum::http::{Method, StatusCode};
use common::Harness;
use serde_json::json;

#[tokio::test]
async fn sandbox_created_with_defaults_and_generated_id() {
    let h = Harness::new().await;
    let (_, key) = h.tenant("Acme").await;
    let body = h.sandbox(&key, json!({"address": "Sandbox.Internal"})).await;
    let id = body["id"].as_str().expect("id");
    assert!(id.len() == 8 && id.as_bytes()[0].is_ascii_lowercase() && portico_wire::ids::is_host_id(id));
    assert_eq!(body["address"], "sandbox.internal");
    assert_eq!(body["state"], "running");
    assert_eq!(body["default_visibility"], "private");
    assert_eq!(body["wake_policy"], "on_request");
    assert_eq!(body["preview_auth"], false);
    assert!(body["last_request_at"].is_null());
    assert!(body.get("preview_auth_token").is_none());
}

#[tokio::test]
async fn preview_auth_token_is_shown_once_and_rotates() {
    let h = Harness::new().await;
    let (_, key) = h.tenant("Acme").await;
    let body = h
        .sandbox(
            &key,
            json!({"id": "auth1234", "address": "10.0.0.2", "preview_auth": {"token": "auto"},
                              "external_user_id": "u1", "metadata": {"plan": "pro"}}),
        )
        .await;
    let token = body["preview_auth_token"].as_str().expect("token");
    assert_eq!(token.len(), 43);
    assert_eq!(body["preview_auth"], true);
    let (_, shown) = h.call(Method::GET, "/v1/sandboxes/auth1234", &key, None).await;
    assert!(shown.get("preview_auth_token").is_none());
    assert_eq!(shown["metadata"], json!({"plan": "pro"}));

    let before = sandbox_hash(&h, "auth1234").await;
    assert_eq!(before.as_deref(), Some(hex_sha256(token).as_str()));
    let (status, rotated) =
        h.call(Method::POST, "/v1/sandboxes/auth1234/preview-auth/rotate", &key, None).await;
    assert_eq!(status, StatusCode::OK);
    let new = rotated["preview_auth_token"].as_str().expect("new token");
    assert_ne!(new, token);
    assert_eq!(sandbox_hash(&h, "auth1234").await.as_deref(), Some(hex_sha256(new).as_str()));
}

fn hex_sha256(s: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

async fn sandbox_hash(h: &Harness, id: &str) -> Option<String> {
    let portico_wire::FeedMessage::Snapshot { snapshot } = h.feed(0, 0).await else { panic!("snapshot") };
    snapshot
        .sandboxes
        .into_iter()
        .find(|s| s.id == id)
        .and_then(|s| s.preview_auth_sha256)
        .map(|h| h.to_hex())
}

#[tokio::test]
async fn sandbox_ids_are_unique_across_tenants() {
    let h = Harness::new().await;
    let (_, a) = h.tenant("A").await;
    let (_, b) = h.tenant("B").await;
    h.sandbox(&a, json!({"id": "same1234", "address": "10.0.0.2"})).await;
    let (status, _) =
        h.call(Method::POST, "/v1/sandboxes", &b, Some(json!({"id": "same1234", "address": "x"}))).await;
    assert_eq!(status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn patch_hibernate_list_and_delete() {
    let h = Harness::new().await;
    let (_, key) = h.tenant("Acme").await;
    h.sandbox(&key, json!({"id": "life1234", "address": "10.0.0.2", "external_user_id": "u1"})).await;
    h.sandbox(&key, json!({"id": "other123", "address": "10.0.0.3", "external_user_id": "u2"})).await;
    let (status, body) = h
        .call(
            Method::PATCH,
            "/v1/sandboxes/life1234",
            &key,
            Some(json!({"address": "10.0.0.9", "wake_policy": "off", "external_user_id": null})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((body["address"].as_str(), body["wake_policy"].as_str()), (Some("10.0.0.9"), Some("off")));
    assert!(body["external_user_id"].is_null());
    let (_, body) = h.call(Method::POST, "/v1/sandboxes/life1234/hibernate", &key, None).await;
    assert_eq!(body["state"], "hibernated");
    let (_, list) = h.call(Method::GET, "/v1/sandboxes?external_user_id=u2", &key, None).await;
    assert_eq!(list.as_array().map(|l| l.len()), Some(1));
    assert_eq!(list[0]["id"], "other123");
    let (status, _) = h.call(Method::DELETE, "/v1/sandboxes/life1234", &key, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = h.call(Method::DELETE, "/v1/sandboxes/life1234", &key, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn preview_on_same_port_replaces_the_old_one() {
    let h = Harness::new().await;
    let (_, key) = h.tenant("Acme").await;
    h.sandbox(&key, json!({"id": "prev1234", "address": "10.0.0.2", "default_visibility": "public"})).await;
    let (status, first) =
        h.call(Method::POST, "/v1/sandboxes/prev1234/previews", &key, Some(json!({"port": 3000}))).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(first["visibility"], "public");
    assert_eq!(first["status"], "active");
    let slug = first["slug"].as_str().expect("slug");
    assert_eq!(slug.len(), 12);
    assert!(first["id"].as_str().expect("id").starts_with("pv_"));
    assert_eq!(first["url"], format!("http://{slug}.preview.localhost:8080/"));

    let (status, second) = h
        .call(
            Method::POST,
            "/v1/sandboxes/prev1234/previews",
            &key,
            Some(json!({"port": 3000, "visibility": "private"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_ne!(second["slug"], first["slug"]);
    assert_eq!(second["visibility"], "private");
    let old = format!("/v1/previews/{}", first["id"].as_str().expect("id"));
    assert_eq!(h.call(Method::GET, &old, &key, None).await.0, StatusCode::NOT_FOUND);
    let (_, list) = h.call(Method::GET, "/v1/previews?sandbox_id=prev1234", &key, None).await;
    assert_eq!(list.as_array().map(|l| l.len()), Some(1));

    let portico_wire::FeedMessage::Snapshot { snapshot } = h.feed(0, 0).await else { panic!("snapshot") };
    assert_eq!(snapshot.previews.len(), 1);
    assert_eq!(snapshot.previews[0].slug, second["slug"].as_str().expect("slug"));

    let new = format!("/v1/previews/{}", second["id"].as_str().expect("id"));
    assert_eq!(h.call(Method::DELETE, &new, &key, None).await.0, StatusCode::NO_CONTENT);
    assert_eq!(h.call(Method::GET, &new, &key, None).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn previews_of_another_tenant_are_forbidden() {
    let h = Harness::new().await;
    let (_, a) = h.tenant("A").await;
    let (_, b) = h.tenant("B").await;
    h.sandbox(&a, json!({"id": "own12345", "address": "10.0.0.2"})).await;
    let (_, p) = h.call(Method::POST, "/v1/sandboxes/own12345/previews", &a, Some(json!({"port": 80}))).await;
    let path = format!("/v1/previews/{}", p["id"].as_str().expect("id"));
    assert_eq!(h.call(Method::GET, &path, &b, None).await.0, StatusCode::FORBIDDEN);
    assert_eq!(h.call(Method::DELETE, &path, &b, None).await.0, StatusCode::FORBIDDEN);
    assert_eq!(h.call(Method::GET, "/v1/previews", &b, None).await.1, json!([]));
}

// Several threads, so SQLite sees truly parallel writers on separate connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_all_succeed_with_distinct_versions() {
    let h = std::sync::Arc::new(Harness::new().await);
    let (_, key) = h.tenant("Acme").await;
    let tasks: Vec<_> = (0..24)
        .map(|i| {
            let (h, key) = (h.clone(), key.clone());
            tokio::spawn(async move {
                let body = json!({"id": format!("conc{i:04}"), "address": "10.0.0.2"});
                h.call(Method::POST, "/v1/sandboxes", &key, Some(body)).await.0
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.expect("join"), StatusCode::CREATED);
    }
    let portico_wire::FeedMessage::Snapshot { snapshot } = h.feed(0, 0).await else { panic!("snapshot") };
    assert_eq!(snapshot.sandboxes.len(), 24);
}

#[tokio::test]
async fn loopback_and_link_local_addresses_are_refused_under_control_defaults() {
    let h = Harness::new().await;
    let (_, key) = h.tenant("Acme").await;
    for address in ["127.0.0.1", "169.254.169.254", "::1", "0.0.0.0"] {
        let (status, body) =
            h.call(Method::POST, "/v1/sandboxes", &key, Some(json!({"address": address}))).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{address}: {body}");
        assert_eq!(common::error_code(&body), "invalid_field");
        assert!(body.to_string().contains("address"), "{body}");
    }
    h.sandbox(&key, json!({"id": "fine1234", "address": "10.0.0.2"})).await;
    let (status, body) = h
        .call(Method::PATCH, "/v1/sandboxes/fine1234", &key, Some(json!({"address": "169.254.169.254"})))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
}

#[tokio::test]
async fn loopback_is_allowed_when_the_policy_names_it() {
    let h = Harness::with(|c| {
        c.upstream_allow = portico_wire::upstream::parse_list(&["127.0.0.0/8"]).expect("cidr")
    })
    .await;
    let (_, key) = h.tenant("Acme").await;
    let body = h.sandbox(&key, json!({"address": "127.0.0.7"})).await;
    assert_eq!(body["address"], "127.0.0.7");
    let (status, _) = h.call(Method::POST, "/v1/sandboxes", &key, Some(json!({"address": "10.0.0.2"}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "10/8 is no longer listed");
}

#[tokio::test]
async fn lists_come_in_pages_that_follow_each_other_without_gaps_or_repeats() {
    let h = Harness::new().await;
    let (_, key) = h.tenant("Acme").await;
    let mut made = Vec::new();
    for i in 0..5 {
        let body = h.sandbox(&key, json!({"id": format!("page{i:04}"), "address": "10.0.0.2"})).await;
        made.push(body["id"].as_str().expect("id").to_string());
    }
    let mut seen = Vec::new();
    let mut path = "/v1/sandboxes?limit=2".to_string();
    for _ in 0..5 {
        let (status, headers, body) = h.raw_with_headers(Method::GET, &path, Some(&key), None).await;
        assert_eq!(status, StatusCode::OK);
        let page = body.as_array().expect("array");
        assert!(page.len() <= 2);
        seen.extend(page.iter().map(|s| s["id"].as_str().expect("id").to_string()));
        let Some(link) = headers.get("link").and_then(|v| v.to_str().ok()) else { break };
        let next = link.trim_start_matches('<').split('>').next().expect("link target");
        assert!(next.contains("limit=2") && next.contains("cursor="), "{link}");
        assert_eq!(headers["x-next-cursor"].to_str().ok(), next.split("cursor=").nth(1));
        path = next.to_string();
    }
    assert_eq!(seen, made, "every sandbox once, oldest first");

    for bad in ["/v1/sandboxes?cursor=nonsense!", "/v1/sandboxes?limit=0", "/v1/sandboxes?limit=5000"] {
        let (status, body) = h.raw(Method::GET, bad, Some(&key), None).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
    }
}
