//! The miss path of hashed credentials: a share or preview-auth token whose SHA-256 the snapshot does not
//! know yet (minted a moment ago, before the feed delivered it) is looked up at control.
//!
//! Look-ups are bounded three ways, so a flood of random tokens cannot become a flood of requests to
//! control: concurrent look-ups of one hash coalesce into one (moka), every answer — found or not — is
//! cached briefly, and all look-ups share a small per-second budget; past it a token counts as unknown.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::future::Cache;
use portico_wire::CredentialLookup;

use crate::control::Control;
use crate::metrics;

/// Long enough to absorb a burst of the same token, short enough that a positive answer never outlives
/// a revocation by more than this (the feed removes the token from the snapshot within milliseconds).
const ANSWER_TTL: Duration = Duration::from_millis(500);
const MAX_CACHED: u64 = 100_000;
/// Look-ups per second one edge may make; a legitimate first request after a mint needs one.
const BUDGET_PER_SEC: u64 = 50;

#[derive(Clone, Debug, thiserror::Error)]
pub enum LookupError {
    #[error("look-up budget spent")]
    OverBudget,
    #[error("control: {0}")]
    Control(String),
    /// Control counts password attempts per share and per client IP, and bounds the hashes it runs.
    #[error("control refused the attempt for now")]
    Refused { retry_after_secs: u64 },
}

pub struct Lookup {
    control: Arc<Control>,
    answers: Cache<String, Option<Arc<CredentialLookup>>>,
    budget: Budget,
}

impl Lookup {
    pub fn new(control: Arc<Control>) -> Self {
        Self {
            control,
            answers: Cache::builder().max_capacity(MAX_CACHED).time_to_live(ANSWER_TTL).build(),
            budget: Budget::new(BUDGET_PER_SEC),
        }
    }

    /// What control knows of the credential with this SHA-256; `None` when nothing (or when it could not
    /// be asked: the caller then refuses the token).
    pub async fn credential(&self, sha256: &str) -> Option<Arc<CredentialLookup>> {
        let result = self.answers.try_get_with(sha256.to_string(), self.ask(sha256)).await;
        let outcome = match &result {
            Ok(Some(_)) => "found",
            Ok(None) => "not_found",
            Err(e) if matches!(**e, LookupError::OverBudget) => "over_budget",
            Err(_) => "error",
        };
        metrics::CREDENTIAL_LOOKUPS.with_label_values(&[outcome]).inc();
        result.ok().flatten()
    }

    /// Whether `password` opens the share; only control holds password hashes.
    pub async fn check_password(
        &self,
        share_id: &str,
        password: &str,
        client_ip: Option<std::net::IpAddr>,
    ) -> Result<bool, LookupError> {
        let body = serde_json::json!({ "password": password, "client_ip": client_ip });
        let r = self
            .control
            .call(|http, url| {
                http.post(format!("{url}/v1/edge/shares/{share_id}/password"))
                    .json(&body)
                    .timeout(Duration::from_secs(10))
            })
            .await
            .map_err(|e| LookupError::Control(e.to_string()))?;
        match r.status().as_u16() {
            200..=299 => Ok(true),
            403 | 404 => Ok(false),
            429 | 503 => {
                let retry = r.headers().get(http::header::RETRY_AFTER).and_then(|v| v.to_str().ok());
                Err(LookupError::Refused {
                    retry_after_secs: retry.and_then(|v| v.parse().ok()).unwrap_or(1),
                })
            }
            status => Err(LookupError::Control(format!("control answered {status}"))),
        }
    }

    async fn ask(&self, sha256: &str) -> Result<Option<Arc<CredentialLookup>>, LookupError> {
        if !self.budget.take() {
            return Err(LookupError::OverBudget);
        }
        metrics::CREDENTIAL_LOOKUPS_SENT.inc();
        let r = self
            .control
            .call(|http, url| {
                http.get(format!("{url}/v1/edge/credentials/{sha256}")).timeout(Duration::from_secs(2))
            })
            .await
            .map_err(|e| LookupError::Control(e.to_string()))?;
        match r.status().as_u16() {
            404 => Ok(None),
            200..=299 => {
                r.json().await.map(|v| Some(Arc::new(v))).map_err(|e| LookupError::Control(e.to_string()))
            }
            status => Err(LookupError::Control(format!("control answered {status}"))),
        }
    }
}

/// A token bucket refilled every second, lock-free: a look-up takes one token or is refused.
struct Budget {
    per_sec: u64,
    started: Instant,
    /// High 32 bits: the second the bucket was last refilled; low 32 bits: tokens left.
    state: AtomicU64,
}

impl Budget {
    fn new(per_sec: u64) -> Self {
        Self { per_sec, started: Instant::now(), state: AtomicU64::new(per_sec) }
    }

    fn take(&self) -> bool {
        let now = self.started.elapsed().as_secs() & 0xffff_ffff;
        let mut current = self.state.load(Ordering::Relaxed);
        loop {
            let (second, left) = (current >> 32, current & 0xffff_ffff);
            let left = if second == now { left } else { self.per_sec };
            if left == 0 {
                return false;
            }
            let next = (now << 32) | (left - 1);
            match self.state.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(seen) => current = seen,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_allows_its_rate_then_refuses() {
        let b = Budget::new(3);
        assert!((0..3).all(|_| b.take()));
        assert!(!b.take());
    }
}
