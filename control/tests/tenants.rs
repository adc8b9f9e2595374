mod common;

use axum::http::{Method, StatusCode};
use common::{error_code, Harness, ADMIN};
use serde_json::json;
use sqlx::Row;

#[tokio::test]
async fn admin_creates_tenant_and_key_is_shown_once() {
    let h = Harness::new().await;
    let (status, body) = h.call(Method::POST, "/v1/tenants", ADMIN, Some(json!({"name": "Acme"}))).await;
    assert_eq!(status, StatusCode::CREATED);
    let key = body["api_key"].as_str().expect("key");
    assert!(key.starts_with("msk_") && key.len() == 47, "{key}");
    assert!(body["id"].as_str().expect("id").starts_with("tn_"));
    assert!(body["created_at"].is_string());

    let (status, list) = h.call(Method::GET, "/v1/tenants", ADMIN, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().expect("list").len(), 1);
    assert!(!list.to_string().contains("msk_"), "listing must not show keys: {list}");
}

#[tokio::test]
async fn api_keys_are_stored_only_as_sha256_hashes() {
    let h = Harness::new().await;
    let (_, key) = h.tenant("Acme").await;
    let url = format!("sqlite://{}", h.db_path().display());
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await.expect("open db");
    let rows = sqlx::query("SELECT api_key_sha256 FROM tenants").fetch_all(&pool).await.expect("query");
    let stored: String = rows[0].get(0);
    assert_ne!(stored, key);
    assert_eq!(stored.len(), 64);
    let dump = std::fs::read(h.db_path()).expect("read db");
    let wal = std::fs::read(h.db_path().with_extension("db-wal")).unwrap_or_default();
    for bytes in [dump, wal] {
        assert!(!bytes.windows(key.len()).any(|w| w == key.as_bytes()), "key found in clear");
    }
}

