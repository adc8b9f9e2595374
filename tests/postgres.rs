//! Scale-out on PostgreSQL (SPEC §1 `--database`, §6): two control replicas sharing one database and three
//! edges, each given both replicas' URLs, all real processes on loopback. A change through either replica is
//! in force at every edge within 1 s; edges fail over when their replica dies; concurrent writes through both
//! replicas lose nothing; a wake asked through three edges and two replicas is one orchestrator call.
//!
//! Needs `PORTICO_TEST_POSTGRES_URL`, a role that may create databases (`bash .ci/run` starts a cluster and
//! sets it; by hand: `source .ci/postgres.sh`). Each test creates its own database and drops it at the end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::Json;
use common::sandbox::FakeSandbox;
use common::{free_port, log_to, portico, sandbox_ip, until_status, wait_until, Api, Control, Edge, Proc};
use futures_util::future::join_all;
use serde_json::{json, Value};
use sqlx::{Connection, Executor, PgConnection};

/// Every replica signs wake calls with this (`PORTICO_WAKE_SECRET`): the orchestrator knows one secret.
const WAKE_SECRET: &str = "wake_test_secret_0123456789abcdef";
/// SPEC §6.
const IN_FORCE: Duration = Duration::from_secs(1);

/// A database of this test's own on the cluster `PORTICO_TEST_POSTGRES_URL` names; dropped at the end.
struct Database {
    maintenance: String,
    name: String,
    url: String,
}

impl Database {
    async fn create() -> Database {
        let maintenance = std::env::var("PORTICO_TEST_POSTGRES_URL").unwrap_or_else(|_| {
            panic!(
                "PORTICO_TEST_POSTGRES_URL is not set. These tests need PostgreSQL: a URL of a role that may \
                 create databases, e.g. postgres://user:password@127.0.0.1:5432/postgres \
                 (`source .ci/postgres.sh` as root starts Debian's cluster and sets it)"
            )
        });
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("portico_test_{}_{n}_{nanos}", std::process::id());
        let mut conn = PgConnection::connect(&maintenance)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to PORTICO_TEST_POSTGRES_URL: {e}"));
        conn.execute(&*format!("CREATE DATABASE {name}")).await.expect("CREATE DATABASE");
        // The same server and credentials, another database.
        let (base, query) = match maintenance.split_once('?') {
            Some((base, query)) => (base, format!("?{query}")),
            None => (maintenance.as_str(), String::new()),
        };
        let server = base.rsplit_once('/').map(|(server, _)| server).expect("URL with a database");
        let url = format!("{server}/{name}{query}");
        Database { maintenance, name, url }
    }

    async fn connect(&self) -> PgConnection {
        PgConnection::connect(&self.url).await.expect("connect to the test database")
    }

    /// The feed version committed in the database.
    async fn version(&self) -> u64 {
        let mut conn = self.connect().await;
        let v: i64 = sqlx::query_scalar("SELECT version FROM feed_state WHERE id = 1")
            .fetch_one(&mut conn)
            .await
            .expect("feed version");
        v as u64
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let (maintenance, name) = (self.maintenance.clone(), self.name.clone());
        // Drop runs inside the test's runtime: a thread of its own may block on another.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async {
                let Ok(mut conn) = PgConnection::connect(&maintenance).await else { return };
                // The processes are gone, but their sessions may take a moment to end; FORCE may not
                // terminate sessions of other roles (autovacuum), so plain DROP is retried as well.
                if conn.execute(&*format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await.is_ok() {
                    return;
                }
                for _ in 0..50 {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if conn.execute(&*format!("DROP DATABASE IF EXISTS {name}")).await.is_ok() {
                        return;
                    }
                }
                eprintln!("could not drop the test database {name}");
            })
        })
        .join();
    }
}

