//! Usage counting: requests and response bytes per sandbox or deployment and minute, sent to control
//! (`POST /v1/edge/usage`) in batches. A batch is numbered once, when it is formed, and resent with the
//! same number until control acknowledges it: control applies each `(edge_id, seq)` once, so a control
//! outage or a lost answer neither loses counts nor counts them twice.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use portico_wire::usage::{UsageBatch, UsageEntry, UsageSubject};

use crate::route::{Route, Target};
use crate::state::unix_ms;

/// How often counts are sent.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);
/// Entries per batch, well under control's 64 KiB body limit.
const BATCH: usize = 100;
/// Batches queued while control is unreachable; past this, counts keep accumulating unsealed.
const MAX_PENDING: usize = 10_000;

type Key = (Arc<str>, UsageSubject, Arc<str>, u64);

#[derive(Default)]
struct Inner {
    counts: HashMap<Key, (u64, u64)>,
    pending: VecDeque<UsageBatch>,
}

pub struct Usage {
    edge_id: String,
    seq: AtomicU64,
    inner: Mutex<Inner>,
}

impl Default for Usage {
    fn default() -> Self {
        // Random per process: a restarted edge starts a new sequence under a new name.
        let mut raw = [0u8; 12];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw);
        Self {
            edge_id: format!("edge-{}", hex::encode(raw)),
            seq: AtomicU64::new(0),
            inner: Mutex::default(),
        }
    }
}

impl Usage {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Counters and queued batches: a panicking holder cannot leave them inconsistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One answered request of `id` (a sandbox or deployment of `tenant`) that sent `bytes` of body.
    pub fn record(&self, tenant: &str, subject: UsageSubject, id: &str, bytes: u64) {
        let minute = unix_ms(SystemTime::now()) / 60_000 * 60_000;
        let mut inner = self.inner();
        let key: Key = (tenant.into(), subject, id.into(), minute);
        let c = inner.counts.entry(key).or_default();
        c.0 += 1;
        c.1 += bytes;
    }

    /// One answered request on `route`.
    pub fn record_route(&self, route: &Route, bytes: u64) {
        let (subject, id) = match &route.target {
            Target::Sandbox { sandbox, .. } => (UsageSubject::Sandbox, sandbox.id.as_str()),
            Target::Deployment(d) => (UsageSubject::Deployment, d.id.as_str()),
        };
        self.record(&route.tenant.tenant.id, subject, id, bytes);
    }

    /// Turns the counts so far into numbered batches queued for sending.
    fn seal(&self) {
        let mut inner = self.inner();
        if inner.pending.len() >= MAX_PENDING {
            // Control has been away long: keep adding to the per-minute counts instead of queueing more.
            return;
        }
        let entries: Vec<UsageEntry> = inner
            .counts
            .drain()
            .map(|((tenant_id, subject, id, minute), (requests, bytes_out))| UsageEntry {
                tenant_id: tenant_id.to_string(),
                subject,
                id: id.to_string(),
                minute,
                requests,
                bytes_out,
            })
            .collect();
        for chunk in entries.chunks(BATCH) {
            let seq = self.seq.fetch_add(1, Ordering::Relaxed);
            inner.pending.push_back(UsageBatch {
                edge_id: self.edge_id.clone(),
                seq,
                entries: chunk.to_vec(),
            });
        }
    }

    fn front(&self) -> Option<UsageBatch> {
        self.inner().pending.front().cloned()
    }

    fn acknowledged(&self, seq: u64) {
        let mut inner = self.inner();
        if inner.pending.front().is_some_and(|b| b.seq == seq) {
            inner.pending.pop_front();
        }
    }
}

pub struct UsageReporter {
    usage: Arc<Usage>,
    control_urls: Vec<String>,
    edge_token: String,
    http: reqwest::Client,
}

impl UsageReporter {
    pub fn new(
        usage: Arc<Usage>,
        control_urls: Vec<String>,
        edge_token: String,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(10))
            .build()?;
        let control_urls = control_urls.into_iter().map(|u| u.trim_end_matches('/').to_string()).collect();
        Ok(Self { usage, control_urls, edge_token, http })
    }

    /// Seals the counts and sends queued batches in order until one is not acknowledged.
    async fn report(&self) {
        self.usage.seal();
        while let Some(batch) = self.usage.front() {
            if !self.send(&batch).await {
                return;
            }
            self.usage.acknowledged(batch.seq);
        }
    }

    async fn send(&self, batch: &UsageBatch) -> bool {
        for url in &self.control_urls {
            let resp = self
                .http
                .post(format!("{url}/v1/edge/usage"))
                .bearer_auth(&self.edge_token)
                .json(batch)
                .send()
                .await;
            match resp {
                Ok(r) if r.status().is_success() => return true,
                // Refused for what it is (not for being unreachable): resending it would never succeed.
                Ok(r) if r.status().as_u16() == 422 || r.status().as_u16() == 400 => {
                    tracing::error!(control = %url, status = r.status().as_u16(), "control refused a usage batch; dropped");
                    return true;
                }
                Ok(r) => tracing::debug!(control = %url, status = r.status().as_u16(), "reporting usage"),
                Err(e) => tracing::debug!(control = %url, error = %e, "reporting usage"),
            }
        }
        false
    }
}

#[async_trait]
impl BackgroundService for UsageReporter {
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
    fn counts_are_sealed_into_numbered_batches_and_kept_until_acknowledged() {
        let usage = Usage::default();
        usage.record("tn_a", UsageSubject::Sandbox, "abcd1234", 10);
        usage.record("tn_a", UsageSubject::Sandbox, "abcd1234", 5);
        usage.record("tn_a", UsageSubject::Deployment, "dp_1", 7);
        usage.seal();
        let first = usage.front().expect("a batch");
        assert_eq!(first.entries.len(), 2);
        let sandbox = first.entries.iter().find(|e| e.subject == UsageSubject::Sandbox).expect("sandbox");
        assert_eq!((sandbox.requests, sandbox.bytes_out), (2, 15));
        // Not acknowledged: the same batch, same number, is sent again next time.
        usage.record("tn_a", UsageSubject::Sandbox, "abcd1234", 1);
        usage.seal();
        assert_eq!(usage.front().expect("still queued"), first);
        usage.acknowledged(first.seq);
        let second = usage.front().expect("the next batch");
        assert_eq!(second.seq, first.seq + 1);
        usage.acknowledged(second.seq);
        assert!(usage.front().is_none());
    }
}
