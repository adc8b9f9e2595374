//! One control service per test, on its own temp-file SQLite database, called without a socket.
#![allow(dead_code)]

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use portico_control::{Control, ControlConfig};
use serde_json::Value;
use tower::ServiceExt;

pub const ADMIN: &str = "mpa_test_admin_key";
pub const EDGE: &str = "edge-test-token";

pub struct Harness {
    pub control: Control,
    pub router: Router,
    pub dir: tempfile::TempDir,
}

pub fn config(dir: &std::path::Path) -> ControlConfig {
    ControlConfig {
        upstream_allow: portico_wire::upstream::default_allow(),
        database_url: format!("sqlite://{}/db/portico.db?mode=rwc", dir.display()),
        data_dir: dir.to_path_buf(),
        admin_key: Some(ADMIN.into()),
        edge_token: Some(EDGE.into()),
        host_templates: portico_wire::DEFAULT_HOST_TEMPLATES.iter().map(|s| s.to_string()).collect(),
        default_frame_ancestors: vec!["'self'".into()],
        public_scheme: "http".into(),
        public_port: Some(8080),
        default_embed_port: 3000,
        cname_target: "edge.example.net".into(),
        default_rate_limits: Default::default(),
        wake_url: None,
        wake_secret: None,
        wake_url_timeout: std::time::Duration::from_secs(5),
        release_limits: Default::default(),
        acme_directory: None,
        acme_ca_file: None,
        dns_resolver: None,
        quotas: Default::default(),
        acme_orders_per_hour: 20,
        // Every snapshot current, so tests read the state from it; tests/feed.rs covers a lagging one.
        feed_snapshot_lag: 0,
    }
}

impl Harness {
    pub async fn new() -> Harness {
        Self::with(|_| ()).await
    }

    /// A control whose configuration `adjust` changed from the tests' default.
    pub async fn with(adjust: impl FnOnce(&mut ControlConfig)) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = config(dir.path());
        adjust(&mut config);
        let control = Control::start(config).await.expect("control starts");
        let router = control.router();
        Harness { control, router, dir }
    }

    pub fn db_path(&self) -> std::path::PathBuf {
        self.dir.path().join("db/portico.db")
    }

    /// Sends a request; the body is raw text so tests can send broken JSON.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<&str>,
    ) -> (StatusCode, Value) {
        let (status, _, value) = self.raw_with_headers(method, path, key, body).await;
        (status, value)
    }

    /// [`Harness::raw`], with the response headers.
    pub async fn raw_with_headers(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<&str>,
    ) -> (StatusCode, axum::http::HeaderMap, Value) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(key) = key {
            req = req.header("authorization", format!("Bearer {key}"));
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(Body::from(body.unwrap_or_default().to_string())).expect("request");
        let res = self.router.clone().oneshot(req).await.expect("response");
        let (status, headers) = (res.status(), res.headers().clone());
        let bytes = res.into_body().collect().await.expect("body").to_bytes();
        let value =
            if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).expect("JSON body") };
        (status, headers, value)
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        key: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let text = body.map(|b| b.to_string());
        self.raw(method, path, Some(key), text.as_deref()).await
    }

    /// Creates a tenant and returns (id, api key).
    pub async fn tenant(&self, name: &str) -> (String, String) {
        let (status, body) =
            self.call(Method::POST, "/v1/tenants", ADMIN, Some(serde_json::json!({ "name": name }))).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        (body["id"].as_str().expect("id").into(), body["api_key"].as_str().expect("key").into())
    }

    pub async fn sandbox(&self, key: &str, body: Value) -> Value {
        let (status, body) = self.call(Method::POST, "/v1/sandboxes", key, Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }

    pub async fn feed(&self, since: u64, wait: u64) -> portico_wire::FeedMessage {
        let (status, body) = self
            .raw(Method::GET, &format!("/v1/edge/feed?since={since}&wait={wait}"), Some(EDGE), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        serde_json::from_value(body).expect("a FeedMessage")
    }
}

pub fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

pub fn error_message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or("")
}
