mod common;

use axum::http::{Method, StatusCode};
use common::{error_code, error_message, Harness, ADMIN};
use serde_json::{json, Value};

/// Asserts a 422 `invalid_field` whose message starts with (or, for nested fields, names) `field`.
async fn assert_invalid(h: &Harness, method: Method, path: &str, key: &str, body: Value, field: &str) {
    let (status, err) = h.call(method, path, key, Some(body.clone())).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body} → {err}");
    assert_eq!(error_code(&err), "invalid_field");
    assert!(error_message(&err).contains(field), "message {:?} should name {field}", error_message(&err));
}

#[tokio::test]
async fn every_invalid_field_is_a_422_naming_it() {
    let h = Harness::new().await;
    let (_, key) = h.tenant("Acme").await;
    h.sandbox(&key, json!({"id": "valid123", "address": "10.0.0.2"})).await;
    let branding = |logo: &str, accent: &str| json!({"logo_url": logo, "accent_color": accent});
    let limits = |rps: u64, per_minute: u64| {
        json!({"public_per_ip": {"rps": rps, "burst": 1}, "private_per_token": {"rps": 1, "burst": 1},
               "auth_failures_per_ip": {"per_minute": per_minute}})
    };
    let cases: Vec<(Method, &str, &str, Value, &str)> = vec![
        (Method::POST, "/v1/tenants", ADMIN, json!({"name": ""}), "name"),
        (Method::POST, "/v1/tenants", ADMIN, json!({"name": "x".repeat(101)}), "name"),
        (Method::PUT, "/v1/tenant/branding", &key, branding("http://a.dev/l.png", "#000000"), "logo_url"),
        (Method::PUT, "/v1/tenant/branding", &key, branding("https://a.dev/l.png", "red"), "accent_color"),
        (
            Method::PUT,
            "/v1/tenant/branding",
            &key,
            json!({"logo_url": "https://a.dev/l", "accent_color": "#000000", "support_url": "ftp://x"}),
            "support_url",
        ),
        (
            Method::PUT,
            "/v1/tenant/branding",
            &key,
            json!({"logo_url": "https://a.dev/l", "accent_color": "#000000", "product_name": "x".repeat(61)}),
            "product_name",
        ),
        (Method::PUT, "/v1/tenant/frame-ancestors", &key, json!({"sources": []}), "sources"),
        (
            Method::PUT,
            "/v1/tenant/frame-ancestors",
            &key,
            json!({"sources": ["a.com; script-src *"]}),
            "sources[0]",
        ),
        (Method::PUT, "/v1/tenant/rate-limits", &key, limits(0, 1), "public_per_ip.rps"),
        (Method::PUT, "/v1/tenant/rate-limits", &key, limits(1, 100_001), "auth_failures_per_ip.per_minute"),
        (Method::PUT, "/v1/tenant/rate-limits", &key, limits(5_000_000_000, 1), "public_per_ip.rps"),
        (Method::POST, "/v1/tenant/preview-domain", &key, json!({"hostname": "localhost"}), "hostname"),
        (Method::POST, "/v1/sandboxes", &key, json!({"address": "10.0.0.2:3000"}), "address"),
        (Method::POST, "/v1/sandboxes", &key, json!({"address": "http://x"}), "address"),
        (Method::POST, "/v1/sandboxes", &key, json!({"id": "BAD", "address": "x"}), "id"),
        (Method::POST, "/v1/sandboxes", &key, json!({"address": "x", "state": "waking"}), "state"),
        (
            Method::POST,
            "/v1/sandboxes",
            &key,
            json!({"address": "x", "default_visibility": "open"}),
            "default_visibility",
        ),
        (
            Method::POST,
            "/v1/sandboxes",
            &key,
            json!({"address": "x", "wake_policy": "always"}),
            "wake_policy",
        ),
        (
            Method::POST,
            "/v1/sandboxes",
            &key,
            json!({"address": "x", "preview_auth": {"token": "short"}}),
            "preview_auth",
        ),
        (
            Method::POST,
            "/v1/sandboxes",
            &key,
            json!({"address": "x", "external_user_id": "u".repeat(201)}),
            "external_user_id",
        ),
        (Method::POST, "/v1/sandboxes", &key, json!({"address": "x", "metadata": [1, 2]}), "metadata"),
        (
            Method::POST,
            "/v1/sandboxes",
            &key,
            json!({"address": "x", "metadata": {"a": "b".repeat(17_000)}}),
            "metadata",
        ),
        (Method::PATCH, "/v1/sandboxes/valid123", &key, json!({"address": "a b"}), "address"),
        (Method::POST, "/v1/sandboxes/valid123/previews", &key, json!({"port": 0}), "port"),
        (Method::POST, "/v1/sandboxes/valid123/previews", &key, json!({"port": 70000}), "port"),
        (
            Method::POST,
            "/v1/sandboxes/valid123/previews",
            &key,
            json!({"port": 80, "visibility": "x"}),
            "visibility",
        ),
    ];
    for (method, path, key, body, field) in cases {
        assert_invalid(&h, method, path, key, body, field).await;
    }
}

#[tokio::test]
async fn malformed_json_is_a_400() {
    let h = Harness::new().await;
    for body in ["{", "not json", "", "{\"name\": }"] {
        let (status, err) = h.raw(Method::POST, "/v1/tenants", Some(ADMIN), Some(body)).await;
        assert_eq!((status, error_code(&err)), (StatusCode::BAD_REQUEST, "bad_request"), "{body:?}");
    }
}

#[tokio::test]
async fn unknown_missing_or_mistyped_fields_are_422() {
    let h = Harness::new().await;
    for (body, field) in
        [(json!({"name": "Acme", "extra": 1}), "extra"), (json!({}), "name"), (json!({"name": 5}), "name")]
    {
        let (status, err) = h.call(Method::POST, "/v1/tenants", ADMIN, Some(body)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
        assert!(error_message(&err).contains(field), "{err}");
    }
}

/// The wire types edges read ignore unknown fields (mixed versions); the API bodies built from them must not.
#[tokio::test]
async fn a_typo_inside_a_nested_rate_limit_is_422() {
    let h = Harness::new().await;
    let (_, key) = h.tenant("Acme").await;
    let body = json!({"public_per_ip": {"rps": 1, "brust": 1}, "private_per_token": {"rps": 1, "burst": 1},
                      "auth_failures_per_ip": {"per_minute": 1}});
    let (status, err) = h.call(Method::PUT, "/v1/tenant/rate-limits", &key, Some(body)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert!(error_message(&err).contains("brust"), "{err}");
}

#[tokio::test]
async fn unknown_routes_and_bad_queries_answer_json() {
    let h = Harness::new().await;
    let (_, key) = h.tenant("Acme").await;
    let (status, err) = h.call(Method::GET, "/v1/nothing", &key, None).await;
    assert_eq!((status, error_code(&err)), (StatusCode::NOT_FOUND, "not_found"));
    let (status, err) = h.raw(Method::GET, "/v1/edge/feed?since=abc", Some(common::EDGE), None).await;
    assert_eq!((status, error_code(&err)), (StatusCode::BAD_REQUEST, "bad_request"));
    let (status, _) = h.call(Method::DELETE, "/v1/previews/pv_unknown", &key, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