/// A control replica on the shared database; its log goes to `<data_dir>.log`.
async fn replica(db: &Database, data_dir: &Path, extra: &[&str]) -> Control {
    let port = free_port();
    let mut cmd = portico();
    log_to(&mut cmd, &data_dir.with_extension("log"));
    let child = cmd
        .args(["control", "--listen", &format!("127.0.0.1:{port}"), "--database", &db.url])
        // Test sandboxes live on 127.0.0.x, outside control's default upstream policy.
        .args(["--upstream-allow", "127.0.0.0/8", "--upstream-allow", "10.0.0.0/8"])
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .env("PORTICO_WAKE_SECRET", WAKE_SECRET)
        .spawn()
        .expect("spawn control");
    let url = format!("http://127.0.0.1:{port}");
    let control =
        Control { proc: Proc { child, name: "control" }, url: url.clone(), port, data_dir: data_dir.into() };
    let http = reqwest::Client::new();
    wait_until("control replica to answer", Duration::from_secs(30), || {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let resp = http.get(format!("{url}/v1/tenants")).bearer_auth(common::ADMIN_KEY).send().await;
            resp.is_ok_and(|r| r.status().is_success())
        }
    })
    .await;
    control
}

/// Two control replicas and three edges. Edges 0 and 2 follow replica A first, edge 1 replica B; each has
/// the other replica as its second `--control-url`.
struct Cluster {
    // Fields drop in order: the processes go before their database.
    edges: Vec<Edge>,
    replicas: Vec<Control>,
    db: Database,
    tenant_key: String,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn start(replica_args: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Database::create().await;
        // Both at once on an empty database: the migrations must not trip over each other.
        let (dir_a, dir_b) = (dir.path().join("control-a"), dir.path().join("control-b"));
        let (a, b) = tokio::join!(replica(&db, &dir_a, replica_args), replica(&db, &dir_b, replica_args));
        let replicas = vec![a, b];
        let edges = join_all((0..3).map(|i| {
            let (first, second) = (&replicas[i % 2].url, &replicas[(i + 1) % 2].url);
            let state_dir = dir.path().join(format!("edge-{i}"));
            async move { Edge::start_with(first, &state_dir, &["--control-url", second]).await }
        }))
        .await;
        let tenant = Api::admin(&replicas[0].url).tenant("acme").await;
        // Tests poll the edges hard; the default limits would answer 429.
        let limit = json!({"rps": 100000, "burst": 100000});
        let limits = json!({"public_per_ip": limit, "private_per_token": limit,
                            "auth_failures_per_ip": {"per_minute": 100000}});
        tenant.ok("PUT", "/v1/tenant/rate-limits", Some(limits), 200).await;
        let tenant_key = tenant.key.clone();
        let cluster = Cluster { edges, replicas, db, tenant_key, _dir: dir };
        cluster.synced().await;
        cluster
    }

    /// The tenant's API through replica `i`.
    fn tenant(&self, i: usize) -> Api {
        Api::admin(&self.replicas[i].url).with_key(&self.tenant_key)
    }

    /// Waits until every edge has applied what the database holds at this moment.
    async fn synced(&self) {
        let want = self.db.version().await;
        for edge in &self.edges {
            wait_until("edge to reach the database's version", Duration::from_secs(10), || async move {
                edge.config_version().await >= want
            })
            .await;
        }
    }
}

fn port_host(port: u16, id: &str) -> String {
    format!("{port}-{id}.sandbox.localhost")
}

