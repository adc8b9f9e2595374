//! Step 2: rate limits (SPEC §4 step 2). Public routes per client IP, private routes per credential (per
//! client IP when none is offered), and failed credential checks per client IP, each with the tenant's
//! policy from the snapshot in force — so a policy change applies from the next request after the swap.
//!
//! The algorithm is GCRA (a token bucket kept as one timestamp, the "theoretical arrival time"): each key
//! needs 8 bytes of state, `Retry-After` is exact, and a key idle for `burst / rps` seconds holds nothing
//! worth keeping. State lives in a fixed table of atomics allocated once ([`SLOTS`] entries, 16 MiB): a
//! million distinct client IPs cost no more memory than one, and a check takes no lock — it reads one
//! cache line and writes it with one compare-and-swap. (`moka` would allocate per key and take shard locks;
//! `pingora-limits` counts per window, so its bursts are window-shaped and it cannot say when to retry.)
//! A key whose slot is taken finds another in its bucket; when a bucket is full of keys that are all still
//! limited, a newcomer shares the least-loaded slot, which can only make a limit stricter, never looser.

use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use portico_wire::{PerMinute, Rate, Visibility};

use crate::error::EdgeError;
use crate::metrics::TenantMetrics;
use crate::route::Route;
use crate::state::Seeded;

/// Table size of [`Limiter::new`]: one million keys may be limited at the same instant.
pub const SLOTS: usize = 1 << 20;
/// Slots per bucket: four 16-byte slots fill one 64-byte cache line.
const WAYS: usize = 4;
const TAT_BITS: u32 = 48;
const TAT_MASK: u64 = (1 << TAT_BITS) - 1;
const MICROS: u64 = 1_000_000;

/// What a key counts, as a bounded metrics label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// Requests per client IP (public routes, and private ones offering no credential).
    Ip,
    /// Requests per credential on private routes.
    Token,
    /// Failed credential checks per client IP.
    AuthFailures,
}

impl KeyKind {
    pub fn label(self) -> &'static str {
        self.index().1
    }

    /// Its place among the kinds, with its label: the tenant's metric handles are kept in that order.
    fn index(self) -> (usize, &'static str) {
        match self {
            Self::Ip => (0, "ip"),
            Self::Token => (1, "token"),
            Self::AuthFailures => (2, "auth_failures"),
        }
    }

    /// The window over which the observed rate is estimated: a second for requests, a minute for the
    /// (per-minute) failure budget.
    fn window_us(self) -> u64 {
        match self {
            Self::Ip | Self::Token => MICROS,
            Self::AuthFailures => 60 * MICROS,
        }
    }
}

/// Who is counted. IPv6 clients are counted per /64: one host commonly holds a whole /64.
#[derive(Clone, Copy, Debug)]
pub enum Subject<'a> {
    Ip(Option<IpAddr>),
    Credential(&'a str),
}

/// One limited key: a tenant's counter of one kind for one subject.
#[derive(Clone, Copy, Debug)]
pub struct Key<'a> {
    pub tenant: &'a str,
    pub kind: KeyKind,
    pub subject: Subject<'a>,
}

/// A GCRA policy: one event every `interval_us`, up to `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    interval_us: u64,
    /// How far ahead of now a key's arrival time may run: `(burst - 1) * interval`.
    tolerance_us: u64,
}

impl Policy {
    /// Control keeps values ≥ 1; a zero would mean "never", which no tenant can have asked for.
    pub fn per_second(rate: Rate) -> Self {
        Self::new(MICROS / u64::from(rate.rps.max(1)), rate.burst)
    }

    /// `per_minute` failures at once, then one more each `60 / per_minute` seconds.
    pub fn per_minute(rate: PerMinute) -> Self {
        let n = rate.per_minute.max(1);
        Self::new(60 * MICROS / u64::from(n), n)
    }

