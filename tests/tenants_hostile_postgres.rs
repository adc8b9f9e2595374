//! SPEC §7 on PostgreSQL: the tenant columns and the quota counts (PostgreSQL sums BIGINT into NUMERIC,
//! which the quota query must cast back) through a real `portico control --database postgres://…`.
//!
//! Needs `PORTICO_TEST_POSTGRES_URL`, as tests/postgres.rs does (`source .ci/postgres.sh` as root).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{free_port, portico, wait_until, Api, Proc};
use serde_json::json;
use sqlx::{Connection, Executor, PgConnection};

/// A database of this test's own, dropped at the end (best effort).
struct Database {
    maintenance: String,
    name: String,
    url: String,
}

impl Database {
    async fn create() -> Database {
        let maintenance = std::env::var("PORTICO_TEST_POSTGRES_URL").expect(
            "PORTICO_TEST_POSTGRES_URL is not set: `source .ci/postgres.sh` (as root) starts a cluster",
        );
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos();
        let name = format!("portico_hostile_{}_{nanos}", std::process::id());
        let mut conn = PgConnection::connect(&maintenance).await.expect("connect");
        conn.execute(&*format!("CREATE DATABASE {name}")).await.expect("CREATE DATABASE");
        let (base, query) = match maintenance.split_once('?') {
            Some((base, query)) => (base, format!("?{query}")),
            None => (maintenance.as_str(), String::new()),
        };
        let server = base.rsplit_once('/').map(|(server, _)| server).expect("URL with a database");
        let url = format!("{server}/{name}{query}");
        Database { maintenance, name, url }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let (maintenance, name) = (self.maintenance.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async {
                if let Ok(mut conn) = PgConnection::connect(&maintenance).await {
                    let _ = conn.execute(&*format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
                }
            })
        })
        .join();
    }
}

fn release(size: usize) -> (Vec<u8>, String) {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let mut header = tar::Header::new_ustar();
    header.set_size(size as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "index.html", vec![b'x'; size].as_slice()).expect("append");
    let bytes = tar.into_inner().expect("tar").finish().expect("gzip");
    let sha = ring::digest::digest(&ring::digest::SHA256, &bytes);
    (bytes, sha.as_ref().iter().map(|b| format!("{b:02x}")).collect())
}

#[tokio::test]
async fn narrowing_and_quotas_on_postgresql() {
    let db = Database::create().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let child = portico()
        .args(["control", "--listen", &format!("127.0.0.1:{port}"), "--database", &db.url])
        .arg("--data-dir")
        .arg(dir.path())
        .spawn()
        .expect("spawn control");
    let _control = Proc { child, name: "control" };
    let url = format!("http://127.0.0.1:{port}");
    wait_until("control to answer", Duration::from_secs(20), || async {
        reqwest::get(format!("{url}/v1/openapi.json")).await.is_ok()
    })
    .await;
    let admin = Api::admin(&url);
    let t = admin.ok("POST", "/v1/tenants", Some(json!({"name": "acme"})), 201).await;
    let id = t["id"].as_str().unwrap();
    let tenant = admin.with_key(t["api_key"].as_str().unwrap());
    let patch = json!({"upstream_cidrs": ["10.5.0.0/16"], "quotas": {"sandboxes": 1, "release_bytes": 1500}});
    let patched = admin.ok("PATCH", &format!("/v1/tenants/{id}"), Some(patch), 200).await;
    assert_eq!(patched["upstream_cidrs"], json!(["10.5.0.0/16"]), "{patched}");
    assert_eq!(admin.ok("GET", "/v1/tenants", None, 200).await[0]["quotas"]["sandboxes"], 1);

    let (status, _) = tenant.call("POST", "/v1/sandboxes", Some(json!({"address": "10.6.0.1"}))).await;
    assert_eq!(status, 422, "outside the narrowing");
    tenant.sandbox(json!({"address": "10.5.0.1"})).await;
    let (status, body) = tenant.call("POST", "/v1/sandboxes", Some(json!({"address": "10.5.0.2"}))).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("quota_exceeded")), "{body}");

    let http = reqwest::Client::new();
    let put = |bytes: Vec<u8>, sha: String| {
        let (http, url, key) = (http.clone(), url.clone(), tenant.key.clone());
        async move {
            let resp = http
                .put(format!("{url}/v1/releases/{sha}"))
                .bearer_auth(key)
                .body(bytes)
                .send()
                .await
                .expect("upload");
            let status = resp.status().as_u16();
            (status, resp.json::<serde_json::Value>().await.unwrap_or_default())
        }
    };
    let (a, sha_a) = release(1000);
    assert_eq!(put(a, sha_a).await.0, 201);
    let (b, sha_b) = release(600);
    let (status, body) = put(b, sha_b).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("quota_exceeded")), "{body}");
}