/// How long after `since` the edge first answered `host` with `want` (polled every 5 ms, at most 10 s).
async fn in_force_at(edge: &Edge, host: &str, want: u16, since: Instant) -> Duration {
    let client = edge.client();
    let url = edge.url(host, "/");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if client.get(&url).send().await.is_ok_and(|r| r.status().as_u16() == want) {
            return since.elapsed();
        }
        assert!(Instant::now() < deadline, "{host} never answered {want} at edge {}", edge.addr);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_through_either_replica_is_in_force_at_all_three_edges_within_a_second() {
    let cluster = Cluster::start(&[]).await;
    let app = FakeSandbox::start(sandbox_ip(), 0).await;
    let sb = cluster
        .tenant(0)
        .sandbox(json!({"address": app.addr.ip().to_string(), "default_visibility": "public"}))
        .await;
    let host = port_host(app.port(), sb["id"].as_str().unwrap());
    let path = format!("/v1/sandboxes/{}", sb["id"].as_str().unwrap());
    for edge in &cluster.edges {
        until_status(&edge.client(), &edge.url(&host, "/"), 200, Duration::from_secs(5)).await;
    }

    // 20 changes, alternately private and public, two in a row through each replica: every edge sees
    // changes made through the replica it does not follow as well as through the one it does.
    let mut after_answer = Vec::new();
    let mut after_call = Vec::new();
    // Edges 0 and 2 follow replica 0, edge 1 replica 1: a change through the other one crossed replicas.
    let mut crossed = Vec::new();
    for i in 0..20 {
        let via = (i / 2) % 2;
        let (visibility, want) = if i % 2 == 0 { ("private", 401) } else { ("public", 200) };
        let called = Instant::now();
        cluster.tenant(via).ok("PATCH", &path, Some(json!({"default_visibility": visibility})), 200).await;
        let answered = Instant::now();
        let times = join_all(cluster.edges.iter().map(|e| in_force_at(e, &host, want, answered))).await;
        for (edge, took) in times.into_iter().enumerate() {
            assert!(
                took <= IN_FORCE,
                "change {i} through replica {via} took {took:?} to be in force at edge {edge}"
            );
            after_answer.push(took);
            if edge % 2 != via {
                crossed.push(took);
            }
            after_call.push(took + (answered - called));
        }
    }
    for samples in [&mut after_answer, &mut after_call, &mut crossed] {
        samples.sort();
    }
    let summary = |s: &[Duration]| format!("p50 {:?} max {:?}", percentile(s, 0.5), s[s.len() - 1]);
    println!(
        "PROPAGATION, 20 changes x 3 edges ({} samples), in force at the edge after the API answered: {}; \
         of which through the replica the edge does not follow ({}): {}; counted from the API call: {}",
        after_answer.len(),
        summary(&after_answer),
        crossed.len(),
        summary(&crossed),
        summary(&after_call),
    );
}

#[tokio::test]
async fn edges_fail_over_when_their_replica_dies_keep_serving_and_follow_later_changes() {
    let mut cluster = Cluster::start(&[]).await;
    let app = FakeSandbox::start(sandbox_ip(), 0).await;
    let tenant_b = cluster.tenant(1);
    let sb =
        tenant_b.sandbox(json!({"address": app.addr.ip().to_string(), "default_visibility": "public"})).await;
    let id = sb["id"].as_str().unwrap().to_string();
    let host = port_host(app.port(), &id);
    cluster.synced().await;

    // Replica A dies without a word (SIGKILL): edges 0 and 2 lose the control they were following.
    cluster.replicas[0].proc.kill();
    for edge in &cluster.edges {
        let resp = edge.client().get(edge.url(&host, "/")).send().await.expect("request");
        assert_eq!(resp.status(), 200, "edge {} serves from its snapshot", edge.addr);
    }

    // Several changes through B while the orphaned edges may still be moving over: each edge asks B for
    // what came after the version it has, so it must end with every one of them (no gap).
    let mut slugs = Vec::new();
    for port in 3001..3006 {
        let preview = tenant_b
            .ok("POST", &format!("/v1/sandboxes/{id}/previews"), Some(json!({"port": port})), 201)
            .await;
        slugs.push(preview["slug"].as_str().unwrap().to_string());
    }
    for edge in &cluster.edges {
        for slug in &slugs {
            // Routed: nothing listens on those ports, so 502 rather than 404.
            let url = edge.url(&format!("{slug}.preview.localhost"), "/");
            until_status(&edge.client(), &url, 502, Duration::from_secs(5)).await;
        }
    }
    cluster.synced().await;
    let version = cluster.db.version().await;
    for edge in &cluster.edges {
        assert_eq!(edge.config_version().await, version, "edge {} is at the database's version", edge.addr);
    }

    // From now on the failed-over edges follow B like any edge: a change is in force within 1 s.
    tenant_b
        .ok("PATCH", &format!("/v1/sandboxes/{id}"), Some(json!({"default_visibility": "private"})), 200)
        .await;
    let answered = Instant::now();
    let times = join_all(cluster.edges.iter().map(|e| in_force_at(e, &host, 401, answered))).await;
    for (edge, took) in times.into_iter().enumerate() {
        assert!(took <= IN_FORCE, "edge {edge} took {took:?} after failing over");
    }
}

/// The sessions of the replicas' change listeners (their last statement is the LISTEN).
async fn listeners(conn: &mut PgConnection) -> Vec<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN%' ORDER BY pid",
    )
    .fetch_all(conn)
    .await
    .expect("pg_stat_activity")
}

