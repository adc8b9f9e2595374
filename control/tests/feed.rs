mod common;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use common::{Harness, EDGE};
use portico_wire::{Change, FeedMessage, SandboxState};
use serde_json::json;

fn version(msg: &FeedMessage) -> u64 {
    match msg {
        FeedMessage::Snapshot { snapshot } => snapshot.version,
        FeedMessage::Changes { version, .. } => *version,
    }
}

#[tokio::test]
async fn first_answer_is_a_snapshot_with_settings() {
    let h = Harness::new().await;
    let (tenant, key) = h.tenant("Acme").await;
    h.sandbox(&key, json!({"id": "snap1234", "address": "10.0.0.2"})).await;
    let FeedMessage::Snapshot { snapshot } = h.feed(0, 0).await else { panic!("expected a snapshot") };
    assert_eq!(snapshot.settings.host_templates.len(), 4);
    assert_eq!(snapshot.settings.default_frame_ancestors, ["'self'"]);
    assert_eq!(snapshot.tenants.len(), 1);
    assert_eq!(snapshot.tenants[0].id, tenant);
    assert!(snapshot.tenants[0].preview_domain.is_none());
    assert_eq!(snapshot.sandboxes[0].tenant_id, tenant);
    assert!(snapshot.version >= 3);
}

#[tokio::test]
async fn changes_after_a_version_carry_upserts_and_deletes() {
    let h = Harness::new().await;
    let (_, key) = h.tenant("Acme").await;
    let v0 = version(&h.feed(0, 0).await);
    h.sandbox(&key, json!({"id": "chg12345", "address": "10.0.0.2"})).await;
    let msg = h.feed(v0, 0).await;
    let FeedMessage::Changes { version: v1, changes } = msg else { panic!("expected changes") };
    assert_eq!(v1, v0 + 1);
    assert!(matches!(&changes[..], [Change::UpsertSandbox { sandbox }] if sandbox.id == "chg12345"
        && sandbox.state == SandboxState::Running));

    let (_, p) =
        h.call(Method::POST, "/v1/sandboxes/chg12345/previews", &key, Some(json!({"port": 3000}))).await;
    let (status, _) = h.call(Method::DELETE, "/v1/sandboxes/chg12345", &key, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let FeedMessage::Changes { version: v3, changes } = h.feed(v1, 0).await else {
        panic!("expected changes")
    };
    assert_eq!(v3, v1 + 2);
    let preview_id = p["id"].as_str().expect("id").to_string();
    assert_eq!(
        changes,
        vec![Change::DeletePreview { id: preview_id }, Change::DeleteSandbox { id: "chg12345".into() }]
    );

    // Up to date and nothing happens: an empty answer at the same version.
    assert_eq!(h.feed(v3, 0).await, FeedMessage::Changes { version: v3, changes: vec![] });
}

#[tokio::test]
async fn long_poll_wakes_on_a_change() {
    let h = Harness::new().await;
    let (_, key) = h.tenant("Acme").await;
    let v0 = version(&h.feed(0, 0).await);
    let router = h.router.clone();
    let key2 = key.clone();
    let started = std::time::Instant::now();
    let mutate = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let req = axum::http::Request::post("/v1/sandboxes")
            .header("authorization", format!("Bearer {key2}"))
            .body(axum::body::Body::from(json!({"id": "wake1234", "address": "10.0.0.2"}).to_string()))
            .expect("request");
        tower::ServiceExt::oneshot(router, req).await.expect("response").status()
    });
    let msg = h.feed(v0, 30).await;
    assert!(started.elapsed() < Duration::from_secs(5), "the wait should end on the change");
    assert_eq!(mutate.await.expect("join"), StatusCode::CREATED);
    let FeedMessage::Changes { changes, .. } = msg else { panic!("expected changes") };
    assert!(matches!(&changes[..], [Change::UpsertSandbox { sandbox }] if sandbox.id == "wake1234"));
}

#[tokio::test]
async fn a_lagging_snapshot_is_caught_up_by_the_changes_after_it() {
    let h = Harness::with(|c| c.feed_snapshot_lag = portico_control::DEFAULT_FEED_SNAPSHOT_LAG).await;
    let (_, key) = h.tenant("Acme").await;
    let FeedMessage::Snapshot { snapshot: first } = h.feed(0, 0).await else { panic!("snapshot") };
    h.sandbox(&key, json!({"id": "late1234", "address": "10.0.0.2"})).await;
    // The next starting edge gets the same (now lagging) snapshot, without a rebuild...
    let FeedMessage::Snapshot { snapshot } = h.feed(0, 0).await else { panic!("snapshot") };
    assert_eq!(snapshot.version, first.version);
    assert!(snapshot.sandboxes.is_empty());
    // ...and the changes after its version bring it to the database's.
    let FeedMessage::Changes { version, changes } = h.feed(snapshot.version, 0).await else {
        panic!("changes")
    };
    // (The tenant's creation may be among them too: control builds a snapshot as it starts.)
    assert!(matches!(changes.last(), Some(Change::UpsertSandbox { sandbox }) if sandbox.id == "late1234"));
    assert_eq!(h.feed(version, 0).await, FeedMessage::Changes { version, changes: vec![] });
}

#[tokio::test]
async fn since_ahead_of_the_database_gets_a_snapshot() {
    let h = Harness::new().await;
    let current = version(&h.feed(0, 0).await);
    let msg = h.feed(current + 100, 0).await;
    assert!(matches!(msg, FeedMessage::Snapshot { ref snapshot } if snapshot.version == current));
}

#[tokio::test]
async fn feed_needs_the_edge_token() {
    let h = Harness::new().await;
    let (_, key) = h.tenant("Acme").await;
    for token in [Some("wrong"), Some(common::ADMIN), Some(key.as_str()), None] {
        let (status, body) = h.raw(Method::GET, "/v1/edge/feed?since=0", token, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}");
        assert_eq!(common::error_code(&body), "unauthorized");
    }
    let (status, _) = h.raw(Method::GET, "/v1/edge/feed?since=0&wait=0", Some(EDGE), None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn settings_change_is_recorded_only_when_different() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = common::config(dir.path());
    let first = portico_control::Control::start(config.clone()).await.expect("start");
    let h = Harness { router: first.router(), control: first, dir };
    let v1 = version(&h.feed(0, 0).await);
    let again = portico_control::Control::start(config.clone()).await.expect("restart");
    let h2 = Harness { router: again.router(), control: again, dir: tempfile::tempdir().expect("tmp") };
    assert_eq!(version(&h2.feed(0, 0).await), v1, "same settings: no new version");
    let mut changed = config;
    changed.default_frame_ancestors = vec!["https://app.example.com".into()];
    let third = portico_control::Control::start(changed).await.expect("restart");
    let h3 = Harness { router: third.router(), control: third, dir: tempfile::tempdir().expect("tmp") };
    let FeedMessage::Changes { version: v2, changes } = h3.feed(v1, 0).await else { panic!("changes") };
    assert_eq!(v2, v1 + 1);
    assert!(matches!(&changes[..], [Change::Settings { settings }]
        if settings.default_frame_ancestors == ["https://app.example.com"]));
}