    fn new(interval_us: u64, burst: u32) -> Self {
        let interval_us = interval_us.max(1);
        Self { interval_us, tolerance_us: interval_us.saturating_mul(u64::from(burst.max(1) - 1)) }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    Limited { retry_after_us: u64 },
}

impl Outcome {
    /// Its place among the decisions, with its label (see [`KeyKind::index`]).
    fn index(self) -> (usize, &'static str) {
        match self {
            Self::Allowed => (0, "allowed"),
            Self::Limited { .. } => (1, "limited"),
        }
    }

    fn into_result(self) -> Result<(), EdgeError> {
        match self {
            Self::Allowed => Ok(()),
            // Whole seconds, rounded up: a client retrying on time must not be refused again.
            Self::Limited { retry_after_us } => {
                Err(EdgeError::RateLimited { retry_after_secs: retry_after_us.div_ceil(MICROS).max(1) })
            }
        }
    }
}

/// One check's result and the key's request rate at that moment (requests per second, this one included).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decision {
    pub outcome: Outcome,
    pub observed_rps: f64,
}

/// The edge's limiter: one per process, shared by every worker thread.
pub struct Limiter {
    buckets: Box<[Bucket]>,
    /// Keyed randomly per process, so nobody can choose keys that collide with a victim's. foldhash like
    /// the snapshot's tables, not SipHash: with a 300-byte session token, SipHash was 0.07 µs of a private
    /// request (perf), foldhash 0.04.
    hasher: Seeded,
    epoch: Instant,
}

#[repr(align(64))]
#[derive(Default)]
struct Bucket([Slot; WAYS]);

#[derive(Default)]
struct Slot {
    /// `fingerprint:16 | arrival time:48` (µs since the limiter started: 8.9 years); 0 is an empty slot.
    gcra: AtomicU64,
    /// `window:32 | previous window's count:16 | this window's count:16`, for the observed rate.
    seen: AtomicU64,
}

impl Default for Limiter {
    fn default() -> Self {
        Self::new()
    }
}

impl Limiter {
    pub fn new() -> Self {
        Self::with_slots(SLOTS)
    }

    /// A table of at least `slots` keys (rounded up to a power of two); its memory never changes after.
    pub fn with_slots(slots: usize) -> Self {
        let buckets = (slots.div_ceil(WAYS)).next_power_of_two();
        Self {
            buckets: (0..buckets).map(|_| Bucket::default()).collect(),
            hasher: Seeded::new(),
            epoch: Instant::now(),
        }
    }