#[cfg(unix)]
#[tokio::test]
async fn database_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let h = Harness::new().await;
    let mode = std::fs::metadata(h.db_path()).expect("db exists").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn wrong_key_kinds_are_refused() {
    let h = Harness::new().await;
    let (_, key) = h.tenant("Acme").await;
    let (status, body) = h.call(Method::GET, "/v1/tenants", &key, None).await;
    assert_eq!((status, error_code(&body)), (StatusCode::FORBIDDEN, "forbidden"));
    let (status, body) = h.call(Method::GET, "/v1/tenant", ADMIN, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(common::error_message(&body).contains("use a tenant key"));
    let (status, body) = h.call(Method::GET, "/v1/tenant", "msk_nope", None).await;
    assert_eq!((status, error_code(&body)), (StatusCode::UNAUTHORIZED, "unauthorized"));
    let (status, _) = h.raw(Method::GET, "/v1/tenants", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn tenant_cannot_touch_another_tenants_sandbox() {
    let h = Harness::new().await;
    let (_, a) = h.tenant("A").await;
    let (_, b) = h.tenant("B").await;
    h.sandbox(&a, json!({"id": "sbxa1234", "address": "10.0.0.2"})).await;
    for (method, path, body) in [
        (Method::GET, "/v1/sandboxes/sbxa1234", None),
        (Method::PATCH, "/v1/sandboxes/sbxa1234", Some(json!({"state": "hibernated"}))),
        (Method::DELETE, "/v1/sandboxes/sbxa1234", None),
        (Method::POST, "/v1/sandboxes/sbxa1234/hibernate", None),
        (Method::POST, "/v1/sandboxes/sbxa1234/preview-auth/rotate", None),
        (Method::POST, "/v1/sandboxes/sbxa1234/previews", Some(json!({"port": 3000}))),
    ] {
        let (status, body) = h.call(method.clone(), path, &b, body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {body}");
    }
    let (_, list) = h.call(Method::GET, "/v1/sandboxes", &b, None).await;
    assert_eq!(list, json!([]));
    let (status, _) = h.call(Method::GET, "/v1/sandboxes/nosuch12", &b, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = h.call(Method::GET, "/v1/sandboxes/NOT..valid", &b, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn tenant_settings_are_stored_and_shown() {
    let h = Harness::new().await;
    let (_, key) = h.tenant("Acme").await;
    let (status, body) = h
        .call(
            Method::PUT,
            "/v1/tenant/branding",
            &key,
            Some(json!({"logo_url": "https://cdn.acme.dev/logo.png", "accent_color": "#FF0066", "product_name": "Acme"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["branding"]["accent_color"], "#ff0066");
    let (status, body) = h
        .call(
            Method::PUT,
            "/v1/tenant/frame-ancestors",
            &key,
            Some(json!({"sources": ["'self'", "HTTPS://App.Acme.dev"]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["frame_ancestors"], json!(["'self'", "https://app.acme.dev"]));
    let limits = json!({"public_per_ip": {"rps": 5, "burst": 10}, "private_per_token": {"rps": 7, "burst": 9},
                        "auth_failures_per_ip": {"per_minute": 3}});
    let (status, body) = h.call(Method::PUT, "/v1/tenant/rate-limits", &key, Some(limits.clone())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = h
        .call(Method::POST, "/v1/tenant/preview-domain", &key, Some(json!({"hostname": "Preview.Acme.dev"})))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        body,
        json!({"hostname": "preview.acme.dev", "status": "pending", "cname_target": "edge.example.net"})
    );

    let (_, shown) = h.call(Method::GET, "/v1/tenant", &key, None).await;
    assert_eq!(shown["rate_limits"], limits);
    assert_eq!(shown["preview_domain"]["status"], "pending");
    assert_eq!(shown["branding"]["logo_url"], "https://cdn.acme.dev/logo.png");
}

#[tokio::test]
async fn preview_domain_claimed_by_another_tenant_conflicts() {
    let h = Harness::new().await;
    let (_, a) = h.tenant("A").await;
    let (_, b) = h.tenant("B").await;
    let body = Some(json!({"hostname": "p.shared.dev"}));
    assert_eq!(
        h.call(Method::POST, "/v1/tenant/preview-domain", &a, body.clone()).await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        h.call(Method::POST, "/v1/tenant/preview-domain", &a, body.clone()).await.0,
        StatusCode::CREATED
    );
    let (status, err) = h.call(Method::POST, "/v1/tenant/preview-domain", &b, body).await;
    assert_eq!((status, error_code(&err)), (StatusCode::CONFLICT, "conflict"));
}

#[tokio::test]
async fn deleting_a_tenant_removes_its_sandboxes_previews_and_key() {
    let h = Harness::new().await;
    let (id, key) = h.tenant("Acme").await;
    h.sandbox(&key, json!({"id": "gone1234", "address": "10.0.0.2"})).await;
    let (status, _) =
        h.call(Method::POST, "/v1/sandboxes/gone1234/previews", &key, Some(json!({"port": 3000}))).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = h.call(Method::DELETE, &format!("/v1/tenants/{id}"), ADMIN, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = h.call(Method::GET, "/v1/tenant", &key, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = h.call(Method::DELETE, &format!("/v1/tenants/{id}"), ADMIN, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let portico_wire::FeedMessage::Snapshot { snapshot } = h.feed(0, 0).await else { panic!("snapshot") };
    assert!(snapshot.tenants.is_empty() && snapshot.sandboxes.is_empty() && snapshot.previews.is_empty());
    // The id is free again once its owner is gone.
    let (_, other) = h.tenant("Other").await;
    h.sandbox(&other, json!({"id": "gone1234", "address": "10.0.0.3"})).await;
}

#[tokio::test]
async fn generated_admin_key_is_written_to_the_data_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = common::config(dir.path());
    config.admin_key = None;
    config.edge_token = None;
    let control = portico_control::Control::start(config.clone()).await.expect("start");
    let stored = std::fs::read_to_string(dir.path().join("admin.key")).expect("admin.key");
    assert!(stored.trim().starts_with("mpa_") && stored.trim().len() == 47);
    let token = std::fs::read_to_string(dir.path().join("edge.token")).expect("edge.token");
    assert_eq!(token.trim(), control.edge_token());
    drop(control);
    // A restart reads the same secrets back.
    let again = portico_control::Control::start(config).await.expect("restart");
    assert_eq!(again.edge_token(), token.trim());
}
