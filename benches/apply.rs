//! The routing state at scale (issue 17): 1M sandboxes, 100k previews, 100k shares.
//! - memory the compiled snapshot holds, per sandbox (live heap bytes under the production allocator,
//!   mimalloc, counted by a wrapping allocator; and resident memory growth);
//! - one change applied and swapped in, as the feed does it (the previous snapshot dropped);
//! - route lookups against that snapshot;
//! - the state dir: a whole base written (what the edge rewrote about once a second while changes flowed,
//!   before issue 17) against one change appended to its log.
//!
//! `cargo bench --bench apply`. Only the compiled snapshot is counted: the wire form is dropped first.

use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use portico_edge::route::resolve;
use portico_edge::state::store::{Disk, Record, Sent, Store};
use portico_edge::state::{EdgeState, Snapshot};
use portico_wire::{
    self as wire, Change, Preview, Sandbox, SandboxState, Settings, Share, Tenant, Visibility, WakePolicy,
};

const SANDBOXES: usize = 1_000_000;
const PREVIEWS: usize = 100_000;
const SHARES: usize = 100_000;

/// mimalloc (what `portico` runs with), counting live bytes.
struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);
static INNER: mimalloc::MiMalloc = mimalloc::MiMalloc;

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { INNER.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { INNER.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        unsafe { INNER.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn id(prefix: char, i: usize) -> String {
    format!("{prefix}{i:07}")
}

fn sandbox(i: usize, address: String) -> Sandbox {
    Sandbox {
        id: id('s', i).into(),
        tenant_id: format!("tn_{}", i % 100).into(),
        address: address.into(),
        state: SandboxState::Running,
        default_visibility: Visibility::Public,
        wake_policy: WakePolicy::OnRequest,
        preview_auth_sha256: Some(wire::tokens::Sha256::of(&i.to_string())),
        allow_preflight: false,
    }
}

fn address(i: usize) -> String {
    format!("10.{}.{}.{}", i >> 16 & 255, i >> 8 & 255, i & 255)
}

fn wire_snapshot() -> wire::Snapshot {
    let tenants = (0..100)
        .map(|t| Tenant {
            id: format!("tn_{t}"),
            branding: None,
            frame_ancestors: None,
            rate_limits: Default::default(),
            preview_domain: None,
            upstream_cidrs: None,
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
    let shares = (0..SHARES)
        .map(|i| Share {
            id: format!("sh_{i}"),
            tenant_id: format!("tn_{}", i % 100),
            preview_id: format!("pv_{i}"),
            sha256: format!("{:064x}", i + (1 << 40)),
            expires_at: None,
            password: false,
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
        sandboxes: (0..SANDBOXES).map(|i| sandbox(i, address(i))).collect(),
        previews,
        verify_keys: vec![],
        revocations: vec![],
        shares,
        deployments: vec![],
        certificates: vec![],
        acme_challenges: vec![],
    }
}

/// What an edge's cold start from control costs, part by part, on one core: the first snapshot as control
/// sends it (JSON in gzip, level 1 as control compresses it), inflated, parsed and compiled.
fn feed_parts() {
    use std::io::{Read, Write};
    let timed = |what: &str, started: std::time::Instant| {
        println!("cold start part: {what} {:.2} s", started.elapsed().as_secs_f64())
    };
    let message = wire::FeedMessage::Snapshot { snapshot: wire_snapshot() };
    let started = std::time::Instant::now();
    let json = serde_json::to_vec(&message).expect("serialises");
    timed("control serialises the message to JSON", started);
    let started = std::time::Instant::now();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(1));
    gz.write_all(&json).expect("compresses");
    let gzip = gz.finish().expect("compresses");
    timed("control compresses it", started);
    println!("cold start part: {:.1} MiB of JSON, {:.1} MiB gzipped", mib(&json), mib(&gzip));
    drop((json, message));
    let started = std::time::Instant::now();
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(gzip.as_slice()).read_to_end(&mut json).expect("inflates");
    timed("edge inflates it", started);
    let started = std::time::Instant::now();
    let message: wire::FeedMessage = serde_json::from_slice(&json).expect("parses");
    timed("edge parses the JSON as a FeedMessage", started);
    drop(message);
    // What the edge does: the snapshot's text found, then parsed from there (and kept for the state dir).
    let started = std::time::Instant::now();
    let Ok(wire::FeedAnswer::Snapshot(raw)) = serde_json::from_slice(&json) else { return };
    timed("edge finds the snapshot's text (FeedAnswer)", started);
    let started = std::time::Instant::now();
    let snapshot: wire::Snapshot = serde_json::from_str(raw.get()).expect("parses");
    timed("edge parses the snapshot from its text", started);
    let started = std::time::Instant::now();
    let snap = Snapshot::from_wire(snapshot).expect("valid");
    timed("edge compiles the snapshot", started);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = Store::new(dir.path().to_path_buf(), Disk::default());
    let text = Sent::Json(raw.get().as_bytes().to_vec().into());
    let started = std::time::Instant::now();
    store.write_base_as_sent(snap.version, &text).expect("base written");
    timed("edge writes the text as its state dir's base (with fsync)", started);
    let started = std::time::Instant::now();
    store.write_base(&snap).expect("base written");
    timed("(compaction: the compiled snapshot packed as the base, with fsync)", started);
    drop(json);
    let started = std::time::Instant::now();
    drop(snap);
    timed("(dropping it)", started);
    packed_parts();
}

/// The same cold start with the snapshot packed (`wire::packed`) and zstd-compressed, as an edge that asks
/// for it gets it: control packs into a zstd stream; the edge decompresses and decodes it as a stream,
/// straight into its maps, and writes the compressed answer as its base.
fn packed_parts() {
    let timed = |what: &str, started: std::time::Instant| {
        println!("packed cold start part: {what} {:.2} s", started.elapsed().as_secs_f64())
    };
    let wire = wire_snapshot();
    let mut raw = Vec::new();
    wire::packed::encode(&wire, &mut raw).expect("encodes");
    let started = std::time::Instant::now();
    let zstd = zstd::stream::write::Encoder::new(Vec::new(), 3).expect("encoder");
    let mut buffered = std::io::BufWriter::with_capacity(1 << 16, zstd);
    wire::packed::encode(&wire, &mut buffered).expect("encodes");
    let compressed =
        buffered.into_inner().map_err(|e| e.into_error()).expect("flushes").finish().expect("compresses");
    timed("control packs it into a zstd stream", started);
    println!(
        "packed cold start part: {:.1} MiB packed, {:.1} MiB zstd-compressed",
        mib(&raw),
        mib(&compressed)
    );
    drop((wire, raw));
    let started = std::time::Instant::now();
    let snap = Snapshot::from_packed(&compressed).expect("valid");
    timed("edge decompresses, decodes and compiles it, as one stream", started);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = Store::new(dir.path().to_path_buf(), Disk::default());
    let version = snap.version;
    let started = std::time::Instant::now();
    store.write_base_as_sent(version, &Sent::Packed(compressed.into())).expect("base written");
    timed("edge writes it as its state dir's base (with fsync)", started);
    drop(snap);
}

fn mib(bytes: &[u8]) -> f64 {
    bytes.len() as f64 / 1048576.0
}

fn rss_bytes() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<usize>().ok()))
        .map_or(0, |pages| pages * 4096)
}

fn scale(c: &mut Criterion) {
    feed_parts();
    let (live0, rss0) = (LIVE.load(Ordering::Relaxed), rss_bytes());
    let (state, compiled_in) = {
        let wire = wire_snapshot();
        let started = std::time::Instant::now();
        let snap = Snapshot::from_wire(wire).expect("valid");
        (EdgeState::new(snap), started.elapsed())
    };
    let (live1, rss1) = (LIVE.load(Ordering::Relaxed), rss_bytes());
    let per = |bytes: f64| bytes / SANDBOXES as f64;
    println!(
        "snapshot of {SANDBOXES} sandboxes, {PREVIEWS} previews, {SHARES} shares: live heap {:.1} MiB = {:.0} bytes/sandbox; \
         resident growth {:.1} MiB = {:.0} bytes/sandbox (resident includes the freed wire form's pages)",
        (live1 - live0) as f64 / 1048576.0,
        per((live1 - live0) as f64),
        rss1.saturating_sub(rss0) as f64 / 1048576.0,
        per(rss1.saturating_sub(rss0) as f64),
    );

    println!("snapshot compiled from its wire form in {:.2} s", compiled_in.as_secs_f64());

    let mut g = c.benchmark_group("apply");
    g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    let mut n = 0usize;
    g.bench_function("one upsert_sandbox applied and swapped in (1M sandboxes)", |b| {
        b.iter(|| {
            n += 1;
            let i = n * 7919 % SANDBOXES;
            let change =
                Change::UpsertSandbox { sandbox: sandbox(i, format!("10.200.{}.{}", n >> 8 & 255, n & 255)) };
            let snap = state.load();
            state.store(snap.apply(snap.version + 1, vec![change]).expect("applies"));
        })
    });
    g.bench_function("one delete+upsert preview applied and swapped in", |b| {
        b.iter(|| {
            n += 1;
            let i = n * 31 % PREVIEWS;
            let snap = state.load();
            let preview = snap.preview_by_id(&format!("pv_{i}")).map(|p| (**p).clone());
            if let Some(p) = preview {
                state.store(
                    snap.apply(snap.version + 1, vec![Change::UpsertPreview { preview: p }])
                        .expect("applies"),
                );
            }
        })
    });
    g.finish();
    let (live2, rss2) = (LIVE.load(Ordering::Relaxed), rss_bytes());
    println!(
        "after the apply benches: live heap {:.0} bytes/sandbox, resident {:.0} bytes/sandbox over idle",
        per((live2 - live0) as f64),
        per(rss2.saturating_sub(rss0) as f64)
    );

    let snap = state.load();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = Store::new(dir.path().to_path_buf(), Disk::default());
    let started = std::time::Instant::now();
    store.write_base(&snap).expect("base written");
    println!(
        "state dir: whole base written in {:.2} s, {:.1} MiB (before issue 17: rewritten about once a second while changes flowed)",
        started.elapsed().as_secs_f64(),
        store.disk().base_len as f64 / 1048576.0
    );
    // What an edge starting from its state dir does before it serves: read, parse and compile the base.
    let started = std::time::Instant::now();
    let loaded = portico_edge::state::store::load(dir.path()).expect("the base just written loads");
    println!(
        "state dir: base read, parsed and compiled in {:.2} s ({} sandboxes)",
        started.elapsed().as_secs_f64(),
        loaded.snapshot.sandboxes.len()
    );
    drop(loaded);
    let mut version = snap.version;
    let mut g = c.benchmark_group("state dir");
    g.sample_size(20);
    g.bench_function("one upsert_sandbox appended to the log (with fsync)", |b| {
        b.iter(|| {
            version += 1;
            let sandbox = sandbox(version as usize % SANDBOXES, "10.201.0.1".into());
            let record =
                Record { since: version - 1, version, changes: vec![Change::UpsertSandbox { sandbox }] };
            store.append(&[record]).expect("appended");
        })
    });
    g.finish();
    println!("state dir: log after the appends {:.1} KiB", store.disk().log_len as f64 / 1024.0);

    let hosts: Vec<String> =
        (0..1024).map(|i| format!("3000-{}.sandbox.localhost:8080", id('s', i * 977 % SANDBOXES))).collect();
    let mut i = 0;
    c.bench_function("route sandbox port host (1M sandboxes, after applies)", |b| {
        b.iter(|| {
            i = (i + 1) % hosts.len();
            black_box(resolve(&snap, black_box(&hosts[i])).is_ok())
        })
    });
    let slugs: Vec<String> =
        (0..1024).map(|i| format!("{}.preview.localhost", id('p', i * 97 % PREVIEWS))).collect();
    c.bench_function("route preview slug host (100k previews, after applies)", |b| {
        b.iter(|| {
            i = (i + 1) % slugs.len();
            black_box(resolve(&snap, black_box(&slugs[i])).is_ok())
        })
    });
    let shares: Vec<String> = (0..1024).map(|i| format!("{:064x}", i * 89 % SHARES + (1 << 40))).collect();
    c.bench_function("share by token hash (100k shares)", |b| {
        b.iter(|| {
            i = (i + 1) % shares.len();
            black_box(snap.shares.get(black_box(shares[i].as_str())).is_some())
        })
    });
}

criterion_group!(benches, scale);
criterion_main!(benches);
