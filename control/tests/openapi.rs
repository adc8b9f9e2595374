//! `GET /v1/openapi.json`: a valid OpenAPI 3.1 document that documents every route the router serves,
//! each with its errors and its key, and nothing the router does not serve.

mod common;

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::Harness;
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];
const SCHEMES: [&str; 3] = ["admin_key", "tenant_key", "edge_token"];

async fn document(h: &Harness) -> (String, Value) {
    let req = Request::get("/v1/openapi.json").body(Body::empty()).expect("request");
    let res = h.router.clone().oneshot(req).await.expect("response");
    assert_eq!(res.status(), StatusCode::OK, "served without a key");
    let bytes = res.into_body().collect().await.expect("body").to_bytes();
    let text = String::from_utf8(bytes.to_vec()).expect("UTF-8");
    let value = serde_json::from_str(&text).expect("JSON");
    (text, value)
}

/// Every (method, path) the document has, e.g. `("post", "/v1/sandboxes/{id}/previews")`.
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let paths = doc["paths"].as_object().expect("paths");
    let mut out = Vec::new();
    for (path, item) in paths {
        for method in METHODS {
            if let Some(op) = item.get(method) {
                out.push((method.to_string(), path.clone(), op.clone()));
            }
        }
    }
    out
}

fn resolve<'a>(doc: &'a Value, reference: &str) -> Option<&'a Value> {
    doc.pointer(reference.strip_prefix('#')?)
}

fn refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn the_document_is_valid_openapi_3_1() {
    let h = Harness::new().await;
    let (text, doc) = document(&h).await;

    // The typed OpenAPI 3.1 model reads it, and its version is 3.1.x.
    let spec = oas3::from_json(&text).expect("an OpenAPI 3.1 document");
    let version = spec.validate_version().expect("a supported version");
    assert_eq!((version.major, version.minor), (3, 1));
    assert!(spec.info.title.contains("Portico"));

    // Every reference resolves, inside this document.
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in &all {
        assert!(r.starts_with("#/components/"), "{r} is not local");
        assert!(resolve(&doc, r).is_some(), "{r} does not resolve");
    }

    // Every schema is a valid JSON Schema (2020-12, OpenAPI 3.1's dialect).
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    assert!(schemas.contains_key("ErrorBody"));
    for (name, schema) in schemas {
        if let Err(e) = jsonschema::meta::validate(schema) {
            panic!("schema {name} is not valid JSON Schema: {e}");
        }
    }

    // The three bearer schemes.
    let schemes = doc["components"]["securitySchemes"].as_object().expect("securitySchemes");
    assert_eq!(schemes.keys().map(String::as_str).collect::<BTreeSet<_>>(), SCHEMES.into_iter().collect());
    for (name, scheme) in schemes {
        assert_eq!(scheme["type"], "http", "{name}");
        assert_eq!(scheme["scheme"], "bearer", "{name}");
    }

    // Every error response is a shared one, with the error body.
    let responses = doc["components"]["responses"].as_object().expect("responses");
    for (name, response) in responses {
        let schema = &response["content"]["application/json"]["schema"]["$ref"];
        assert_eq!(schema, "#/components/schemas/ErrorBody", "{name}");
    }
    let error = &schemas["ErrorBody"];
    assert_eq!(error["required"], serde_json::json!(["error"]));
    let detail = resolve(&doc, error["properties"]["error"]["$ref"].as_str().expect("ref")).expect("detail");
    assert_eq!(detail["properties"]["code"]["type"], "string");
    assert_eq!(detail["properties"]["message"]["type"], "string");

    let mut operation_ids = BTreeSet::new();
    for (method, path, op) in operations(&doc) {
        let at = format!("{} {path}", method.to_uppercase());
        assert!(operation_ids.insert(op["operationId"].to_string()), "{at}: duplicate operationId");
        assert!(op["summary"].as_str().is_some_and(|s| !s.is_empty() && !s.contains('\n')), "{at}: summary");
        assert!(op["tags"].as_array().is_some_and(|t| !t.is_empty()), "{at}: tag");

        // Path parameters: exactly those in the template.
        let in_template: BTreeSet<String> =
            path.split('{').skip(1).filter_map(|p| p.split_once('}')).map(|(n, _)| n.to_string()).collect();
        let params = op["parameters"].as_array().cloned().unwrap_or_default();
        let declared: BTreeSet<String> = params
            .iter()
            .filter(|p| p["in"] == "path")
            .map(|p| p["name"].as_str().expect("name").to_string())
            .collect();
        assert_eq!(in_template, declared, "{at}: path parameters");

        let responses = op["responses"].as_object().expect("responses");
        let codes: BTreeSet<&str> = responses.keys().map(String::as_str).collect();
        assert!(codes.iter().any(|c| c.starts_with('2')), "{at}: a success response");
        for (code, response) in responses {
            if code.starts_with('4') || code.starts_with('5') {
                let r = response["$ref"].as_str().unwrap_or_default();
                assert!(
                    r.starts_with("#/components/responses/"),
                    "{at}: {code} is not a shared error response"
                );
            }
        }

        // Security: the public endpoints are exactly the ones outside the API proper.
        let security = op["security"].as_array().cloned().unwrap_or_default();
        let public = matches!(path.as_str(), "/v1/openapi.json" | "/healthz" | "/readyz" | "/metrics");
        if public {
            assert!(security.is_empty(), "{at}: needs no key");
            continue;
        }
        assert!(!security.is_empty(), "{at}: names its key");
        for requirement in &security {
            for name in requirement.as_object().expect("requirement").keys() {
                assert!(SCHEMES.contains(&name.as_str()), "{at}: unknown scheme {name}");
            }
        }
        assert!(codes.contains("401"), "{at}: 401 for a missing key");
        let edge_only = security.iter().all(|r| r.get("edge_token").is_some());
        if !edge_only {
            assert!(codes.contains("403"), "{at}: 403 for the wrong kind of key");
        }
        if let Some(body) = op.get("requestBody") {
            if body["content"].get("application/json").is_some() {
                for code in ["400", "413", "422"] {
                    assert!(codes.contains(code), "{at}: {code} for a JSON body");
                }
            }
        }
        if params.iter().any(|p| p["in"] == "query") {
            assert!(codes.contains("400"), "{at}: 400 for a bad query string");
        }
    }
}