#[tokio::test]
async fn replicas_listen_again_after_their_listening_connection_is_cut_and_changes_still_arrive() {
    let cluster = Cluster::start(&[]).await;
    let app = FakeSandbox::start(sandbox_ip(), 0).await;
    let tenant_a = cluster.tenant(0);
    let sb =
        tenant_a.sandbox(json!({"address": app.addr.ip().to_string(), "default_visibility": "public"})).await;
    let path = format!("/v1/sandboxes/{}", sb["id"].as_str().unwrap());
    let host = port_host(app.port(), sb["id"].as_str().unwrap());
    cluster.synced().await;

    let mut conn = cluster.db.connect().await;
    let before = listeners(&mut conn).await;
    assert_eq!(before.len(), 2, "one listening session per replica");
    for pid in &before {
        sqlx::query("SELECT pg_terminate_backend($1)").bind(pid).execute(&mut conn).await.expect("terminate");
    }
    let (db, before) = (&cluster.db, &before);
    wait_until("both replicas to listen again", Duration::from_secs(10), || async move {
        let now = listeners(&mut db.connect().await).await;
        now.len() == 2 && now.iter().all(|pid| !before.contains(pid))
    })
    .await;

    // Edge 1 follows replica B: it learns of A's commits through B's new listening session.
    for (visibility, want) in [("private", 401), ("public", 200)] {
        tenant_a.ok("PATCH", &path, Some(json!({"default_visibility": visibility})), 200).await;
        let answered = Instant::now();
        let times = join_all(cluster.edges.iter().map(|e| in_force_at(e, &host, want, answered))).await;
        for (edge, took) in times.into_iter().enumerate() {
            assert!(took <= IN_FORCE, "edge {edge} took {took:?} after the listeners reconnected");
        }
    }
}

/// Records every UPDATE of a sandbox row, before and after, in commit order (writers are serialised on the
/// feed_state row lock, so the order of updates is the order of commits).
const AUDIT: &str = "
CREATE TABLE sandbox_audit (
    seq BIGSERIAL PRIMARY KEY,
    old_address TEXT, new_address TEXT,
    old_user TEXT, new_user TEXT,
    old_project TEXT, new_project TEXT,
    old_metadata TEXT, new_metadata TEXT
);
CREATE FUNCTION sandbox_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO sandbox_audit (old_address, new_address, old_user, new_user, old_project, new_project,
                               old_metadata, new_metadata)
    VALUES (OLD.address, NEW.address, OLD.external_user_id, NEW.external_user_id,
            OLD.external_project_id, NEW.external_project_id, OLD.metadata, NEW.metadata);
    RETURN NEW;
