use super::*;
use portico_wire::{Change, Preview, Sandbox, SandboxState, Settings, Tenant, Visibility, WakePolicy};

fn sandbox(id: &str, address: &str) -> Sandbox {
    Sandbox {
        id: id.into(),
        tenant_id: "tn_a".into(),
        address: address.into(),
        state: SandboxState::Running,
        default_visibility: Visibility::Public,
        wake_policy: WakePolicy::OnRequest,
        preview_auth_sha256: None,
        allow_preflight: false,
    }
}

fn snapshot(version: u64) -> Snapshot {
    let wire = wire::Snapshot {
        version,
        settings: Settings {
            host_templates: portico_wire::DEFAULT_HOST_TEMPLATES.iter().map(|s| s.to_string()).collect(),
            default_frame_ancestors: vec!["'self'".into()],
            default_rate_limits: Default::default(),
            upstream_allow: Vec::new(),
        },
        tenants: vec![Tenant {
            id: "tn_a".into(),
            branding: None,
            frame_ancestors: None,
            rate_limits: Default::default(),
            preview_domain: None,
            upstream_cidrs: None,
        }],
        sandboxes: (0..50).map(|i| sandbox(&format!("sb{i:04}"), "10.0.0.1")).collect(),
        previews: vec![Preview {
            id: "pv_1".into(),
            slug: "slug0001".into(),
            tenant_id: "tn_a".into(),
            sandbox_id: "sb0001".into(),
            port: 3000,
            visibility: Visibility::Public,
        }],
        verify_keys: vec![],
        revocations: vec![],
        shares: vec![],
        deployments: vec![],
        certificates: vec![],
        acme_challenges: vec![],
    };
    Snapshot::from_wire(wire).expect("compiles")
}

/// `since → since + 1`: sandbox `sb0000`'s address becomes `10.0.<since>.1`.
fn record(since: u64) -> Record {
    let sandbox = sandbox("sb0000", &format!("10.0.{since}.1"));
    Record { since, version: since + 1, changes: vec![Change::UpsertSandbox { sandbox }] }
}

/// The state as comparable data: the wire form with its lists in a fixed order.
fn canonical(s: &Snapshot) -> String {
    let mut w = s.to_wire();
    w.sandboxes.sort_by(|a, b| a.id.cmp(&b.id));
    w.previews.sort_by(|a, b| a.id.cmp(&b.id));
    w.tenants.sort_by(|a, b| a.id.cmp(&b.id));
    serde_json::to_string(&w).expect("serializes")
}

fn address(s: &Snapshot) -> &str {
    &s.sandboxes["sb0000"].address
}

/// A dir holding a base at version 3 and the log 3 → 4 → 5 → 6.
fn saved_dir() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = Store::new(dir.path().to_path_buf(), Disk::default());
    store.write_base(&snapshot(3)).expect("base");
    assert!(store.continues(3));
    store.append(&[record(3), record(4)]).expect("append");
    store.append(&[record(5)]).expect("append");
    (dir, store)
}

#[test]
fn the_base_and_the_log_replay_to_the_last_version() {
    let (dir, _) = saved_dir();
    let loaded = load(dir.path()).expect("a saved state");
    assert_eq!(loaded.snapshot.version, 6);
    assert_eq!(address(&loaded.snapshot), "10.0.5.1");
    assert!(loaded.disk.log_clean);
}

#[test]
fn a_truncated_log_tail_is_ignored() {
    let (dir, _) = saved_dir();
    let log = dir.path().join(LOG_FILE);
    let len = std::fs::metadata(&log).expect("log").len();
    // Torn in the middle of the last record (5 → 6).
    OpenOptions::new().write(true).open(&log).and_then(|f| f.set_len(len - 7)).expect("truncate");
    let loaded = load(dir.path()).expect("a saved state");
    assert_eq!(loaded.snapshot.version, 5);
    assert_eq!(address(&loaded.snapshot), "10.0.4.1");
    assert!(!loaded.disk.log_clean);
    // The writer does not append after the torn tail: its next write is a new base.
    let mut store = Store::resume(dir.path().to_path_buf(), 5);
    assert!(!store.continues(5));
}

#[test]
fn a_corrupt_record_ends_the_log_at_the_valid_prefix() {
    let (dir, _) = saved_dir();
    let log = dir.path().join(LOG_FILE);
    let mut bytes = std::fs::read(&log).expect("log");
    // Flip one byte inside the third line (4 → 5): its checksum fails; 5 → 6 after it is a gap.
    let third = bytes.iter().enumerate().filter(|(_, b)| **b == b'\n').nth(1).map(|(i, _)| i).expect("lines");
    bytes[third + 30] ^= 0x20;
    std::fs::write(&log, &bytes).expect("write");
    let loaded = load(dir.path()).expect("a saved state");
    assert_eq!(loaded.snapshot.version, 4);
}

#[test]
fn a_corrupt_base_falls_back_to_control() {
    let (dir, _) = saved_dir();
    std::fs::write(dir.path().join(BASE_FILE), b"{\"version\": 3, \"settings\": garbage").expect("write");
    assert!(load(dir.path()).is_none());
    std::fs::write(dir.path().join(BASE_FILE), [0xff, 0x00, 0x13]).expect("write");
    assert!(load(dir.path()).is_none());
    // The writer of an edge that started from control writes a new base first.
    let mut store = Store::resume(dir.path().to_path_buf(), 0);
    assert!(!store.continues(6));
    store.write_base(&snapshot(9)).expect("base");
    assert_eq!(load(dir.path()).expect("a saved state").snapshot.version, 9);
}

