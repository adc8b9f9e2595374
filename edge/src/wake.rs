//! Step 4: waking a hibernated sandbox (SPEC §4). Runs only after step 3 admitted the request, so no
//! request without a valid credential ever wakes a sandbox.
//!
//! One wake per sandbox per edge however many requests wait: the first request starts a flight (a task
//! asking control, which calls the orchestrator once for all edges); every request for that sandbox then
//! waits on the flight's `watch` channel. A waiting request is a parked future holding a receiver — no
//! thread, no timer, no buffer of its own — and the flight's one timer (`--wake-timeout`) bounds them all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portico_wire::{self as wire, SandboxState, WakePolicy};
use serde::Deserialize;
use tokio::sync::watch;

use crate::control::Control;
use crate::error::EdgeError;
use crate::metrics;
use crate::state::EdgeState;

/// After a failed wake, requests get the failure at once for this long instead of each retrying it.
const FAILURE_COOLDOWN: Duration = Duration::from_secs(1);
/// After a wake, how long its address serves new requests while the feed brings the `running` sandbox.
const FEED_GRACE: Duration = Duration::from_secs(5);
const FEED_POLL: Duration = Duration::from_millis(50);

/// How a flight ended: the sandbox runs at `address`, or the error every waiting request answers with.
#[derive(Clone, Debug)]
enum Outcome {
    Woken { address: Arc<str> },
    Failed(EdgeError),
}

impl Outcome {
    fn label(&self) -> &'static str {
        match self {
            Self::Woken { .. } => "woken",
            Self::Failed(EdgeError::WakeTimeout) => "timeout",
            Self::Failed(EdgeError::SandboxHibernated) => "disabled",
            Self::Failed(_) => "failed",
        }
    }
}

type Flight = watch::Receiver<Option<Outcome>>;

/// A wake in progress, or answered and kept a moment for the requests that come next.
struct Entry {
    flight: Flight,
    answered: Answered,
}

enum Answered {
    No,
    /// Woken; the sandbox's record in the snapshot at that moment. The address holds for new requests
    /// only while that record is unchanged: any newer word from control (hibernated again, moved) makes
    /// the next request start a new flight.
    Woken(Option<Arc<wire::Sandbox>>),
    /// Failed: new requests share the failure for the cooldown, whatever the feed brings meanwhile.
    Failed,
}

pub struct Waker {
    control: Arc<Control>,
    /// `--wake-timeout`: how long requests wait for one wake.
    timeout: Duration,
    state: Arc<EdgeState>,
    flights: Mutex<HashMap<Arc<str>, Entry>>,
}

impl Waker {
    pub fn new(control: Arc<Control>, timeout: Duration, state: Arc<EdgeState>) -> Self {
        Self { control, timeout, state, flights: Mutex::new(HashMap::new()) }
    }