END $$;
CREATE TRIGGER sandbox_audit AFTER UPDATE ON sandboxes FOR EACH ROW EXECUTE FUNCTION sandbox_audit();
";

/// An UPDATE's sequence number, then [address, external_user_id, external_project_id, metadata] before it
/// and after it.
type Audited = (i64, Vec<Option<String>>, Vec<Option<String>>);

/// Update `i` sets one field (by `i % 4`) to a value no other update uses.
fn update(i: usize) -> (usize, Value, String) {
    match i % 4 {
        0 => {
            let address = format!("10.0.{}.{}", i / 200, i % 200 + 1);
            (0, json!({"address": address}), address)
        }
        1 => (1, json!({"external_user_id": format!("user{i}")}), format!("user{i}")),
        2 => (2, json!({"external_project_id": format!("project{i}")}), format!("project{i}")),
        _ => (3, json!({"metadata": {"update": i}}), json!({"update": i}).to_string()),
    }
}

#[tokio::test]
async fn a_hundred_concurrent_updates_through_both_replicas_lose_none_and_end_in_one_state() {
    let cluster = Cluster::start(&[]).await;
    let mut conn = cluster.db.connect().await;
    conn.execute(AUDIT).await.expect("audit trigger");
    let sb = cluster.tenant(0).sandbox(json!({"address": "10.9.9.9"})).await;
    let path = format!("/v1/sandboxes/{}", sb["id"].as_str().unwrap());

    let apis = [cluster.tenant(0), cluster.tenant(1)];
    let answers = join_all((0..100).map(|i| apis[i % 2].call("PATCH", &path, Some(update(i).1)))).await;
    for (i, (status, body)) in answers.iter().enumerate() {
        assert_eq!(*status, 200, "update {i}: {body}");
    }

    // Each committed update changed exactly the field it was asked to, starting from the state the update
    // before it left: had one been computed from a stale read, it would also have put back an old value of
    // another field, and show two changed fields here.
    let rows: Vec<Audited> = sqlx::query_as(
        "SELECT seq, ARRAY[old_address, old_user, old_project, old_metadata], \
                ARRAY[new_address, new_user, new_project, new_metadata] FROM sandbox_audit ORDER BY seq",
    )
    .fetch_all(&mut conn)
    .await
    .expect("audit rows");
    assert_eq!(rows.len(), 100, "one UPDATE per PATCH");
    let mut applied = std::collections::HashSet::new();
    let mut last = [None, None, None, None];
    for (seq, old, new) in &rows {
        let changed: Vec<usize> = (0..4).filter(|f| old[*f] != new[*f]).collect();
        assert_eq!(changed.len(), 1, "update #{seq} changed {changed:?}: {old:?} → {new:?}");
        let field = changed[0];
        let value = new[field].clone().unwrap();
        let i = (0..100)
            .find(|i| {
                let (f, _, v) = update(*i);
                f == field && (v == value || (f == 3 && json_eq(&v, &value)))
            })
            .unwrap_or_else(|| panic!("update #{seq} wrote {value:?}, which no PATCH sent"));
        assert!(applied.insert(i), "PATCH {i} applied twice");
        last[field] = Some(value);
    }
    assert_eq!(applied.len(), 100);

    // Both replicas show the last committed value of every field.
    for api in &apis {
        let now = api.ok("GET", &path, None, 200).await;
        assert_eq!(now["address"].as_str(), last[0].as_deref());
        assert_eq!(now["external_user_id"].as_str(), last[1].as_deref());
        assert_eq!(now["external_project_id"].as_str(), last[2].as_deref());
        let metadata: Value = serde_json::from_str(last[3].as_deref().unwrap()).unwrap();
        assert_eq!(now["metadata"], metadata);
    }
    // And every edge reaches the same, final version.
    cluster.synced().await;
}

fn json_eq(a: &str, b: &str) -> bool {
    serde_json::from_str::<Value>(a).ok() == serde_json::from_str::<Value>(b).ok()
}