fn is_fallback(status: StatusCode, body: &[u8]) -> bool {
    let value: Value = serde_json::from_slice(body).unwrap_or_default();
    (status == StatusCode::NOT_FOUND && value["error"]["message"] == "no such endpoint")
        || (status == StatusCode::METHOD_NOT_ALLOWED && value["error"]["code"] == "method_not_allowed")
}

/// Sends a keyless request: each endpoint that exists answers before touching anything (401, or the
/// public ones), while a route that does not exist gets the router's fallbacks.
async fn probe(h: &Harness, method: &str, path: &str) -> (StatusCode, bool) {
    let uri: String = path
        .split('/')
        .map(|seg| if seg.starts_with('{') { "abcd1234" } else { seg })
        .collect::<Vec<_>>()
        .join("/");
    let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
    let req = Request::builder().method(method).uri(uri).body(Body::empty()).expect("request");
    let res = h.router.clone().oneshot(req).await.expect("response");
    let status = res.status();
    let bytes = res.into_body().collect().await.expect("body").to_bytes();
    (status, is_fallback(status, &bytes))
}

#[tokio::test]
async fn the_document_and_the_router_have_the_same_routes() {
    let h = Harness::new().await;
    let (_, doc) = document(&h).await;
    let ops = operations(&doc);

    // Each documented (method, path) is served, and on each documented path every other method gets the
    // router's 405: the methods served there are exactly the documented ones.
    for (method, path, _) in &ops {
        let (status, fallback) = probe(&h, method, path).await;
        assert!(!fallback, "{} {path} is documented but not served ({status})", method.to_uppercase());
    }
    let paths: BTreeSet<&String> = ops.iter().map(|(_, p, _)| p).collect();
    for path in paths {
        for method in METHODS {
            if ops.iter().any(|(m, p, _)| m == method && p == path) {
                continue;
            }
            let (status, fallback) = probe(&h, method, path).await;
            assert!(
                fallback && status == StatusCode::METHOD_NOT_ALLOWED,
                "{} {path} is served ({status}) but not documented",
                method.to_uppercase()
            );
        }
    }

    // And no path is served but undocumented: the router registers routes only through `routes!`, which
    // takes each handler's `#[utoipa::path]`, one operation per handler.
    let source = include_str!("../src/api/mod.rs");
    let body = source
        .split("pub fn routes()")
        .nth(1)
        .expect("routes()")
        .split("\npub fn router(")
        .next()
        .expect("end");
    let handlers: usize = body
        .split("routes!(")
        .skip(1)
        .map(|call| {
            call.split(')').next().expect("close").split(',').filter(|h| !h.trim().is_empty()).count()
        })
        .sum();
    assert_eq!(handlers, ops.len(), "one documented operation per registered handler");
    let rest = source.replace(".routes(routes!(", "");
    for call in [".route(", ".route_service(", ".nest(", ".nest_service(", ".merge("] {
        assert!(
            !rest.contains(call),
            "src/api/mod.rs adds a route with {call}: register it with routes! instead"
        );
    }

    // The spec's resources are all there.
    for (method, path) in [
        ("post", "/v1/tenants"),
        ("get", "/v1/tenant"),
        ("put", "/v1/tenant/branding"),
        ("put", "/v1/tenant/frame-ancestors"),
        ("put", "/v1/tenant/rate-limits"),
        ("post", "/v1/tenant/preview-domain"),
        ("post", "/v1/tenant/preview-domain/verify"),
        ("patch", "/v1/sandboxes/{id}"),
        ("post", "/v1/sandboxes/{id}/previews"),
        ("post", "/v1/preview-tokens"),
        ("delete", "/v1/shares/{id}"),
        ("post", "/v1/deployments/{id}/promote"),
        ("put", "/v1/releases/{sha256}"),
        ("get", "/v1/usage"),
        ("put", "/v1/certificates/{hostname}"),
        ("get", "/v1/edge/feed"),
        ("get", "/v1/openapi.json"),
    ] {
        assert!(ops.iter().any(|(m, p, _)| m == method && p == path), "{method} {path} is missing");
    }
}