#[test]
fn a_json_base_of_an_older_edge_loads_and_the_base_written_last_wins() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = Store::new(dir.path().to_path_buf(), Disk::default());
    store.write_base(&snapshot(3)).expect("base");
    assert!(dir.path().join(BASE_FILE).exists());
    // An older edge sharing the dir writes its base as JSON, later.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let json = serde_json::to_vec(&snapshot(4).to_wire()).expect("json");
    write_atomically(dir.path(), JSON_BASE_FILE, |w| {
        w.write_all(&json).expect("write");
        Ok(())
    })
    .expect("json base");
    assert_eq!(load(dir.path()).expect("a saved state").snapshot.version, 4);
    // This edge's next base replaces both.
    store.write_base(&snapshot(5)).expect("base");
    assert!(!dir.path().join(JSON_BASE_FILE).exists());
    assert_eq!(load(dir.path()).expect("a saved state").snapshot.version, 5);
}

#[test]
fn a_packed_base_of_another_format_falls_back_to_control() {
    let (dir, _) = saved_dir();
    let path = dir.path().join(BASE_FILE);
    let mut bytes = std::fs::read(&path).expect("base");
    assert!(bytes.starts_with(&packed::MAGIC));
    bytes[packed::MAGIC.len()] = bytes[packed::MAGIC.len()].wrapping_add(1);
    std::fs::write(&path, bytes).expect("write");
    assert!(load(dir.path()).is_none());
}

#[test]
fn an_empty_dir_holds_no_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert!(load(dir.path()).is_none());
}

#[test]
fn compaction_keeps_the_same_state() {
    let (dir, mut store) = saved_dir();
    let before = load(dir.path()).expect("a saved state").snapshot;
    store.write_base(&before).expect("compaction");
    assert_eq!(
        std::fs::read(dir.path().join(LOG_FILE)).expect("log").iter().filter(|b| **b == b'\n').count(),
        1
    );
    let after = load(dir.path()).expect("a saved state").snapshot;
    assert_eq!(after.version, 6);
    assert_eq!(canonical(&before), canonical(&after));
    // And the log goes on after it.
    assert!(store.continues(6));
    store.append(&[record(6)]).expect("append");
    assert_eq!(address(&load(dir.path()).expect("a saved state").snapshot), "10.0.6.1");
}

#[test]
fn records_the_base_already_holds_are_skipped() {
    let (dir, mut store) = saved_dir();
    // A crash between the new base and the new log: the old log (3 → 6) stays next to a base at 6.
    let log = std::fs::read(dir.path().join(LOG_FILE)).expect("log");
    let now = load(dir.path()).expect("a saved state").snapshot;
    store.write_base(&now).expect("base");
    std::fs::write(dir.path().join(LOG_FILE), log).expect("old log back");
    let loaded = load(dir.path()).expect("a saved state");
    assert_eq!((loaded.snapshot.version, address(&loaded.snapshot)), (6, "10.0.5.1"));
}

#[test]
fn a_log_replaced_by_another_edge_is_followed() {
    let (dir, _) = saved_dir();
    let mut blue = Store::resume(dir.path().to_path_buf(), 6);
    let mut green = Store::resume(dir.path().to_path_buf(), 6);
    assert!(blue.continues(6) && green.continues(6));
    // Green compacts at 7; blue, which had the old log open, appends after it, not into the old file.
    let at7 = snapshot(6).apply(7, record(6).changes).expect("applies");
    green.write_base(&at7).expect("base");
    assert_eq!(blue.disk_version(), Some(7));
    assert!(blue.continues(7));
    blue.append(&[record(7)]).expect("append");
    let loaded = load(dir.path()).expect("a saved state");
    assert_eq!((loaded.snapshot.version, address(&loaded.snapshot)), (8, "10.0.7.1"));
}

#[test]
fn files_are_readable_by_the_owner_only() {
    let (dir, _) = saved_dir();
    for name in [BASE_FILE, LOG_FILE] {
        let mode = std::fs::metadata(dir.path().join(name)).expect("file").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }
}

#[test]
fn two_writers_never_clobber_each_others_temp_file() {
    assert_ne!(temp_name(BASE_FILE), temp_name(BASE_FILE));
    let dir = tempfile::tempdir().expect("tempdir");
    let barrier = std::sync::Barrier::new(2);
    std::thread::scope(|s| {
        for writer in [b'a', b'b'] {
            let (dir, barrier) = (dir.path(), &barrier);
            s.spawn(move || {
                for _ in 0..50 {
                    barrier.wait();
                    // Each writer's whole content goes through its own temp file: 64 KiB of one letter.
                    write_atomically(dir, BASE_FILE, |w| {
                        for _ in 0..64 {
                            w.write_all(&[writer; 1024])
                                .map_err(|source| StoreError::Io { dir: dir.into(), source })?;
                        }
                        Ok(())
                    })
                    .expect("written");
                    let now = std::fs::read(dir.join(BASE_FILE)).expect("read");
                    assert_eq!(now.len(), 65536);
                    assert!(now.iter().all(|b| *b == now[0]), "a file mixing two writers");
                }
            });
        }
    });
    let left: Vec<_> =
        std::fs::read_dir(dir.path()).expect("dir").filter_map(Result::ok).map(|e| e.file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from(BASE_FILE)], "no temp file left behind");
}
