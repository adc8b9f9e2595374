#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::state::Snapshot;

/// A stand-in for control's wake endpoint: counts calls, waits `delay`, answers `status` + `body`.
struct FakeControl {
    url: String,
    calls: Arc<AtomicUsize>,
}

async fn fake_control(delay: Duration, status: u16, body: &'static str) -> FakeControl {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                let resp = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                     connection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    FakeControl { url, calls }
}

fn waker(control: &FakeControl, timeout: Duration) -> Arc<Waker> {
    let state = Arc::new(EdgeState::new(Snapshot::empty()));
    Arc::new(Waker::new(control_client(&control.url), timeout, state))
}

fn sandbox(state: SandboxState, wake_policy: WakePolicy) -> wire::Sandbox {
    wire::Sandbox {
        id: "abcd1234".into(),
        tenant_id: "tn_1".into(),
        address: "127.0.0.2".into(),
        state,
        default_visibility: wire::Visibility::Public,
        wake_policy,
        preview_auth_sha256: None,
        allow_preflight: false,
    }
}

#[tokio::test]
async fn concurrent_requests_for_one_sandbox_share_one_control_call_and_its_address() {
    let control =
        fake_control(Duration::from_millis(300), 200, r#"{"address":"10.1.2.3","state":"running"}"#).await;
    let waker = waker(&control, Duration::from_secs(10));
    let sb = Arc::new(sandbox(SandboxState::Hibernated, WakePolicy::OnRequest));
    let waiting: Vec<_> = (0..100)
        .map(|_| {
            let (waker, sb) = (waker.clone(), sb.clone());
            tokio::spawn(async move { ensure_awake(&waker, &sb).await })
        })
        .collect();
    for w in waiting {
        assert_eq!(w.await.expect("task").expect("woken").as_deref(), Some("10.1.2.3"));
    }
    assert_eq!(control.calls.load(Ordering::SeqCst), 1);
    // A request right after is answered from the finished flight while the feed catches up.
    assert_eq!(ensure_awake(&waker, &sb).await.expect("woken").as_deref(), Some("10.1.2.3"));
    assert_eq!(control.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn running_sandboxes_and_wake_policy_off_never_call_control() {
    let control = fake_control(Duration::ZERO, 200, r#"{"address":"10.1.2.3"}"#).await;
    let waker = waker(&control, Duration::from_secs(10));
    let running = sandbox(SandboxState::Running, WakePolicy::OnRequest);
    assert_eq!(ensure_awake(&waker, &running).await, Ok(None));
    let off = sandbox(SandboxState::Hibernated, WakePolicy::Off);
    assert_eq!(ensure_awake(&waker, &off).await, Err(EdgeError::SandboxHibernated));
    assert_eq!(control.calls.load(Ordering::SeqCst), 0);
    assert_eq!(waker.in_flight(), 0);
}

#[tokio::test]
async fn a_wake_slower_than_the_timeout_answers_wake_timeout() {
    let control = fake_control(Duration::from_secs(30), 200, r#"{"address":"10.1.2.3"}"#).await;
    let waker = waker(&control, Duration::from_millis(300));
    let sb = sandbox(SandboxState::Waking, WakePolicy::OnRequest);
    assert_eq!(ensure_awake(&waker, &sb).await, Err(EdgeError::WakeTimeout));
}

#[tokio::test]
async fn a_failed_wake_is_shared_and_not_retried_during_the_cooldown() {
    let body = r#"{"error":{"code":"wake_failed","message":"the orchestrator answered 500"}}"#;
    let control = fake_control(Duration::from_millis(100), 502, body).await;
    let waker = waker(&control, Duration::from_secs(10));
    let sb = Arc::new(sandbox(SandboxState::Hibernated, WakePolicy::OnRequest));
    let waiting: Vec<_> = (0..10)
        .map(|_| {
            let (waker, sb) = (waker.clone(), sb.clone());
            tokio::spawn(async move { ensure_awake(&waker, &sb).await })
        })
        .collect();
    for w in waiting {
        assert_eq!(w.await.expect("task"), Err(EdgeError::WakeFailed));
    }
    assert_eq!(ensure_awake(&waker, &sb).await, Err(EdgeError::WakeFailed));
    assert_eq!(control.calls.load(Ordering::SeqCst), 1, "one call for the burst and the cooldown");
    // After the cooldown the next request tries again.
    tokio::time::sleep(FAILURE_COOLDOWN + Duration::from_millis(500)).await;
    assert_eq!(ensure_awake(&waker, &sb).await, Err(EdgeError::WakeFailed));
    assert_eq!(control.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_woken_answer_is_reused_only_until_control_says_something_newer_about_the_sandbox() {
    let control = fake_control(Duration::ZERO, 200, r#"{"address":"10.1.2.3"}"#).await;
    let state = Arc::new(EdgeState::new(Snapshot::empty()));
    let waker = Arc::new(Waker::new(control_client(&control.url), Duration::from_secs(10), state.clone()));
    let hibernated = sandbox(SandboxState::Hibernated, WakePolicy::OnRequest);
    let upsert = |version, sb: &wire::Sandbox| {
        let changes = vec![wire::Change::UpsertSandbox { sandbox: sb.clone() }];
        state.store(state.load().apply(version, changes).expect("apply"));
    };
    upsert(1, &hibernated);
    assert_eq!(ensure_awake(&waker, &hibernated).await.expect("woken").as_deref(), Some("10.1.2.3"));
    assert_eq!(ensure_awake(&waker, &hibernated).await.expect("woken").as_deref(), Some("10.1.2.3"));
    assert_eq!(control.calls.load(Ordering::SeqCst), 1, "the answer serves while the feed catches up");
    // Hibernated again through the API: the old answer must not route the next request.
    upsert(2, &hibernated);
    ensure_awake(&waker, &hibernated).await.expect("woken");
    assert_eq!(control.calls.load(Ordering::SeqCst), 2);
}

#[test]
fn control_answers_map_to_the_spec_codes() {
    assert_eq!(outcome_error(504, "wake_timeout"), EdgeError::WakeTimeout);
    assert_eq!(outcome_error(502, "wake_failed"), EdgeError::WakeFailed);
    assert_eq!(outcome_error(409, "wake_disabled"), EdgeError::SandboxHibernated);
    assert_eq!(outcome_error(409, "wake_not_configured"), EdgeError::WakeFailed);
    assert_eq!(outcome_error(404, "not_found"), EdgeError::NotFound);
    assert_eq!(outcome_error(500, ""), EdgeError::WakeFailed);
}

fn control_client(url: &str) -> Arc<crate::control::Control> {
    Arc::new(crate::control::Control::new(vec![url.to_string()], "token".into()).expect("client"))
}
