//! The rate limiter's check with a million distinct client IPs in play (issue 6), and its memory: resident
//! memory of the table, then again after one and after ten million distinct keys went through it.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{criterion_group, criterion_main, Criterion};
use portico_edge::ratelimit::{Key, KeyKind, Limiter, Policy, Subject};
use portico_wire::RateLimits;

const KEYS: u32 = 1_000_000;

fn rss_bytes() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<usize>().ok()))
        .map_or(0, |pages| pages * 4096)
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / 1048576.0
}

/// The i-th distinct client, spread over the IPv4 space (a multiplicative hash of i).
fn client(i: u32) -> Key<'static> {
    let ip = IpAddr::V4(Ipv4Addr::from(i.wrapping_mul(2_654_435_761)));
    Key { tenant: "tn_bench", kind: KeyKind::Ip, subject: Subject::Ip(Some(ip)) }
}

fn checks(c: &mut Criterion) {
    let policy = Policy::per_second(RateLimits::default().public_per_ip);
    let before = rss_bytes();
    let limiter = Limiter::new();
    let table = rss_bytes();
    for i in 0..KEYS {
        black_box(limiter.check(client(i), policy, 1, limiter.now_us()));
    }
    let million = rss_bytes();
    for i in KEYS..10 * KEYS {
        black_box(limiter.check(client(i), policy, 1, limiter.now_us()));
    }
    let ten_million = rss_bytes();
    println!(
        "limiter: table {:.1} MiB ({} bytes allocated); resident growth: table {:.1} MiB, \
         then +{:.1} MiB after 1M distinct keys, +{:.1} MiB after 10M",
        mib(limiter.memory_bytes()),
        limiter.memory_bytes(),
        mib(table.saturating_sub(before)),
        mib(million.saturating_sub(table)),
        mib(ten_million.saturating_sub(million)),
    );

    let mut g = c.benchmark_group("ratelimit_check");
    let mut i = 0u32;
    g.bench_function("1M keys, a different one each check", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(limiter.check(client(i), policy, 1, limiter.now_us()))
        })
    });
    g.bench_function("one hot key", |b| {
        b.iter(|| black_box(limiter.check(client(7), policy, 1, limiter.now_us())))
    });
    let mut fresh = 10 * KEYS;
    g.bench_function("a never-seen key each check", |b| {
        b.iter(|| {
            fresh = fresh.wrapping_add(1);
            black_box(limiter.check(client(fresh), policy, 1, limiter.now_us()))
        })
    });
    g.finish();
    println!(
        "limiter: resident growth over the whole run: +{:.1} MiB",
        mib(rss_bytes().saturating_sub(table))
    );
}

criterion_group!(benches, checks);
criterion_main!(benches);