    /// Bytes of state, fixed at construction.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of_val(&*self.buckets)
    }

    /// Microseconds on the limiter's own monotonic clock.
    pub fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// Step 2 before any credential is looked at: a private route's failure lock-out for the client IP,
    /// then the per-IP request budget of a public route, or of a private one offered no credential.
    pub fn admit(
        &self,
        route: &Route,
        client: Option<IpAddr>,
        offers_credential: bool,
    ) -> Result<(), EdgeError> {
        let tenant = &route.tenant.tenant;
        let limits = &route.tenant.rate_limits;
        let now = self.now_us();
        if route.visibility == Visibility::Private {
            let key = Key { tenant: &tenant.id, kind: KeyKind::AuthFailures, subject: Subject::Ip(client) };
            let outcome = self.locked_out(key, Policy::per_minute(limits.auth_failures_per_ip), now);
            record(&route.tenant.metrics, &key, outcome, None);
            outcome.into_result()?;
            if offers_credential {
                // Counted per credential once step 3 knows which one opened the route.
                return Ok(());
            }
        }
        let key = Key { tenant: &tenant.id, kind: KeyKind::Ip, subject: Subject::Ip(client) };
        self.spend(&route.tenant.metrics, key, Policy::per_second(limits.public_per_ip), now)
    }

    /// Step 2 for a private route after step 3: the budget of the credential that was accepted — not of
    /// whatever came first, so a fresh decoy per request buys no fresh budget.
    pub fn admit_credential(&self, route: &Route, credential: &str) -> Result<(), EdgeError> {
        let tenant = &route.tenant.tenant;
        let key = Key { tenant: &tenant.id, kind: KeyKind::Token, subject: Subject::Credential(credential) };
        let policy = Policy::per_second(route.tenant.rate_limits.private_per_token);
        self.spend(&route.tenant.metrics, key, policy, self.now_us())
    }

    fn spend(&self, m: &TenantMetrics, key: Key<'_>, policy: Policy, now: u64) -> Result<(), EdgeError> {
        let decision = self.check(key, policy, 1, now);
        record(m, &key, decision.outcome, Some(decision.observed_rps));
        decision.outcome.into_result()
    }

    /// After step 3: every credential refused counts against the client IP — a request carrying eight
    /// guesses makes eight, and so do decoys offered ahead of a credential that passed.
    pub fn record_auth(&self, route: &Route, client: Option<IpAddr>, failures: usize) {
        if failures == 0 {
            return;
        }
        let tenant = &route.tenant.tenant;
        let key = Key { tenant: &tenant.id, kind: KeyKind::AuthFailures, subject: Subject::Ip(client) };
        let policy = Policy::per_minute(route.tenant.rate_limits.auth_failures_per_ip);
        let cost = u32::try_from(failures).unwrap_or(u32::MAX);
        let observed = self.consume(key, policy, cost, self.now_us());
        route.tenant.metrics.observed_rps(&tenant.id, key.kind.index()).observe(observed);
    }

    /// Takes `cost` events from `key`'s budget if it has them. `now` is explicit so tests control time.
    pub fn check(&self, key: Key<'_>, policy: Policy, cost: u32, now: u64) -> Decision {
        self.update(key, policy, cost, now, false)
    }

    /// Takes `cost` events whatever the budget (failures happened; they count even past the limit).
    pub fn consume(&self, key: Key<'_>, policy: Policy, cost: u32, now: u64) -> f64 {
        self.update(key, policy, cost, now, true).observed_rps
    }

    /// Whether `key` has no budget left, without taking any.
    pub fn locked_out(&self, key: Key<'_>, policy: Policy, now: u64) -> Outcome {
        let (bucket, fp) = self.locate(&key);
        match find(bucket, fp, now) {
            Found::Own(_, word) | Found::Shared(_, word) => verdict(tat(word).max(now), now, policy),
            Found::Free(..) => Outcome::Allowed,
        }
    }

    fn update(&self, key: Key<'_>, policy: Policy, cost: u32, now: u64, force: bool) -> Decision {
        let (bucket, fp) = self.locate(&key);
        // Past 2^47 µs (4.4 years of uptime) the clock stops for the limiter instead of wrapping.
        let now = now.min(TAT_MASK >> 1);
        loop {
            let (i, word, start, owner, fresh) = match find(bucket, fp, now) {
                Found::Own(i, w) => (i, w, tat(w).max(now), fp, false),
                Found::Shared(i, w) => (i, w, tat(w).max(now), fingerprint(w), false),
                Found::Free(i, w) => (i, w, now, fp, true),
            };
            let outcome = verdict(start, now, policy);
            let slot = &bucket.0[i];
            if outcome != Outcome::Allowed && !force {
                return Decision { outcome, observed_rps: count(&slot.seen, key.kind, now, false) };
            }
            let next = start.saturating_add(policy.interval_us.saturating_mul(u64::from(cost))).min(TAT_MASK);
            let new = u64::from(owner) << TAT_BITS | next;
            if slot.gcra.compare_exchange_weak(word, new, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                return Decision { outcome, observed_rps: count(&slot.seen, key.kind, now, fresh) };
            }
            // Another thread changed this bucket between the read and the write: decide again.
        }
    }

    fn locate(&self, key: &Key<'_>) -> (&Bucket, u16) {
        let mut h = self.hasher.build_hasher();
        key.tenant.hash(&mut h);
        key.kind.hash(&mut h);
        match key.subject {
            Subject::Ip(None) => 0u8.hash(&mut h),
            Subject::Ip(Some(ip)) => match ip.to_canonical() {
                IpAddr::V4(v4) => (4u8, v4.octets()).hash(&mut h),
                IpAddr::V6(v6) => (6u8, u128::from(v6) >> 64).hash(&mut h),
            },
            Subject::Credential(token) => (1u8, token).hash(&mut h),
        }
        let hash = h.finish();
        let index = (hash as usize) & (self.buckets.len() - 1);
        (&self.buckets[index], (hash >> 48) as u16)
    }
}