/// An orchestrator stand-in: counts calls signed with [`WAKE_SECRET`], takes its time, then starts the
/// sandbox on a new address.
struct Orchestrator {
    url: String,
    calls: Arc<AtomicUsize>,
    started: Arc<std::sync::Mutex<Vec<FakeSandbox>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Orchestrator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
struct Orch {
    calls: Arc<AtomicUsize>,
    started: Arc<std::sync::Mutex<Vec<FakeSandbox>>>,
    port: u16,
    delay: Duration,
}

fn signed_by_wake_secret(header: &str, body: &[u8]) -> bool {
    let parts: std::collections::HashMap<&str, &str> =
        header.split(',').filter_map(|p| p.split_once('=')).collect();
    let (Some(t), Some(v1)) = (parts.get("t"), parts.get("v1")) else { return false };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, WAKE_SECRET.as_bytes());
    let mut message = format!("{t}.").into_bytes();
    message.extend_from_slice(body);
    let mac: String = ring::hmac::sign(&key, &message).as_ref().iter().map(|b| format!("{b:02x}")).collect();
    mac == *v1
}

async fn orchestrate(
    State(orch): State<Orch>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let signature = headers.get("x-portico-signature").and_then(|v| v.to_str().ok()).unwrap_or("");
    if !signed_by_wake_secret(signature, &body) {
        return axum::http::StatusCode::UNAUTHORIZED.into_response();
    }
    orch.calls.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(orch.delay).await;
    let sandbox = FakeSandbox::start(sandbox_ip(), orch.port).await;
    let address = sandbox.addr.ip().to_string();
    orch.started.lock().unwrap().push(sandbox);
    Json(json!({ "address": address })).into_response()
}

