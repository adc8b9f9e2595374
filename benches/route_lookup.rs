//! Host → route lookup with 1M sandboxes and 100k previews in the snapshot (issue: core).
//! Also prints the snapshot's resident memory per route.

use std::hint::black_box;

/// The allocator the edge runs on: where records land in memory is part of a lookup's cost.
#[path = "../src/alloc.rs"]
#[allow(unused_imports)] // its unit tests' imports: the tests themselves are not built into a bench
mod alloc;
#[global_allocator]
static GLOBAL: alloc::Allocator = alloc::Allocator;

use criterion::{criterion_group, criterion_main, Criterion};
use portico_edge::route::resolve;
use portico_edge::state::Snapshot;
use portico_wire::{self as wire, Preview, Sandbox, SandboxState, Settings, Tenant, Visibility, WakePolicy};

const SANDBOXES: usize = 1_000_000;
const PREVIEWS: usize = 100_000;

fn id(prefix: char, i: usize) -> String {
    format!("{prefix}{i:07}")
}

fn wire_snapshot() -> wire::Snapshot {
    let tenants: Vec<Tenant> = (0..100)
        .map(|t| Tenant {
            id: format!("tn_{t}"),
            branding: None,
            frame_ancestors: None,
            rate_limits: Default::default(),
            preview_domain: None,
            upstream_cidrs: None,
        })
        .collect();
    let sandboxes = (0..SANDBOXES)
        .map(|i| Sandbox {
            id: id('s', i).into(),
            tenant_id: format!("tn_{}", i % 100).into(),
            address: format!("10.{}.{}.{}", i >> 16 & 255, i >> 8 & 255, i & 255).into(),
            state: SandboxState::Running,
            default_visibility: Visibility::Private,
            wake_policy: WakePolicy::OnRequest,
            preview_auth_sha256: Some(wire::tokens::Sha256::of(&i.to_string())),
            allow_preflight: false,
        })
        .collect();
    let previews = (0..PREVIEWS)
        .map(|i| Preview {
            id: format!("pv_{i}").into(),
            slug: id('p', i).into(),
            tenant_id: format!("tn_{}", i % 100).into(),
            sandbox_id: id('s', i * 7 % SANDBOXES).into(),
            port: 3000,
            visibility: Visibility::Public,
        })
        .collect();
    wire::Snapshot {
        version: 1,
        settings: Settings {
            host_templates: wire::DEFAULT_HOST_TEMPLATES.iter().map(|s| s.to_string()).collect(),
            default_frame_ancestors: vec![],
            default_rate_limits: Default::default(),
            upstream_allow: Vec::new(),
        },
        tenants,
        sandboxes,
        previews,
        verify_keys: vec![],
        revocations: vec![],
        shares: vec![],
        deployments: vec![],
        certificates: vec![],
        acme_challenges: vec![],
    }
}

fn rss_bytes() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<usize>().ok()))
        .map_or(0, |pages| pages * 4096)
}

fn lookups(c: &mut Criterion) {
    let wire = wire_snapshot();
    let before = rss_bytes();
    let snap = Snapshot::from_wire(wire).expect("valid");
    let after = rss_bytes();
    let routes = SANDBOXES + PREVIEWS;
    println!(
        "snapshot: {routes} routes, resident memory after compiling (wire form dropped): {:.1} MiB, {:.0} bytes/route",
        after.saturating_sub(before) as f64 / 1048576.0,
        after.saturating_sub(before) as f64 / routes as f64
    );

    let hosts: Vec<String> =
        (0..1024).map(|i| format!("3000-{}.sandbox.localhost:8080", id('s', i * 977 % SANDBOXES))).collect();
    let mut i = 0;
    c.bench_function("route sandbox port host (1M sandboxes)", |b| {
        b.iter(|| {
            i = (i + 1) % hosts.len();
            black_box(resolve(&snap, black_box(&hosts[i])).is_ok())
        })
    });
    let slugs: Vec<String> =
        (0..1024).map(|i| format!("{}.preview.localhost", id('p', i * 97 % PREVIEWS))).collect();
    c.bench_function("route preview slug host (100k previews)", |b| {
        b.iter(|| {
            i = (i + 1) % slugs.len();
            black_box(resolve(&snap, black_box(&slugs[i])).is_ok())
        })
    });
    // What the copy-on-write shards cost a lookup: the same records, found by the same ids, in one flat
    // table with the same hash, side by side.
    let ids: Vec<String> = (0..1024).map(|i| id('s', i * 977 % SANDBOXES)).collect();
    c.bench_function("sandbox index get (1M, copy-on-write shards)", |b| {
        b.iter(|| {
            i = (i + 1) % ids.len();
            black_box(snap.sandboxes.get(black_box(&ids[i])));
        })
    });
    let flat: std::collections::HashMap<&str, _, foldhash::quality::RandomState> =
        snap.sandboxes.values().map(|s| (s.id.as_str(), s.clone())).collect();
    c.bench_function("sandbox index get (1M, one flat table: baseline)", |b| {
        b.iter(|| {
            i = (i + 1) % ids.len();
            black_box(flat.get(black_box(ids[i].as_str())));
        })
    });
    drop(flat);
    c.bench_function("route unknown host", |b| {
        b.iter(|| black_box(resolve(&snap, black_box("www.example.com")).is_err()))
    });
}

criterion_group!(benches, lookups);
criterion_main!(benches);
