//! SPEC §7 at the API: the admin's per-tenant upstream narrowing and quotas, addresses checked wherever
//! control accepts them, and domains one tenant cannot take from another.
mod common;

use axum::http::{Method, StatusCode};
use common::{error_code, error_message, Harness, ADMIN};
use serde_json::{json, Value};

async fn patch_tenant(h: &Harness, id: &str, body: Value) -> (StatusCode, Value) {
    h.call(Method::PATCH, &format!("/v1/tenants/{id}"), ADMIN, Some(body)).await
}

/// Runs SQL on the test's database (what no API call does: mark a preview domain verified).
async fn sql(h: &Harness, statement: &str, bind: &str) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&format!("sqlite://{}", h.db_path().display())).await.expect("open db");
    sqlx::query(statement).bind(bind).execute(&pool).await.expect("sql");
    pool.close().await;
}

#[tokio::test]
async fn the_admin_narrows_a_tenant_and_the_feed_carries_it() {
    let h = Harness::new().await;
    let (id, key) = h.tenant("Acme").await;
    let (_, other_key) = h.tenant("Other").await;
    h.sandbox(&key, json!({"id": "before01", "address": "10.1.2.3"})).await;

    let (status, body) =
        patch_tenant(&h, &id, json!({"upstream_cidrs": ["10.9.0.0/16", "10.9.0.0/16"]})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["upstream_cidrs"], json!(["10.9.0.0/16"]), "deduplicated: {body}");
    let (_, shown) = h.call(Method::GET, "/v1/tenant", &key, None).await;
    assert_eq!(shown["upstream_cidrs"], json!(["10.9.0.0/16"]), "{shown}");
    let (_, list) = h.call(Method::GET, "/v1/tenants", ADMIN, None).await;
    let listed =
        list.as_array().expect("list").iter().find(|t| t["id"] == id.as_str()).expect("listed").clone();
    assert_eq!(listed["upstream_cidrs"], json!(["10.9.0.0/16"]));

    // Inside --upstream-allow but outside the narrowing: refused on create and on PATCH.
    let (status, body) =
        h.call(Method::POST, "/v1/sandboxes", &key, Some(json!({"address": "10.1.2.3"}))).await;
    assert_eq!((status, error_code(&body)), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field"), "{body}");
    assert!(error_message(&body).starts_with("address:"), "{body}");
    let (status, _) =
        h.call(Method::PATCH, "/v1/sandboxes/before01", &key, Some(json!({"address": "10.1.2.4"}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    h.sandbox(&key, json!({"address": "10.9.8.7"})).await;
    // Another tenant is not narrowed.
    h.sandbox(&other_key, json!({"address": "10.1.2.3"})).await;

    let portico_wire::FeedMessage::Snapshot { snapshot } = h.feed(0, 0).await else { panic!("snapshot") };
    let tenant = snapshot.tenants.iter().find(|t| t.id == id).expect("tenant in the snapshot");
    assert_eq!(tenant.upstream_cidrs, Some(vec!["10.9.0.0/16".parse().expect("cidr")]));

    // `null` lifts the narrowing.
    let (status, body) = patch_tenant(&h, &id, json!({"upstream_cidrs": null})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["upstream_cidrs"].is_null(), "{body}");
    h.sandbox(&key, json!({"address": "10.1.2.3"})).await;
}

#[tokio::test]
async fn tenant_patches_are_strict_and_admin_only() {
    let h = Harness::new().await;
    let (id, key) = h.tenant("Acme").await;
    for (body, field) in [
        (json!({"upstream_cidrs": ["10.0.0.0/33"]}), "upstream_cidrs[0]"),
        (json!({"upstream_cidrs": ["10.1.2.3/8"]}), "upstream_cidrs[0]"),
        (json!({"upstream_cidrs": ["10.0.0.0/8", "nope"]}), "upstream_cidrs[1]"),
        // Wider than the global policy, or a range it refuses: the narrowing cannot widen anything.
        (json!({"upstream_cidrs": ["0.0.0.0/0"]}), "upstream_cidrs[0]"),
        (json!({"upstream_cidrs": ["169.254.0.0/16"]}), "upstream_cidrs[0]"),
        (json!({"upstream_cidr": []}), "upstream_cidr"),
        (json!({"quotas": {"sandbox": 1}}), "sandbox"),
        (json!({"quotas": {"sandboxes": -1}}), "sandboxes"),
        (json!({"quotas": {"release_bytes": u64::MAX}}), "quotas.release_bytes"),
    ] {
        let (status, err) = patch_tenant(&h, &id, body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body} → {err}");
        assert_eq!(error_code(&err), "invalid_field");
        assert!(error_message(&err).contains(field), "{body} → {err}");
    }
    let (status, _) = h.call(Method::PATCH, &format!("/v1/tenants/{id}"), &key, Some(json!({}))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a tenant cannot widen its own policy");
    let (status, _) = patch_tenant(&h, "tn_missing", json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Nothing was stored by the refused patches.
    let (_, shown) = h.call(Method::GET, "/v1/tenant", &key, None).await;
    assert!(shown["upstream_cidrs"].is_null(), "{shown}");
    assert_eq!(shown["quotas"]["sandboxes"], 1000, "{shown}");
}

#[tokio::test]
async fn deployment_instances_must_lie_inside_the_policy() {
    let h = Harness::new().await;
    let (id, key) = h.tenant("Acme").await;
    let (_, dep) = h
        .call(Method::POST, "/v1/deployments", &key, Some(json!({"name": "shop", "workspace": "acme"})))
        .await;
    let versions = format!("/v1/deployments/{}/versions", dep["id"].as_str().expect("id"));
    for (instances, bad) in [
        (json!(["10.0.0.5:8080", "127.0.0.1:8080"]), "instances[1]"),
        (json!(["169.254.169.254:80"]), "instances[0]"),
        (json!(["[::1]:80"]), "instances[0]"),
    ] {
        let (status, body) =
            h.call(Method::POST, &versions, &key, Some(json!({"instances": instances}))).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{instances} → {body}");
        assert!(error_message(&body).starts_with(bad), "{body}");
    }
    let (status, body) =
        h.call(Method::POST, &versions, &key, Some(json!({"instances": ["10.0.0.5:8080"]}))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    patch_tenant(&h, &id, json!({"upstream_cidrs": ["192.168.7.0/24"]})).await;
    let (status, body) =
        h.call(Method::POST, &versions, &key, Some(json!({"instances": ["10.0.0.5:8080"]}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "narrowed: {body}");
    let (status, _) =
        h.call(Method::POST, &versions, &key, Some(json!({"instances": ["192.168.7.9:8080"]}))).await;
    assert_eq!(status, StatusCode::CREATED);
}

#[tokio::test]
async fn quotas_refuse_the_object_over_the_limit_and_deletes_free_slots() {
    let h = Harness::with(|c| c.quotas.previews = 1).await;
    let (id, key) = h.tenant("Acme").await;
    let (status, body) =
        patch_tenant(&h, &id, json!({"quotas": {"sandboxes": 2, "deployments": 1, "custom_domains": 1}}))
            .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["quotas"],
        json!({"sandboxes": 2, "previews": 1, "deployments": 1, "custom_domains": 1,
               "release_bytes": 10u64 * 1024 * 1024 * 1024}),
        "the flag default for what the admin did not set: {body}"
    );

    h.sandbox(&key, json!({"id": "quota001", "address": "10.0.0.1"})).await;
    h.sandbox(&key, json!({"id": "quota002", "address": "10.0.0.2"})).await;
    let (status, body) = h
        .call(Method::POST, "/v1/sandboxes", &key, Some(json!({"id": "quota003", "address": "10.0.0.3"})))
        .await;
    assert_eq!((status, error_code(&body)), (StatusCode::CONFLICT, "quota_exceeded"), "{body}");
    assert!(error_message(&body).contains("sandboxes quota is 2"), "{body}");
    let (status, _) = h.call(Method::GET, "/v1/sandboxes/quota003", &key, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing stored");
    h.call(Method::DELETE, "/v1/sandboxes/quota002", &key, None).await;
    h.sandbox(&key, json!({"id": "quota003", "address": "10.0.0.3"})).await;

    // Previews: replacing the one on the same port needs no free slot; a second port does.
    let previews = "/v1/sandboxes/quota001/previews";
    let (status, first) = h.call(Method::POST, previews, &key, Some(json!({"port": 3000}))).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let (status, _) = h.call(Method::POST, previews, &key, Some(json!({"port": 3000}))).await;
    assert_eq!(status, StatusCode::CREATED, "a replacement");
    let (status, body) = h.call(Method::POST, previews, &key, Some(json!({"port": 3001}))).await;
    assert_eq!((status, error_code(&body)), (StatusCode::CONFLICT, "quota_exceeded"), "{body}");
    assert!(error_message(&body).contains("previews quota is 1"), "{body}");

    // Deployments and their custom domains.
    let (status, dep) =
        h.call(Method::POST, "/v1/deployments", &key, Some(json!({"name": "a", "workspace": "acme"}))).await;
    assert_eq!(status, StatusCode::CREATED, "{dep}");
    let (status, body) =
        h.call(Method::POST, "/v1/deployments", &key, Some(json!({"name": "b", "workspace": "acme"}))).await;
    assert_eq!((status, error_code(&body)), (StatusCode::CONFLICT, "quota_exceeded"), "{body}");
    let domains = format!("/v1/deployments/{}/domains", dep["id"].as_str().expect("id"));
    let (status, _) = h.call(Method::POST, &domains, &key, Some(json!({"hostname": "a.example.com"}))).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, again) =
        h.call(Method::POST, &domains, &key, Some(json!({"hostname": "a.example.com"}))).await;
    assert_eq!(status, StatusCode::OK, "adding the same one again takes no slot: {again}");
    let (status, body) =
        h.call(Method::POST, &domains, &key, Some(json!({"hostname": "b.example.com"}))).await;
    assert_eq!((status, error_code(&body)), (StatusCode::CONFLICT, "quota_exceeded"), "{body}");
    assert!(error_message(&body).contains("custom_domains quota is 1"), "{body}");
    h.call(Method::DELETE, &format!("{domains}/a.example.com"), &key, None).await;
    let (status, _) = h.call(Method::POST, &domains, &key, Some(json!({"hostname": "b.example.com"}))).await;
    assert_eq!(status, StatusCode::CREATED, "freed by the delete");

    // `null` puts a quota back to the default.
    let (_, body) = patch_tenant(&h, &id, json!({"quotas": {"sandboxes": null}})).await;
    assert_eq!(body["quotas"]["sandboxes"], 1000, "{body}");
    assert_eq!(body["quotas"]["deployments"], 1, "kept: {body}");
    let (_, body) = patch_tenant(&h, &id, json!({"quotas": null})).await;
    assert_eq!(body["quotas"]["deployments"], 100, "{body}");
}

// Several threads, so SQLite sees truly parallel writers on separate connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_cannot_both_take_the_last_slot() {
    let h = std::sync::Arc::new(Harness::with(|c| c.quotas.sandboxes = 5).await);
    let (_, key) = h.tenant("Acme").await;
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let (h, key) = (h.clone(), key.clone());
            tokio::spawn(async move {
                let body = json!({"id": format!("race{i:04}"), "address": "10.0.0.2"});
                h.call(Method::POST, "/v1/sandboxes", &key, Some(body)).await
            })
        })
        .collect();
    let mut created = 0;
    for task in tasks {
        let (status, body) = task.await.expect("join");
        match status {
            StatusCode::CREATED => created += 1,
            StatusCode::CONFLICT => assert_eq!(error_code(&body), "quota_exceeded", "{body}"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(created, 5);
    let (_, list) = h.call(Method::GET, "/v1/sandboxes", &key, None).await;
    assert_eq!(list.as_array().map(Vec::len), Some(5));
}

#[tokio::test]
async fn domains_of_one_tenant_cannot_be_claimed_by_another() {
    let h = Harness::new().await;
    let (acme_id, acme) = h.tenant("Acme").await;
    let (_, other) = h.tenant("Other").await;
    let (status, _) = h
        .call(
            Method::POST,
            "/v1/tenant/preview-domain",
            &acme,
            Some(json!({"hostname": "previews.acme.test"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, dep) =
        h.call(Method::POST, "/v1/deployments", &other, Some(json!({"name": "o", "workspace": "o"}))).await;
    let domains = format!("/v1/deployments/{}/domains", dep["id"].as_str().expect("id"));
    let claim = |host: &'static str| {
        let (h, other, domains) = (&h, &other, &domains);
        async move { h.call(Method::POST, domains, other, Some(json!({"hostname": host}))).await }
    };

    // Equal to another tenant's preview domain, even a pending one: refused.
    let (status, body) = claim("previews.acme.test").await;
    assert_eq!((status, error_code(&body)), (StatusCode::CONFLICT, "conflict"), "{body}");
    // Under it while it is pending: allowed (nothing is proven yet); once verified: refused.
    let (status, _) = claim("early.previews.acme.test").await;
    assert_eq!(status, StatusCode::CREATED);
    sql(&h, "UPDATE tenants SET preview_domain_status = 'verified' WHERE id = $1", &acme_id).await;
    let (status, body) = claim("shop.previews.acme.test").await;
    assert_eq!((status, error_code(&body)), (StatusCode::CONFLICT, "conflict"), "{body}");
    let (status, body) = claim("a.b.previews.acme.test").await;
    assert_eq!((status, error_code(&body)), (StatusCode::CONFLICT, "conflict"), "{body}");
    // Only under a label boundary.
    let (status, _) = claim("xpreviews.acme.test").await;
    assert_eq!(status, StatusCode::CREATED);

    // Equal to another tenant's custom domain: refused, as a custom domain and as a preview domain.
    let (_, dep) =
        h.call(Method::POST, "/v1/deployments", &acme, Some(json!({"name": "a", "workspace": "a"}))).await;
    let acme_domains = format!("/v1/deployments/{}/domains", dep["id"].as_str().expect("id"));
    let (status, body) =
        h.call(Method::POST, &acme_domains, &acme, Some(json!({"hostname": "xpreviews.acme.test"}))).await;
    assert_eq!((status, error_code(&body)), (StatusCode::CONFLICT, "conflict"), "{body}");
    let (status, body) = h
        .call(
            Method::POST,
            "/v1/tenant/preview-domain",
            &acme,
            Some(json!({"hostname": "xpreviews.acme.test"})),
        )
        .await;
    assert_eq!((status, error_code(&body)), (StatusCode::CONFLICT, "conflict"), "{body}");
}

/// A `.tar.gz` holding one file of `size` bytes, and its SHA-256 (hex).
fn release(name: &str, size: usize) -> (Vec<u8>, String) {
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(size as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, name, vec![b'x'; size].as_slice()).expect("append");
    let raw = tar.into_inner().expect("tar");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &raw).expect("gzip");
    let bytes = gz.finish().expect("gzip");
    let sha = ring::digest::digest(&ring::digest::SHA256, &bytes);
    (bytes, hex::encode(sha.as_ref()))
}

async fn upload(h: &Harness, key: &str, bytes: Vec<u8>, sha: &str) -> (StatusCode, Value) {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let req = axum::http::Request::builder()
        .method(Method::PUT)
        .uri(format!("/v1/releases/{sha}"))
        .header("authorization", format!("Bearer {key}"))
        .body(axum::body::Body::from(bytes))
        .expect("request");
    let res = h.router.clone().oneshot(req).await.expect("response");
    let status = res.status();
    let body = res.into_body().collect().await.expect("body").to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn release_bytes_quota_counts_what_the_tenant_stored() {
    let h = Harness::new().await;
    let (id, key) = h.tenant("Acme").await;
    patch_tenant(&h, &id, json!({"quotas": {"release_bytes": 1500}})).await;
    let (a, sha_a) = release("a.html", 1000);
    let (status, body) = upload(&h, &key, a.clone(), &sha_a).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _) = upload(&h, &key, a, &sha_a).await;
    assert_eq!(status, StatusCode::OK, "uploading the same one again adds nothing");
    let (b, sha_b) = release("b.html", 600);
    let (status, body) = upload(&h, &key, b.clone(), &sha_b).await;
    assert_eq!((status, error_code(&body)), (StatusCode::CONFLICT, "quota_exceeded"), "{body}");
    assert!(error_message(&body).contains("release_bytes quota is 1500"), "{body}");
    // Another tenant has its own quota.
    let (_, other) = h.tenant("Other").await;
    let (status, _) = upload(&h, &other, b, &sha_b).await;
    assert_eq!(status, StatusCode::CREATED);
}
