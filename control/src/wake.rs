//! Waking hibernated sandboxes, control's half of SPEC §4 step 4: one orchestrator call per sandbox however
//! many edges and API callers ask at once, signed so the orchestrator can trust it, with the result pushed
//! to every edge through the feed.
//!
//! Coalescing has two layers. In this process, callers for one sandbox share one flight (a task and a
//! `watch` channel). Across control replicas sharing a database, a flight only calls the orchestrator after
//! moving the sandbox to `waking` in a feed write transaction; a replica that finds it already `waking`
//! waits for the outcome instead. A `waking` state older than the orchestrator timeout is stale (its
//! replica died mid-wake) and is taken over.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use portico_wire::SandboxState;
use ring::hmac;
use serde::Deserialize;
use tokio::sync::watch;

use crate::db::{enum_text, now_ms, Kind, Write};
use crate::error::ApiError;
use crate::state::{App, AppState};
use crate::validate;

/// The header carrying `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.
pub const SIGNATURE_HEADER: &str = "x-portico-signature";
/// How often a flight re-reads a sandbox that another control replica is waking.
const BUSY_POLL: Duration = Duration::from_millis(250);
/// Slack on top of the orchestrator timeout before another replica's `waking` counts as abandoned.
const STALE_MARGIN: Duration = Duration::from_secs(10);

/// Why a wake did not leave the sandbox running. Cloned to every caller sharing the flight.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WakeError {
    #[error("control has no --wake-url, so it cannot wake sandboxes")]
    NotConfigured,
    #[error("this sandbox's wake_policy is \"off\"")]
    PolicyOff,
    #[error("sandbox not found")]
    Gone,
    #[error("the orchestrator did not answer within {0} s; the sandbox is hibernated again")]
    Timeout(u64),
    #[error("{0}; the sandbox is hibernated again")]
    Failed(String),
    /// Details are logged; callers see a generic message.
    #[error("internal error")]
    Internal,
}

impl WakeError {
    /// The API error code and HTTP status for this outcome.
    pub fn code_and_status(&self) -> (&'static str, u16) {
        match self {
            Self::NotConfigured => ("wake_not_configured", 409),
            Self::PolicyOff => ("wake_disabled", 409),
            Self::Gone => ("not_found", 404),
            Self::Timeout(_) => ("wake_timeout", 504),
            Self::Failed(_) => ("wake_failed", 502),
            Self::Internal => ("internal", 500),
        }
    }
}

impl From<ApiError> for WakeError {
    fn from(e: ApiError) -> Self {
        tracing::error!(error = %e, "waking a sandbox");
        Self::Internal
    }
}

impl From<sqlx::Error> for WakeError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::from(e).into()
    }
}

type Outcome = Option<Result<(), WakeError>>;

/// The orchestrator's address and key, and the flights in progress in this process.
pub struct Waker {
    url: Option<String>,
    key: hmac::Key,
    timeout: Duration,
    http: reqwest::Client,
    flights: Mutex<HashMap<String, watch::Receiver<Outcome>>>,
}

