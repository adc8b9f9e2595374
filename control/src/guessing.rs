//! Share-password guessing costs the guesser, not control (SPEC §7): attempts are counted per share and per
//! client IP *before* the PBKDF2 hash is computed, and only a bounded number of hashes run at once.
//!
//! Counters are fixed one-minute windows in a map under a mutex: this is not a hot path (a person types a
//! password), and the map is bounded — when it is full of live windows, new keys are refused as `busy`
//! rather than growing control's memory.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

const WINDOW: Duration = Duration::from_secs(60);
/// Attempts on one share per minute, from every client together: a share's password resists a botnet.
pub const PER_SHARE_PER_MINUTE: u32 = 30;
/// Attempts from one client IP per minute, over every share.
pub const PER_IP_PER_MINUTE: u32 = 10;
/// Keys (shares and IPs) tracked at once.
const MAX_KEYS: usize = 100_000;

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Share(u64),
    Ip(IpAddr),
}

pub struct Guessing {
    windows: Mutex<HashMap<Key, (Instant, u32)>>,
    hashes: Arc<Semaphore>,
    hasher: std::collections::hash_map::RandomState,
}

impl Guessing {
    /// `concurrent_hashes`: PBKDF2 checks that may run at once; more are refused with 503 `busy`.
    pub fn new(concurrent_hashes: usize) -> Self {
        Self {
            windows: Mutex::new(HashMap::new()),
            hashes: Arc::new(Semaphore::new(concurrent_hashes.max(1))),
            hasher: Default::default(),
        }
    }

    /// Counts one attempt on `share_id` from `client`, then reserves a hash slot. Refused attempts are
    /// refused before any hashing: 429 `rate_limited` with the seconds until the window reopens, or 503
    /// `busy` when every hash slot is taken.
    pub fn attempt(&self, share_id: &str, client: Option<IpAddr>) -> Result<OwnedSemaphorePermit, ApiError> {
        self.count(share_id, client, Instant::now())?;
        self.hashes.clone().try_acquire_owned().map_err(|_| ApiError::Busy)
    }

    fn count(&self, share_id: &str, client: Option<IpAddr>, now: Instant) -> Result<(), ApiError> {
        use std::hash::BuildHasher;
        let share = Key::Share(self.hasher.hash_one(share_id));
        let keys = [Some((share, PER_SHARE_PER_MINUTE)), client.map(|ip| (Key::Ip(ip), PER_IP_PER_MINUTE))];
        let mut windows = self.windows.lock().map_err(|_| ApiError::Internal("guess counters".into()))?;
        if windows.len() >= MAX_KEYS {
            windows.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
        }
        // Look at every key before counting any, so a refusal by one does not spend the other.
        for (key, limit) in keys.iter().flatten() {
            match windows.get(key) {
                Some((start, n)) if now.duration_since(*start) < WINDOW && *n >= *limit => {
                    let left = WINDOW.saturating_sub(now.duration_since(*start));
                    return Err(ApiError::RateLimited { retry_after_secs: left.as_secs().max(1) });
                }
                None if windows.len() >= MAX_KEYS => return Err(ApiError::Busy),
                _ => {}
            }
        }
        for (key, _) in keys.iter().flatten() {
            let entry = windows.entry(*key).or_insert((now, 0));
            if now.duration_since(entry.0) >= WINDOW {
                *entry = (now, 0);
            }
            entry.1 += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        s.parse().ok()
    }

    #[test]
    fn one_ip_gets_its_attempts_per_minute_then_waits_for_the_window() {
        let g = Guessing::new(4);
        let t0 = Instant::now();
        for _ in 0..PER_IP_PER_MINUTE {
            g.count("sh_a", ip("10.0.0.1"), t0).expect("within the budget");
        }
        match g.count("sh_b", ip("10.0.0.1"), t0 + Duration::from_secs(20)) {
            Err(ApiError::RateLimited { retry_after_secs }) => assert_eq!(retry_after_secs, 40),
            other => panic!("expected rate_limited, got {other:?}"),
        }
        g.count("sh_a", ip("10.0.0.2"), t0).expect("another IP has its own budget");
        g.count("sh_b", ip("10.0.0.1"), t0 + WINDOW).expect("a new window");
    }

    #[test]
    fn one_share_is_limited_across_many_ips() {
        let g = Guessing::new(4);
        let t0 = Instant::now();
        for i in 0..PER_SHARE_PER_MINUTE {
            g.count("sh_a", ip(&format!("10.0.1.{i}")), t0).expect("within the share's budget");
        }
        assert!(matches!(g.count("sh_a", ip("10.0.2.1"), t0), Err(ApiError::RateLimited { .. })));
        g.count("sh_other", ip("10.0.2.1"), t0).expect("the refused attempt spent nothing of the IP's");
    }

    #[test]
    fn hashes_at_once_are_bounded_and_released() {
        let g = Guessing::new(2);
        let a = g.attempt("sh_a", None).expect("slot 1");
        let _b = g.attempt("sh_a", None).expect("slot 2");
        assert!(matches!(g.attempt("sh_a", None), Err(ApiError::Busy)));
        drop(a);
        let _c = g.attempt("sh_a", None).expect("a slot came free");
    }
}
