//! When each sandbox last served a request, reported to control in batches so the platform can suspend
//! idle sandboxes (`last_request_at`, `GET /v1/sandboxes?idle_for=`). A request costs a lock-free map
//! look-up and an atomic max; an open WebSocket counts as activity for as long as it stays open.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::Serialize;

use crate::control::{self, Control};
use crate::state::unix_ms;

/// How often the edge reports. Idle thresholds are minutes; a few seconds of lag does not matter.
pub const REPORT_EVERY: Duration = Duration::from_secs(5);
/// Sandboxes per report request, well under control's body limit.
const BATCH: usize = 500;
/// A sandbox idle this long, already reported and without open WebSockets, leaves the map.
const FORGET_AFTER_MS: u64 = 10 * 60 * 1000;

#[derive(Default)]
struct Seen {
    last_ms: AtomicU64,
    /// What control has been told, so an idle sandbox is not reported again and again.
    reported_ms: AtomicU64,
    /// WebSockets open to the sandbox right now.
    open: AtomicU32,
}

/// Activity per sandbox.
#[derive(Default)]
pub struct Activity {
    /// Keyed by sandbox ids, which tenants choose: foldhash seeded at random per process (as the snapshot's
    /// tables are, see `state/cowmap.rs`), cheaper than SipHash on a map every request touches.
    seen: papaya::HashMap<Arc<str>, Arc<Seen>, foldhash::quality::RandomState>,
}

impl Activity {
    fn entry(&self, sandbox: &str) -> Arc<Seen> {
        let seen = self.seen.pin();
        match seen.get(sandbox) {
            Some(s) => s.clone(),
            None => seen.get_or_insert_with(sandbox.into(), Arc::default).clone(),
        }
    }

    /// A request for `sandbox` was served at `now` (the caller's clock reading, shared by its other uses).
    pub fn touch(&self, sandbox: &str, now: SystemTime) {
        let now = unix_ms(now);
        let seen = self.seen.pin();
        match seen.get(sandbox) {
            Some(s) => s.last_ms.fetch_max(now, Ordering::Relaxed),
            None => seen
                .get_or_insert_with(sandbox.into(), Arc::default)
                .last_ms
                .fetch_max(now, Ordering::Relaxed),
        };
    }

    /// A WebSocket to `sandbox` opened; it counts as activity until the guard is dropped.
    pub fn open(self: &Arc<Self>, sandbox: &str) -> OpenGuard {
        let seen = self.entry(sandbox);
        seen.open.fetch_add(1, Ordering::Relaxed);
        seen.last_ms.fetch_max(unix_ms(SystemTime::now()), Ordering::Relaxed);
        OpenGuard { seen }
    }

    /// What changed since the last report (an open WebSocket always counts as now); forgets long-idle
    /// sandboxes.
    fn take(&self) -> Vec<Report> {
        let now = unix_ms(SystemTime::now());
        let seen = self.seen.pin();
        let mut out = Vec::new();
        let mut idle = Vec::new();
        for (id, s) in seen.iter() {
            let open = s.open.load(Ordering::Relaxed) > 0;
            let last = if open { now } else { s.last_ms.load(Ordering::Relaxed) };
            if last > s.reported_ms.load(Ordering::Relaxed) {
                // While open it is reported every time, and its close is reported once more.
                s.reported_ms.store(if open { 0 } else { last }, Ordering::Relaxed);
                out.push(Report { id: id.clone(), last_request_at: last });
            } else if !open && now.saturating_sub(last) > FORGET_AFTER_MS {
                idle.push(id.clone());
            }
        }
        for id in idle {
            seen.remove(&id);
        }
        out
    }

    /// What could not be reported goes out with the next report.
    fn restore(&self, reports: Vec<Report>) {
        let seen = self.seen.pin();
        for r in reports {
            if let Some(s) = seen.get(&r.id) {
                s.reported_ms.store(0, Ordering::Relaxed);
            }
        }
    }
}

/// Keeps a WebSocket's sandbox active while the connection lives.
pub struct OpenGuard {
    seen: Arc<Seen>,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.seen.last_ms.fetch_max(unix_ms(SystemTime::now()), Ordering::Relaxed);
        let _ = self.seen.open.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Report {
    id: Arc<str>,
    last_request_at: u64,
}

/// The body of `POST /v1/edge/activity`.
#[derive(Serialize)]
struct Batch<'a> {
    sandboxes: Vec<Entry<'a>>,
}

#[derive(Serialize)]
struct Entry<'a> {
    id: &'a str,
    /// Unix milliseconds.
    last_request_at: u64,
}

/// Posts the activity to `POST /v1/edge/activity` every [`REPORT_EVERY`], and once more at shutdown.
pub struct ActivityReporter {
    pub activity: Arc<Activity>,
    control: Arc<Control>,
}

impl ActivityReporter {
    pub fn new(activity: Arc<Activity>, control: Arc<Control>) -> Self {
        Self { activity, control }
    }

    async fn report(&self) {
        let reports = self.activity.take();
        let mut unsent = Vec::new();
        for batch in reports.chunks(BATCH) {
            if !self.send(batch).await {
                unsent.extend_from_slice(batch);
            }
        }
        if !unsent.is_empty() {
            self.activity.restore(unsent);
        }
    }

    /// Sends one batch to the first control that answers; `false`: keep it for the next report.
    async fn send(&self, batch: &[Report]) -> bool {
        let body = Batch {
            sandboxes: batch
                .iter()
                .map(|r| Entry { id: &r.id, last_request_at: r.last_request_at })
                .collect(),
        };
        let resp = self
            .control
            .call(|http, url| {
                http.post(format!("{url}/v1/edge/activity")).json(&body).timeout(Duration::from_secs(10))
            })
            .await;
        match resp {
            Ok(r) if r.status().is_success() => true,
            Ok(r) => {
                tracing::debug!(status = r.status().as_u16(), "control refused an activity report");
                false
            }
            Err(e) => {
                tracing::debug!(error = %e, "reporting activity");
                false
            }
        }
    }
}

#[async_trait]
impl BackgroundService for ActivityReporter {
    async fn start(&self, shutdown: ShutdownWatch) {
        control::report_every(REPORT_EVERY, shutdown, || self.report()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_reported_once_and_open_websockets_every_time() {
        let activity = Arc::new(Activity::default());
        activity.touch("abcd1234", SystemTime::now());
        activity.touch("abcd1234", SystemTime::now());
        let ws = activity.open("wsbox001");
        let first = activity.take();
        assert_eq!(first.len(), 2, "one entry per sandbox: {first:?}");
        let again = activity.take();
        assert_eq!(again.iter().map(|r| &*r.id).collect::<Vec<_>>(), ["wsbox001"]);
        drop(ws);
        // The close itself is activity, reported once more, then nothing.
        assert_eq!(activity.take().len(), 1);
        assert!(activity.take().is_empty());
    }

    #[test]
    fn unsent_reports_are_kept_for_the_next_one() {
        let activity = Activity::default();
        activity.touch("abcd1234", SystemTime::now());
        let reports = activity.take();
        activity.restore(reports.clone());
        assert_eq!(activity.take(), reports);
    }
}
