//! Usage counting: requests and response bytes per sandbox or deployment and minute, sent to control
//! (`POST /v1/edge/usage`) in batches. A batch is numbered once, when it is formed, and resent with the
//! same number until control acknowledges it: control applies each `(edge_id, seq)` once, so a control
//! outage or a lost answer neither loses counts nor counts them twice.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use portico_wire::usage::{UsageBatch, UsageEntry, UsageSubject};

use crate::control::{self, Control};
use crate::route::{Route, Target};
use crate::state::unix_ms;

/// How often counts are sent.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);
/// Entries per batch, well under control's 64 KiB body limit.
const BATCH: usize = 100;
/// Batches queued while control is unreachable; past this, counts keep accumulating unsealed.
const MAX_PENDING: usize = 10_000;
/// A minute's counters are dropped this long after it ended (all its requests have been counted by then).
const KEEP_MINUTES_MS: u64 = 3 * 60_000;

/// Counters of one sandbox or deployment, per minute.
struct Subject {
    tenant: Arc<str>,
    kind: UsageSubject,
    minutes: papaya::HashMap<u64, Arc<Counts>, Hasher>,
}

/// Keys are sandbox and deployment ids (which tenants choose) and minutes: foldhash seeded at random per
/// process (as the snapshot's tables are, see `state/cowmap.rs`), cheaper than SipHash on a map every
/// request touches.
type Hasher = foldhash::quality::RandomState;

#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    bytes: AtomicU64,
}

/// Request counting is lock-free (a map look-up and two atomic adds); only the reporter, once a second,
/// takes the lock that guards the queue of sealed batches.
pub struct Usage {
    edge_id: String,
    seq: AtomicU64,
    counts: papaya::HashMap<Arc<str>, Arc<Subject>, Hasher>,
    pending: Mutex<VecDeque<UsageBatch>>,
}

impl Default for Usage {
    fn default() -> Self {
        // Random per process: a restarted edge starts a new sequence under a new name.
        let mut raw = [0u8; 12];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw);
        Self {
            edge_id: format!("edge-{}", hex::encode(raw)),
            seq: AtomicU64::new(0),
            counts: papaya::HashMap::default(),
            pending: Mutex::default(),
        }
    }
}

impl Usage {
    fn pending(&self) -> std::sync::MutexGuard<'_, VecDeque<UsageBatch>> {
        // Queued batches: a panicking holder cannot leave them inconsistent.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One answered request of `id` (a sandbox or deployment of `tenant`) that sent `bytes` of body.
    pub fn record(&self, tenant: &str, kind: UsageSubject, id: &str, bytes: u64, now: SystemTime) {
        let minute = unix_ms(now) / 60_000 * 60_000;
        let counts = self.counts.pin();
        // Borrowed under the guard: no reference count touched per request.
        let subject = match counts.get(id) {
            Some(s) => s,
            None => counts.get_or_insert_with(id.into(), || {
                Arc::new(Subject { tenant: tenant.into(), kind, minutes: papaya::HashMap::default() })
            }),
        };
        let minutes = subject.minutes.pin();
        let c = match minutes.get(&minute) {
            Some(c) => c,
            None => minutes.get_or_insert_with(minute, Arc::default),
        };
        c.requests.fetch_add(1, Ordering::Relaxed);
        c.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// One answered request on `route`.
    pub fn record_route(&self, route: &Route, bytes: u64, now: SystemTime) {
        let (kind, id) = match &route.target {
            Target::Sandbox { sandbox, .. } => (UsageSubject::Sandbox, sandbox.id.as_str()),
            Target::Deployment(d) => (UsageSubject::Deployment, d.id.as_str()),
        };
        self.record(&route.tenant.tenant.id, kind, id, bytes, now);
    }

    /// Moves the counts so far into numbered batches queued for sending. Counters are swapped to zero,
    /// so a request counted meanwhile lands in this batch or the next, never in neither.
    fn seal(&self) {
        let mut pending = self.pending();
        if pending.len() >= MAX_PENDING {
            // Control has been away long: keep adding to the per-minute counts instead of queueing more.
            return;
        }
        let now = unix_ms(SystemTime::now());
        let mut entries = Vec::new();
        let counts = self.counts.pin();
        let mut idle = Vec::new();
        for (id, subject) in counts.iter() {
            let minutes = subject.minutes.pin();
            let mut old = Vec::new();
            for (minute, c) in minutes.iter() {
                let (requests, bytes_out) =
                    (c.requests.swap(0, Ordering::Relaxed), c.bytes.swap(0, Ordering::Relaxed));
                if requests > 0 || bytes_out > 0 {
                    entries.push(UsageEntry {
                        tenant_id: subject.tenant.to_string(),
                        subject: subject.kind,
                        id: id.to_string(),
                        minute: *minute,
                        requests,
                        bytes_out,
                    });
                } else if now.saturating_sub(*minute) > KEEP_MINUTES_MS {
                    old.push(*minute);
                }
            }
            for m in old {
                minutes.remove(&m);
            }
            if minutes.is_empty() {
                idle.push(id.clone());
            }
        }
        // A request racing this removal could lose its count; it would have to be the first request in
        // minutes to a subject at the very instant of the seal.
        for id in idle {
            counts.remove(&id);
        }
        for chunk in entries.chunks(BATCH) {
            let seq = self.seq.fetch_add(1, Ordering::Relaxed);
            pending.push_back(UsageBatch { edge_id: self.edge_id.clone(), seq, entries: chunk.to_vec() });
        }
    }

    /// Queues batches an earlier run of this edge could not send (they keep their numbers, so control
    /// still counts each once).
    fn requeue(&self, batches: Vec<UsageBatch>) {
        self.pending().extend(batches);
    }

    fn front(&self) -> Option<UsageBatch> {
        self.pending().front().cloned()
    }

    fn acknowledged(&self, seq: u64) {
        let mut pending = self.pending();
        if pending.front().is_some_and(|b| b.seq == seq) {
            pending.pop_front();
        }
    }
}

pub struct UsageReporter {
    usage: Arc<Usage>,
    /// Where unsent batches wait across a restart of the edge.
    state_dir: Option<std::path::PathBuf>,
    control: Arc<Control>,
}

impl UsageReporter {
    pub fn new(usage: Arc<Usage>, state_dir: Option<std::path::PathBuf>, control: Arc<Control>) -> Self {
        if let Some(dir) = &state_dir {
            match load_unsent(dir) {
                Ok(batches) => usage.requeue(batches),
                Err(e) => tracing::error!(error = %e, "reading unsent usage; it is left in place"),
            }
        }
        Self { usage, state_dir, control }
    }