    fn flights(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Entry>> {
        // The map holds no invariant a panicking holder could break halfway.
        self.flights.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sandboxes with a wake in progress or just finished at this edge.
    pub fn in_flight(&self) -> usize {
        self.flights().len()
    }

    fn record(&self, id: &str) -> Option<Arc<wire::Sandbox>> {
        self.state.load().sandboxes.get(id).cloned()
    }
}

fn same_record(a: &Option<Arc<wire::Sandbox>>, b: &Option<Arc<wire::Sandbox>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// Makes sure the sandbox can take the request. `Ok(None)`: it runs at the address the snapshot has;
/// `Ok(Some(address))`: it was just woken there (the feed may not have brought the new address yet).
pub async fn ensure_awake(
    waker: &Arc<Waker>,
    sandbox: &wire::Sandbox,
) -> Result<Option<Arc<str>>, EdgeError> {
    match (sandbox.state, sandbox.wake_policy) {
        (SandboxState::Running, _) => return Ok(None),
        (_, WakePolicy::Off) => return Err(EdgeError::SandboxHibernated),
        (SandboxState::Hibernated | SandboxState::Waking, WakePolicy::OnRequest) => {}
    }
    let mut flight = join(waker, &sandbox.id);
    let outcome = flight.wait_for(Option::is_some).await.map(|o| o.clone());
    match outcome {
        Ok(Some(Outcome::Woken { address })) => Ok(Some(address)),
        Ok(Some(Outcome::Failed(e))) => Err(e),
        // The flight task is gone without an answer (it panicked, or the server is stopping).
        Ok(None) | Err(_) => Err(EdgeError::WakeFailed),
    }
}

/// The flight for `id`: the one in progress, the answered one if control has said nothing newer about the
/// sandbox since, else a new one started by this call.
fn join(waker: &Arc<Waker>, id: &str) -> Flight {
    let current = waker.record(id);
    let mut flights = waker.flights();
    if let Some(entry) = flights.get(id) {
        let reuse = match &entry.answered {
            Answered::No | Answered::Failed => true,
            Answered::Woken(then) => same_record(then, &current),
        };
        if reuse {
            return entry.flight.clone();
        }
    }
    let (tx, rx) = watch::channel(None);
    let id: Arc<str> = id.into();
    flights.insert(id.clone(), Entry { flight: rx.clone(), answered: Answered::No });
    tokio::spawn(fly(waker.clone(), id, tx));
    rx
}

async fn fly(waker: Arc<Waker>, id: Arc<str>, tx: watch::Sender<Option<Outcome>>) {
    // Identifies this flight's entry, which a newer flight may have replaced by the time this one ends.
    let mine = tx.subscribe();
    let started = Instant::now();
    let outcome = match tokio::time::timeout(waker.timeout, ask_control(&waker, &id)).await {
        Ok(outcome) => outcome,
        Err(_) => Outcome::Failed(EdgeError::WakeTimeout),
    };
    metrics::WAKES.with_label_values(&[outcome.label()]).inc();
    metrics::WAKE_SECONDS.observe(started.elapsed().as_secs_f64());
    if let Outcome::Failed(e) = &outcome {
        tracing::warn!(sandbox = %id, error = e.code(), "waking a sandbox failed");
    }
    let answered_with = waker.record(&id);
    if let Some(entry) = waker.flights().get_mut(&*id).filter(|e| e.flight.same_channel(&mine)) {
        entry.answered = match outcome {
            Outcome::Woken { .. } => Answered::Woken(answered_with.clone()),
            Outcome::Failed(_) => Answered::Failed,
        };
    }
    tx.send_replace(Some(outcome.clone()));
    // The answered flight stays a little longer, so that requests arriving next get its answer at once
    // instead of asking control again: after a wake, until the feed brings news of the sandbox; after a
    // failure, for a short cooldown.
    match outcome {
        Outcome::Woken { .. } => {
            let deadline = Instant::now() + FEED_GRACE;
            while Instant::now() < deadline && same_record(&answered_with, &waker.record(&id)) {
                tokio::time::sleep(FEED_POLL).await;
            }
        }
        Outcome::Failed(_) => tokio::time::sleep(FAILURE_COOLDOWN).await,
    }
    let mut flights = waker.flights();
    if flights.get(&*id).is_some_and(|e| e.flight.same_channel(&mine)) {
        flights.remove(&*id);
    }
}

/// The part of control's sandbox view the edge needs.
#[derive(Deserialize)]
struct Woken {
    address: String,
}

#[derive(Deserialize)]
struct ControlError {
    error: ErrorBody,
}

#[derive(Deserialize)]
struct ErrorBody {
    code: String,
}

/// `POST /v1/sandboxes/{id}/wake` on the first control that answers.
async fn ask_control(waker: &Waker, id: &str) -> Outcome {
    let resp = match waker.control.call(|http, url| http.post(format!("{url}/v1/sandboxes/{id}/wake"))).await
    {
        Ok(resp) => resp,
        Err(e) => {
            tracing::warn!(error = %e, "asking control to wake a sandbox");
            return Outcome::Failed(EdgeError::WakeFailed);
        }
    };
    let status = resp.status().as_u16();
    if status == 200 {
        return match resp.json::<Woken>().await {
            Ok(w) => Outcome::Woken { address: w.address.into() },
            Err(e) => {
                tracing::warn!(error = %e, "control's wake answer has no address");
                Outcome::Failed(EdgeError::WakeFailed)
            }
        };
    }
    let code = resp.json::<ControlError>().await.map(|e| e.error.code).unwrap_or_default();
    Outcome::Failed(outcome_error(status, &code))
}

/// Control's answer to a wake that did not succeed, as the edge's error.
fn outcome_error(status: u16, code: &str) -> EdgeError {
    match (status, code) {
        (_, "wake_timeout") => EdgeError::WakeTimeout,
        (_, "wake_disabled") => EdgeError::SandboxHibernated,
        (404, _) => EdgeError::NotFound,
        _ => EdgeError::WakeFailed,
    }
}

#[cfg(test)]
mod tests;