enum Found {
    /// The key's own slot.
    Own(usize, u64),
    /// Every slot holds another key whose arrival time is still ahead: share the least loaded.
    Shared(usize, u64),
    /// An empty slot, or the one idle longest: its old state is the same as no state.
    Free(usize, u64),
}

fn find(bucket: &Bucket, fp: u16, now: u64) -> Found {
    let words: [u64; WAYS] = std::array::from_fn(|i| bucket.0[i].gcra.load(Ordering::Acquire));
    for (i, &word) in words.iter().enumerate() {
        if word == 0 {
            // Slots fill in order and never empty again, so the key's own slot cannot lie beyond this one.
            return Found::Free(i, 0);
        }
        if fingerprint(word) == fp {
            return Found::Own(i, word);
        }
    }
    let (i, word) = words.iter().copied().enumerate().min_by_key(|(_, w)| tat(*w)).unwrap_or((0, words[0]));
    if tat(word) <= now {
        Found::Free(i, word)
    } else {
        Found::Shared(i, word)
    }
}

/// GCRA: an event at `now` fits when the key's arrival time runs at most `tolerance` ahead of now.
fn verdict(start: u64, now: u64, policy: Policy) -> Outcome {
    let ahead = start.saturating_sub(now);
    if ahead <= policy.tolerance_us {
        Outcome::Allowed
    } else {
        Outcome::Limited { retry_after_us: ahead - policy.tolerance_us }
    }
}

fn tat(word: u64) -> u64 {
    word & TAT_MASK
}

fn fingerprint(word: u64) -> u16 {
    (word >> TAT_BITS) as u16
}

/// Counts this event in the slot's sliding window and returns the key's rate in events per second:
/// the previous window weighted by how much of it still overlaps the last window-length, plus this one.
fn count(seen: &AtomicU64, kind: KeyKind, now: u64, fresh: bool) -> f64 {
    let window_us = kind.window_us();
    let window = (now / window_us) as u32;
    let mut old = seen.load(Ordering::Relaxed);
    loop {
        let (w, prev, cur) = if fresh { (window, 0, 0) } else { unpack_seen(old) };
        let (prev, cur) = match window.wrapping_sub(w) {
            0 => (prev, cur),
            1 => (cur, 0),
            _ => (0, 0),
        };
        let cur = cur.saturating_add(1);
        let new = u64::from(window) << 32 | u64::from(prev) << 16 | u64::from(cur);
        // Losing a race here only loses a count in a statistic; the limit itself is decided above.
        match seen.compare_exchange_weak(old, new, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => {
                let elapsed = (now % window_us) as f64 / window_us as f64;
                let events = f64::from(prev) * (1.0 - elapsed) + f64::from(cur);
                return events * MICROS as f64 / window_us as f64;
            }
            Err(actual) => old = actual,
        }
    }
}

fn unpack_seen(word: u64) -> (u32, u16, u16) {
    ((word >> 32) as u32, (word >> 16) as u16, word as u16)
}

/// `portico_ratelimit_decisions_total` and, for request budgets, the observed-rate histogram.
fn record(m: &TenantMetrics, key: &Key<'_>, outcome: Outcome, observed_rps: Option<f64>) {
    m.decision(key.tenant, key.kind.index(), outcome.index()).inc();
    if let Some(rps) = observed_rps {
        m.observed_rps(key.tenant, key.kind.index()).observe(rps);
    }
}

#[cfg(test)]
mod tests;