    /// At shutdown: what control did not take is kept in the state dir for the next run.
    fn keep_unsent(&self) {
        let Some(dir) = &self.state_dir else { return };
        let unsent: Vec<UsageBatch> = self.usage.pending().iter().cloned().collect();
        if let Err(e) = save_unsent(dir, &unsent) {
            tracing::error!(error = %e, batches = unsent.len(), "saving unsent usage");
        }
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

    /// `true` when control took the batch (or refused it for good: resending it would never succeed).
    async fn send(&self, batch: &UsageBatch) -> bool {
        let resp = self
            .control
            .call(|http, url| {
                http.post(format!("{url}/v1/edge/usage")).json(batch).timeout(Duration::from_secs(10))
            })
            .await;
        match resp {
            Ok(r) if r.status().is_success() => true,
            Ok(r) if matches!(r.status().as_u16(), 400 | 422) => {
                tracing::error!(status = r.status().as_u16(), "control refused a usage batch; dropped");
                true
            }
            Ok(r) => {
                tracing::debug!(status = r.status().as_u16(), "reporting usage");
                false
            }
            Err(e) => {
                tracing::debug!(error = %e, "reporting usage");
                false
            }
        }
    }
}

#[async_trait]
impl BackgroundService for UsageReporter {
    async fn start(&self, shutdown: ShutdownWatch) {
        control::report_every(REPORT_EVERY, shutdown, || self.report()).await;
        self.keep_unsent();
    }
}

const UNSENT_FILE: &str = "usage-unsent.json";

fn load_unsent(dir: &std::path::Path) -> std::io::Result<Vec<UsageBatch>> {
    let path = dir.join(UNSENT_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let batches = serde_json::from_slice(&bytes).map_err(std::io::Error::other)?;
    std::fs::remove_file(&path)?;
    Ok(batches)
}

fn save_unsent(dir: &std::path::Path, batches: &[UsageBatch]) -> std::io::Result<()> {
    let path = dir.join(UNSENT_FILE);
    if batches.is_empty() {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{UNSENT_FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec(batches).map_err(std::io::Error::other)?)?;
    std::fs::rename(tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_sealed_into_numbered_batches_and_kept_until_acknowledged() {
        let usage = Usage::default();
        usage.record("tn_a", UsageSubject::Sandbox, "abcd1234", 10, SystemTime::now());
        usage.record("tn_a", UsageSubject::Sandbox, "abcd1234", 5, SystemTime::now());
        usage.record("tn_a", UsageSubject::Deployment, "dp_1", 7, SystemTime::now());
        usage.seal();
        let first = usage.front().expect("a batch");
        assert_eq!(first.entries.len(), 2);
        let sandbox = first.entries.iter().find(|e| e.subject == UsageSubject::Sandbox).expect("sandbox");
        assert_eq!((sandbox.requests, sandbox.bytes_out), (2, 15));
        // Not acknowledged: the same batch, same number, is sent again next time.
        usage.record("tn_a", UsageSubject::Sandbox, "abcd1234", 1, SystemTime::now());
        usage.seal();
        assert_eq!(usage.front().expect("still queued"), first);
        usage.acknowledged(first.seq);
        let second = usage.front().expect("the next batch");
        assert_eq!(second.seq, first.seq + 1);
        usage.acknowledged(second.seq);
        assert!(usage.front().is_none());
    }
}