impl Orchestrator {
    async fn start(port: u16, delay: Duration) -> Orchestrator {
        let calls = Arc::new(AtomicUsize::new(0));
        let started = Arc::new(std::sync::Mutex::new(Vec::new()));
        let orch = Orch { calls: calls.clone(), started: started.clone(), port, delay };
        let app = axum::Router::new().route("/wake", axum::routing::post(orchestrate)).with_state(orch);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind orchestrator");
        let url = format!("http://{}/wake", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Orchestrator { url, calls, started, task }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_requests_through_three_edges_wake_a_hibernated_sandbox_with_one_orchestrator_call() {
    let port = free_port();
    // Slow enough that every request arrives while the wake is in progress.
    let orch = Orchestrator::start(port, Duration::from_secs(2)).await;
    let cluster = Cluster::start(&["--wake-url", &orch.url]).await;
    let hibernated =
        json!({"address": sandbox_ip().to_string(), "state": "hibernated", "default_visibility": "public"});
    let sb = cluster.tenant(0).sandbox(hibernated).await;
    let id = sb["id"].as_str().unwrap().to_string();
    cluster.synced().await;

    // Edges 0 and 2 ask replica A, edge 1 asks replica B: the replicas coalesce through the database.
    let host = port_host(port, &id);
    let requests = (0..50).map(|i| {
        let edge = &cluster.edges[i % 3];
        let request = edge.client().get(edge.url(&host, "/woken"));
        async move {
            let resp = request.send().await.expect("request");
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    });
    for (status, body) in join_all(requests).await {
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["uri"], "/woken", "answered by the woken sandbox");
    }
    assert_eq!(
        orch.calls.load(Ordering::SeqCst),
        1,
        "one orchestrator call across three edges and two replicas"
    );
    let woken_at = orch.started.lock().unwrap()[0].addr.ip().to_string();
    for i in 0..2 {
        let now = cluster.tenant(i).ok("GET", &format!("/v1/sandboxes/{id}"), None, 200).await;
        assert_eq!(now["state"], "running");
        assert_eq!(now["address"], woken_at.as_str());
    }
    // Every edge woke it through control. (Not "exactly once" here: a request that read the snapshot just
    // before the feed brought `running` may start a second flight, which control answers without a call;
    // tests/wake.rs holds the per-edge single flight to exactly one.)
    for edge in &cluster.edges {
        let woken = edge.metric("portico_wakes_total{outcome=\"woken\"}").await.unwrap_or(0.0);
        assert!(woken >= 1.0, "edge {} woke the sandbox through control", edge.addr);
    }
}

/// A `.tar.gz` holding `index.html` with `html` in it.
fn release_archive(html: &str) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut b = tar::Builder::new(gz);
    let mut h = tar::Header::new_ustar();
    h.set_size(html.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "index.html", html.as_bytes()).unwrap();
    b.into_inner().unwrap().finish().unwrap()
}

/// `PUT /v1/releases/{sha}` through the replica at `url`; its status.
async fn put_release(url: &str, key: &str, sha: &str, bytes: &[u8]) -> u16 {
    let resp = reqwest::Client::new()
        .put(format!("{url}/v1/releases/{sha}"))
        .bearer_auth(key)
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    resp.status().as_u16()
}

#[tokio::test]
async fn a_release_uploaded_through_one_replica_is_served_after_that_replica_dies() {
    let mut cluster = Cluster::start(&[]).await;
    let bytes = release_archive("<h1>from the database</h1>");
    let sha: String = ring::digest::digest(&ring::digest::SHA256, &bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        put_release(&cluster.replicas[0].url, &cluster.tenant_key, &sha, &bytes).await,
        201,
        "uploaded through replica A"
    );
    assert!(!cluster.replicas[0].data_dir.join("releases").exists(), "nothing on A's disk");

    // A dies before any edge has fetched the release (no version names it yet).
    cluster.replicas[0].proc.kill();
    let fetched = reqwest::Client::new()
        .get(format!("{}/v1/edge/releases/{sha}", cluster.replicas[1].url))
        .bearer_auth(common::EDGE_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(fetched.status(), 200);
    assert_eq!(fetched.bytes().await.unwrap(), bytes, "B serves the archive A received");

    // Published through B: edge 1 follows B; edges 0 and 2 fail over to it. Each fetches the release
    // from B and serves it.
    let tenant_b = cluster.tenant(1);
    let d =
        tenant_b.ok("POST", "/v1/deployments", Some(json!({"name": "site", "workspace": "acme"})), 201).await;
    let id = d["id"].as_str().unwrap();
    let v = tenant_b
        .ok("POST", &format!("/v1/deployments/{id}/versions"), Some(json!({"release": sha})), 201)
        .await;
    tenant_b
        .ok("POST", &format!("/v1/deployments/{id}/promote"), Some(json!({"version_id": v["id"]})), 200)
        .await;
    let host = d["hostname"].as_str().unwrap();
    for edge in &cluster.edges {
        until_status(&edge.client(), &edge.url(host, "/"), 200, Duration::from_secs(10)).await;
        let text = edge.client().get(edge.url(host, "/")).send().await.unwrap().text().await.unwrap();
        assert_eq!(text, "<h1>from the database</h1>", "edge {}", edge.addr);
    }

    // Uploaded again through B: the tenant has it already (200), and the database holds it once.
    assert_eq!(put_release(&cluster.replicas[1].url, &cluster.tenant_key, &sha, &bytes).await, 200);
    let mut conn = cluster.db.connect().await;
    let rows: Vec<(String, Vec<u8>)> = sqlx::query_as(
        "SELECT d.sha256, string_agg(c.data, ''::bytea ORDER BY c.seq) FROM release_data d \
         JOIN release_chunks c ON c.sha256 = d.sha256 GROUP BY d.sha256",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(rows, [(sha.clone(), bytes.clone())], "stored once, as uploaded");
    assert!(!cluster.replicas[1].data_dir.join("releases").exists(), "nothing on B's disk");
}
