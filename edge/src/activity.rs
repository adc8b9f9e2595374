//! When each sandbox last served a request, reported to control in batches so the platform can suspend
//! idle sandboxes (`last_request_at`, `GET /v1/sandboxes?idle_for=`). A request costs one short lock and
//! a map write; an open WebSocket counts as activity for as long as it stays open.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::Serialize;

use crate::state::unix_ms;

/// How often the edge reports. Idle thresholds are minutes; a few seconds of lag does not matter.
pub const REPORT_EVERY: Duration = Duration::from_secs(5);
/// Sandboxes per report request, well under control's body limit.
const BATCH: usize = 500;

#[derive(Default)]
struct Seen {
    last_ms: u64,
    /// WebSockets open to the sandbox right now.
    open: u32,
}

/// Activity since the last report, per sandbox.
#[derive(Default)]
pub struct Activity {
    seen: Mutex<HashMap<Arc<str>, Seen>>,
}

impl Activity {
    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Seen>> {
        // Plain counters: a panicking holder cannot leave them inconsistent.
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A request for `sandbox` was served now.
    pub fn touch(&self, sandbox: &str) {
        let now = unix_ms(SystemTime::now());
        let mut seen = self.seen();
        match seen.get_mut(sandbox) {
            Some(s) => s.last_ms = s.last_ms.max(now),
            None => {
                seen.insert(sandbox.into(), Seen { last_ms: now, open: 0 });
            }
        }
    }

    /// A WebSocket to `sandbox` opened; it counts as activity until the guard is dropped.
    pub fn open(self: &Arc<Self>, sandbox: &str) -> OpenGuard {
        let now = unix_ms(SystemTime::now());
        let key: Arc<str> = sandbox.into();
        let mut seen = self.seen();
        let s = seen.entry(key.clone()).or_default();
        s.open += 1;
        s.last_ms = s.last_ms.max(now);
        OpenGuard { activity: self.clone(), sandbox: key }
    }

    /// Everything to report now, leaving only sandboxes with open WebSockets in the map.
    fn take(&self) -> Vec<Report> {
        let now = unix_ms(SystemTime::now());
        let mut seen = self.seen();
        let out = seen
            .iter()
            .map(|(id, s)| Report {
                id: id.clone(),
                last_request_at: if s.open > 0 { now } else { s.last_ms },
            })
            .collect();
        seen.retain(|_, s| s.open > 0);
        out
    }

    /// Puts back what could not be reported, so the next report carries it.
    fn restore(&self, reports: Vec<Report>) {
        let mut seen = self.seen();
        for r in reports {
            let s = seen.entry(r.id).or_default();
            s.last_ms = s.last_ms.max(r.last_request_at);
        }
    }
}

/// Keeps a WebSocket's sandbox active while the connection lives.
pub struct OpenGuard {
    activity: Arc<Activity>,
    sandbox: Arc<str>,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        let now = unix_ms(SystemTime::now());
        let mut seen = self.activity.seen();
        let s = seen.entry(self.sandbox.clone()).or_default();
        s.open = s.open.saturating_sub(1);
        s.last_ms = s.last_ms.max(now);
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
    control_urls: Vec<String>,
    edge_token: String,
    http: reqwest::Client,
}

impl ActivityReporter {
    pub fn new(
        activity: Arc<Activity>,
        control_urls: Vec<String>,
        edge_token: String,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(10))
            .build()?;
        let control_urls = control_urls.into_iter().map(|u| u.trim_end_matches('/').to_string()).collect();
        Ok(Self { activity, control_urls, edge_token, http })
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

    /// Sends one batch to the first control URL that takes it.
    async fn send(&self, batch: &[Report]) -> bool {
        for url in &self.control_urls {
            let resp = self
                .http
                .post(format!("{url}/v1/edge/activity"))
                .bearer_auth(&self.edge_token)
                .json(&Batch {
                    sandboxes: batch
                        .iter()
                        .map(|r| Entry { id: &r.id, last_request_at: r.last_request_at })
                        .collect(),
                })
                .send()
                .await;
            match resp {
                Ok(r) if r.status().is_success() => return true,
                Ok(r) => tracing::debug!(control = %url, status = r.status().as_u16(), "reporting activity"),
                Err(e) => tracing::debug!(control = %url, error = %e, "reporting activity"),
            }
        }
        false
    }
}

#[async_trait]
impl BackgroundService for ActivityReporter {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut every = tokio::time::interval(REPORT_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => self.report().await,
                _ = shutdown.changed() => {
                    self.report().await;
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_reported_once_and_open_websockets_every_time() {
        let activity = Arc::new(Activity::default());
        activity.touch("abcd1234");
        activity.touch("abcd1234");
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
        activity.touch("abcd1234");
        let reports = activity.take();
        activity.restore(reports.clone());
        assert_eq!(activity.take(), reports);
    }
}