impl Waker {
    /// `url`: the orchestrator (`--wake-url`), `secret`: the signing secret, `timeout`: how long one
    /// orchestrator call may take.
    pub fn new(url: Option<String>, secret: &str, timeout: Duration) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder().connect_timeout(Duration::from_secs(5)).build()?;
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
        Ok(Self { url, key, timeout, http, flights: Mutex::new(HashMap::new()) })
    }

    fn flights(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Receiver<Outcome>>> {
        // The map holds no invariant a panicking holder could break halfway.
        self.flights.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
    pub fn signature(&self, unix_secs: u64, body: &[u8]) -> String {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(format!("{unix_secs}.").as_bytes());
        ctx.update(body);
        format!("t={unix_secs},v1={}", hex::encode(ctx.sign().as_ref()))
    }
}

/// Wakes sandbox `id` (the caller checked it exists and may be woken by them) and returns once it is
/// running, or why not. Concurrent callers share one flight; the flight runs in its own task, so a caller
/// that goes away does not cancel a wake others wait on.
pub async fn wake(app: &App, id: &str) -> Result<(), WakeError> {
    if app.waker.url.is_none() {
        return Err(WakeError::NotConfigured);
    }
    let mut rx = {
        let mut flights = app.waker.flights();
        match flights.get(id) {
            Some(rx) => rx.clone(),
            None => {
                let (tx, rx) = watch::channel(None);
                flights.insert(id.to_string(), rx.clone());
                tokio::spawn(fly(app.clone(), id.to_string(), tx));
                rx
            }
        }
    };
    let outcome = rx.wait_for(Option::is_some).await.map(|o| o.clone());
    match outcome {
        Ok(Some(result)) => result,
        // The flight task ended without an answer: it panicked.
        Ok(None) | Err(_) => Err(WakeError::Internal),
    }
}

async fn fly(app: App, id: String, tx: watch::Sender<Outcome>) {
    let result = run(&app, &id).await;
    // Removed before answering: a caller arriving later starts a new flight, which finds the sandbox
    // running (or retries a failed wake) rather than reading a stale answer.
    app.waker.flights().remove(&id);
    tx.send_replace(Some(result));
}

enum Claim {
    Claimed,
    Running,
    /// Another control replica is waking it.
    Busy,
}

async fn run(app: &AppState, id: &str) -> Result<(), WakeError> {
    loop {
        match claim(app, id).await? {
            Claim::Running => return Ok(()),
            Claim::Claimed => break,
            Claim::Busy => tokio::time::sleep(BUSY_POLL).await,
        }
    }
    let started = Instant::now();
    let result = match call_orchestrator(&app.waker, id).await {
        Ok(address) => inside_policy(app, id, address).await,
        Err(e) => Err(e),
    };
    let result = finish(app, id, result).await;
    match &result {
        Ok(()) => tracing::info!(sandbox = id, ms = started.elapsed().as_millis() as u64, "sandbox woken"),
        Err(e) => tracing::warn!(sandbox = id, error = %e, "waking a sandbox failed"),
    }
    result
}

/// Moves the sandbox to `waking` (pushed to edges), unless it is running or another replica holds a
/// fresh wake on it.
async fn claim(app: &AppState, id: &str) -> Result<Claim, WakeError> {
    let mut write = Write::begin(&app.pool).await?;
    let row: Option<(String, Option<i64>)> =
        sqlx::query_as("SELECT state, wake_started_at FROM sandboxes WHERE id = $1")
            .bind(id)
            .fetch_optional(write.conn())
            .await?;
    let now = now_ms();
    let stale_after = i64::try_from((app.waker.timeout + STALE_MARGIN).as_millis()).unwrap_or(i64::MAX);
    let claim = match row {
        None => Err(WakeError::Gone),
        Some((state, _)) if state == enum_text(SandboxState::Running) => Ok(Claim::Running),
        Some((state, Some(started)))
            if state == enum_text(SandboxState::Waking) && now.saturating_sub(started) < stale_after =>
        {
            Ok(Claim::Busy)
        }
        Some(_) => Ok(Claim::Claimed),
    };
    if !matches!(claim, Ok(Claim::Claimed)) {
        // Nothing written: give the version number back.
        write.tx.rollback().await?;
        return claim;
    }
    sqlx::query("UPDATE sandboxes SET state = $1, wake_started_at = $2 WHERE id = $3")
        .bind(enum_text(SandboxState::Waking))
        .bind(now)
        .bind(id)
        .execute(write.conn())
        .await?;
    write.touch(Kind::Sandbox, id);
    write.commit(&app.notify).await?;
    Ok(Claim::Claimed)
}

/// The orchestrator's address, if it lies inside the upstream policy (narrowed by the sandbox's tenant):
/// an orchestrator is one more party that must not point the edges at loopback or cloud metadata.
async fn inside_policy(app: &AppState, id: &str, address: String) -> Result<String, WakeError> {
    let mut conn = app.pool.acquire().await?;
    let tenant: Option<String> = sqlx::query_scalar("SELECT tenant_id FROM sandboxes WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(tenant) = tenant else { return Err(WakeError::Gone) };
    let narrow = crate::db::tenant_upstream(&mut conn, &tenant).await?;
    if validate::upstream_address("address", &address, &app.upstream_allow, narrow.as_deref()).is_err() {
        tracing::warn!(
            sandbox = id,
            tenant = %tenant,
            address = %address,
            "the orchestrator's wake address is outside the upstream policy; the wake fails"
        );
        return Err(WakeError::Failed(format!(
            "the orchestrator's address {address} is outside the upstream policy"
        )));
    }
    Ok(address)
}

/// Records the orchestrator's answer: `running` at the new address (a wake counts as activity, so the
/// sandbox is not an idle candidate the moment it wakes), or back to `hibernated`.
async fn finish(app: &AppState, id: &str, result: Result<String, WakeError>) -> Result<(), WakeError> {
    let mut write = Write::begin(&app.pool).await?;
    let done = match &result {
        Ok(address) => sqlx::query(
            "UPDATE sandboxes SET state = $1, address = $2, wake_started_at = NULL, last_request_at = $3 \
                 WHERE id = $4 AND state = $5",
        )
        .bind(enum_text(SandboxState::Running))
        .bind(address)
        .bind(now_ms())
        .bind(id)
        .bind(enum_text(SandboxState::Waking))
        .execute(write.conn())
        .await?,
        Err(_) => {
            sqlx::query(
                "UPDATE sandboxes SET state = $1, wake_started_at = NULL WHERE id = $2 AND state = $3",
            )
            .bind(enum_text(SandboxState::Hibernated))
            .bind(id)
            .bind(enum_text(SandboxState::Waking))
            .execute(write.conn())
            .await?
        }
    };
    if done.rows_affected() == 0 {
        // Deleted, or set through the API while the orchestrator worked: that newer state stands.
        write.tx.rollback().await?;
        let state: Option<String> = sqlx::query_scalar("SELECT state FROM sandboxes WHERE id = $1")
            .bind(id)
            .fetch_optional(&app.pool)
            .await?;
        return match state {
            None => Err(WakeError::Gone),
            Some(s) if s == enum_text(SandboxState::Running) => Ok(()),
            Some(_) => result.and(Err(WakeError::Failed("the sandbox was hibernated while waking".into()))),
        };
    }
    write.touch(Kind::Sandbox, id);
    write.commit(&app.notify).await?;
    result.map(|_| ())
}

#[derive(Deserialize)]
struct OrchestratorAnswer {
    address: String,
}

fn invalid_answer() -> WakeError {
    WakeError::Failed("the orchestrator's answer has no valid address".into())
}

/// `POST {"sandbox_id"}` to `--wake-url`, signed; `200 {"address"}` means running at that address.
async fn call_orchestrator(waker: &Waker, id: &str) -> Result<String, WakeError> {
    let url = waker.url.as_deref().ok_or(WakeError::NotConfigured)?;
    let body = serde_json::json!({ "sandbox_id": id }).to_string().into_bytes();
    let unix_secs = u64::try_from(now_ms() / 1000).unwrap_or_default();
    let request = waker
        .http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, waker.signature(unix_secs, &body))
        .body(body)
        .send();
    let call = async {
        let resp = request.await.map_err(|e| {
            tracing::warn!(error = %e, "calling the orchestrator");
            WakeError::Failed("the orchestrator is unreachable".into())
        })?;
        let status = resp.status();
        if status != reqwest::StatusCode::OK {
            return Err(WakeError::Failed(format!("the orchestrator answered {}", status.as_u16())));
        }
        let answer: OrchestratorAnswer = resp.json().await.map_err(|e| {
            tracing::warn!(error = %e, "the orchestrator's answer is not {{\"address\"}}");
            invalid_answer()
        })?;
        validate::address(&answer.address).map_err(|_| invalid_answer())
    };
    match tokio::time::timeout(waker.timeout, call).await {
        Ok(result) => result,
        Err(_) => Err(WakeError::Timeout(waker.timeout.as_secs())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_over_timestamp_dot_body() {
        let waker = Waker::new(None, "secret", Duration::from_secs(1)).expect("client");
        let sig = waker.signature(1_700_000_000, br#"{"sandbox_id":"abcd1234"}"#);
        // `echo -n '1700000000.{"sandbox_id":"abcd1234"}' | openssl dgst -sha256 -hmac secret`
        assert_eq!(sig, "t=1700000000,v1=054ba49479d204f8943a8573d9589b696961ba28ed27416421ce2e1eca21c670");
    }
}
