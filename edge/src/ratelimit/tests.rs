#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr};

use portico_wire::{PerMinute, Rate};

use super::*;

const SEC: u64 = MICROS;

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().unwrap())
}

fn key(subject: Subject<'_>) -> Key<'_> {
    Key { tenant: "tn_a", kind: KeyKind::Ip, subject }
}

fn per_second(rps: u32, burst: u32) -> Policy {
    Policy::per_second(Rate { rps, burst })
}

/// How many checks at one instant pass before the first refusal.
fn allowed_at(limiter: &Limiter, k: Key<'_>, policy: Policy, now: u64) -> usize {
    (0..10_000).take_while(|_| limiter.check(k, policy, 1, now).outcome == Outcome::Allowed).count()
}

#[test]
fn a_burst_passes_then_the_next_request_waits_one_interval() {
    let l = Limiter::with_slots(1024);
    let k = key(Subject::Ip(ip("192.0.2.1")));
    let p = per_second(2, 5);
    assert_eq!(allowed_at(&l, k, p, 10 * SEC), 5);
    // Five taken at once: the next fits half a second later (2 rps).
    assert_eq!(l.check(k, p, 1, 10 * SEC).outcome, Outcome::Limited { retry_after_us: SEC / 2 });
    assert_eq!(l.check(k, p, 1, 10 * SEC + SEC / 2 - 1).outcome, Outcome::Limited { retry_after_us: 1 });
    assert_eq!(l.check(k, p, 1, 10 * SEC + SEC / 2).outcome, Outcome::Allowed);
}

#[test]
fn an_idle_key_recovers_its_whole_burst() {
    let l = Limiter::with_slots(1024);
    let k = key(Subject::Ip(ip("192.0.2.1")));
    let p = per_second(10, 20);
    assert_eq!(allowed_at(&l, k, p, 0), 20);
    assert_eq!(allowed_at(&l, k, p, SEC), 10, "one second refills rps tokens");
    assert_eq!(allowed_at(&l, k, p, 60 * SEC), 20, "never more than the burst");
}

#[test]
fn a_steady_client_at_the_rate_is_never_refused() {
    let l = Limiter::with_slots(1024);
    let k = key(Subject::Ip(ip("192.0.2.1")));
    let p = per_second(100, 1);
    for i in 0..10_000 {
        assert_eq!(l.check(k, p, 1, i * SEC / 100).outcome, Outcome::Allowed, "request {i}");
    }
}

#[test]
fn retry_after_rounds_up_to_whole_seconds() {
    let limited = |us| Outcome::Limited { retry_after_us: us }.into_result();
    assert_eq!(limited(1), Err(EdgeError::RateLimited { retry_after_secs: 1 }));
    assert_eq!(limited(SEC), Err(EdgeError::RateLimited { retry_after_secs: 1 }));
    assert_eq!(limited(SEC + 1), Err(EdgeError::RateLimited { retry_after_secs: 2 }));
    assert_eq!(Outcome::Allowed.into_result(), Ok(()));
}

#[test]
fn keys_differ_by_tenant_kind_and_subject() {
    let l = Limiter::with_slots(1024);
    let p = per_second(1, 1);
    let base = key(Subject::Ip(ip("192.0.2.1")));
    assert_eq!(allowed_at(&l, base, p, 0), 1);
    let others = [
        Key { tenant: "tn_b", ..base },
        Key { kind: KeyKind::Token, ..base },
        key(Subject::Ip(ip("192.0.2.2"))),
        key(Subject::Credential("192.0.2.1")),
        key(Subject::Ip(None)),
    ];
    for other in others {
        assert_eq!(allowed_at(&l, other, p, 0), 1, "{other:?} has its own budget");
    }
}

#[test]
fn ipv6_clients_share_a_budget_per_64_and_mapped_ipv4_is_ipv4() {
    let l = Limiter::with_slots(1024);
    let p = per_second(1, 2);
    assert_eq!(l.check(key(Subject::Ip(ip("2001:db8:1:2::1"))), p, 1, 0).outcome, Outcome::Allowed);
    assert_eq!(l.check(key(Subject::Ip(ip("2001:db8:1:2:ffff::9"))), p, 1, 0).outcome, Outcome::Allowed);
    assert_ne!(l.check(key(Subject::Ip(ip("2001:db8:1:2::7"))), p, 1, 0).outcome, Outcome::Allowed);
    assert_eq!(allowed_at(&l, key(Subject::Ip(ip("2001:db8:1:3::1"))), p, 0), 2, "another /64");

    assert_eq!(allowed_at(&l, key(Subject::Ip(ip("198.51.100.4"))), p, 0), 2);
    assert_eq!(allowed_at(&l, key(Subject::Ip(ip("::ffff:198.51.100.4"))), p, 0), 0);
}

#[test]
fn a_new_policy_applies_to_existing_state_at_once() {
    let l = Limiter::with_slots(1024);
    let k = key(Subject::Ip(ip("192.0.2.1")));
    assert_eq!(allowed_at(&l, k, per_second(100, 400), 0), 400);
    // Lowered: the key is far over the new budget and must wait for it.
    assert!(matches!(l.check(k, per_second(1, 1), 1, 0).outcome, Outcome::Limited { .. }));
    // Raised: the same state is now well within budget.
    assert_eq!(l.check(k, per_second(1000, 10_000), 1, 0).outcome, Outcome::Allowed);
}

#[test]
fn failures_lock_an_ip_out_for_one_interval_per_failure_past_the_budget() {
    let l = Limiter::with_slots(1024);
    let k = Key { tenant: "tn_a", kind: KeyKind::AuthFailures, subject: Subject::Ip(ip("192.0.2.1")) };
    let p = Policy::per_minute(PerMinute { per_minute: 3 });
    for _ in 0..2 {
        l.consume(k, p, 1, 0);
        assert_eq!(l.locked_out(k, p, 0), Outcome::Allowed);
    }
    l.consume(k, p, 1, 0);
    // 3 a minute: one more fits 20 s later.
    assert_eq!(l.locked_out(k, p, 0), Outcome::Limited { retry_after_us: 20 * SEC });
    assert_eq!(l.locked_out(k, p, 20 * SEC), Outcome::Allowed);
    let other = Key { subject: Subject::Ip(ip("192.0.2.2")), ..k };
    assert_eq!(l.locked_out(other, p, 0), Outcome::Allowed, "another IP is not locked out");
    // Eight guesses in one request cost eight.
    l.consume(other, p, 8, 0);
    assert_eq!(l.locked_out(other, p, 0), Outcome::Limited { retry_after_us: 6 * 20 * SEC });
}

#[test]
fn looking_at_a_lock_out_takes_nothing() {
    let l = Limiter::with_slots(1024);
    let k = Key { tenant: "tn_a", kind: KeyKind::AuthFailures, subject: Subject::Ip(ip("192.0.2.1")) };
    let p = Policy::per_minute(PerMinute { per_minute: 1 });
    for _ in 0..100 {
        assert_eq!(l.locked_out(k, p, 0), Outcome::Allowed);
    }
}

#[test]
fn the_observed_rate_counts_requests_in_the_last_second() {
    let l = Limiter::with_slots(1024);
    let k = key(Subject::Ip(ip("192.0.2.1")));
    let p = per_second(1000, 1000);
    let mut last = 0.0;
    // 10 requests a second for three seconds, evenly spaced.
    for i in 0..30 {
        last = l.check(k, p, 1, 5 * SEC + i * SEC / 10).observed_rps;
    }
    assert!((9.0..=12.0).contains(&last), "{last}");
    // After a long pause the key starts again from one.
    assert_eq!(l.check(k, p, 1, 100 * SEC).observed_rps, 1.0);
    let refused = l.check(k, per_second(1, 1), 1, 100 * SEC);
    assert!(matches!(refused.outcome, Outcome::Limited { .. }));
    assert_eq!(refused.observed_rps, 2.0, "refused requests are part of the offered rate");
}

#[test]
fn memory_is_fixed_at_construction() {
    let l = Limiter::with_slots(1000);
    assert_eq!(l.memory_bytes(), 1024 * 16, "rounded up to a power of two, 16 bytes a slot");
    assert_eq!(std::mem::size_of::<Bucket>(), 64, "a bucket is one cache line");
    assert_eq!(Limiter::new().memory_bytes(), 16 << 20);
}

#[test]
fn a_flood_of_distinct_keys_never_frees_a_limited_key() {
    // A small table and far more keys than slots, all arriving at the same instant (so every one of them
    // is still "active"): the limited key keeps its state or shares one at least as strict.
    let l = Limiter::with_slots(256);
    let p = per_second(1, 3);
    let victim = key(Subject::Ip(ip("192.0.2.1")));
    assert_eq!(allowed_at(&l, victim, p, 0), 3);
    for i in 0..200_000u32 {
        let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
        l.check(key(Subject::Ip(Some(ip))), p, 1, 0);
    }
    assert!(matches!(l.check(victim, p, 1, 0).outcome, Outcome::Limited { .. }));
    assert_eq!(l.memory_bytes(), 256 * 16);
}

#[test]
fn clients_gone_quiet_leave_no_trace_for_new_ones() {
    // Far more clients than slots, each spending its whole burst and leaving.
    let l = Limiter::with_slots(64);
    let p = per_second(10, 5);
    for i in 0..10_000u32 {
        let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
        assert_eq!(allowed_at(&l, key(Subject::Ip(Some(ip))), p, u64::from(i) * SEC), 5, "client {i}");
    }
    assert_eq!(allowed_at(&l, key(Subject::Ip(ip("192.0.2.1"))), p, 20_000 * SEC), 5);
}

#[test]
fn concurrent_checks_of_one_key_never_exceed_its_burst() {
    let l = Limiter::with_slots(1024);
    let k = key(Subject::Ip(ip("192.0.2.1")));
    let p = per_second(1, 1000);
    let allowed: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4).map(|_| s.spawn(|| allowed_at(&l, k, p, 7 * SEC))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(allowed, 1000);
}
