use super::*;
use portico_wire::tokens::Sha256;
use portico_wire::{Change, Preview, Sandbox, SandboxState, Settings, Tenant, Visibility, WakePolicy};

fn wire_snapshot() -> wire::Snapshot {
    wire::Snapshot {
        version: 3,
        settings: Settings {
            host_templates: portico_wire::DEFAULT_HOST_TEMPLATES.iter().map(|s| s.to_string()).collect(),
            default_frame_ancestors: vec!["'self'".into()],
            default_rate_limits: Default::default(),
            upstream_allow: Vec::new(),
        },
        tenants: vec![Tenant {
            id: "tn_a".into(),
            branding: None,
            frame_ancestors: Some(vec!["https://app.example.com".into()]),
            rate_limits: Default::default(),
            preview_domain: None,
            upstream_cidrs: None,
        }],
        sandboxes: vec![Sandbox {
            id: "abcd1234".into(),
            tenant_id: "tn_a".into(),
            address: "127.0.0.2".into(),
            state: SandboxState::Running,
            default_visibility: Visibility::Public,
            wake_policy: WakePolicy::OnRequest,
            preview_auth_sha256: None,
            allow_preflight: false,
        }],
        previews: vec![Preview {
            id: "pv_1".into(),
            slug: "slug0001".into(),
            tenant_id: "tn_a".into(),
            sandbox_id: "abcd1234".into(),
            port: 3000,
            visibility: Visibility::Public,
        }],
        verify_keys: vec![],
        revocations: vec![],
        shares: vec![],
        deployments: vec![],
        certificates: vec![],
        acme_challenges: vec![],
    }
}

#[test]
fn compiles_tenant_csp_from_own_sources_or_default() {
    let s = Snapshot::from_wire(wire_snapshot()).expect("compiles");
    assert_eq!(s.tenants["tn_a"].frame_ancestors(), "frame-ancestors https://app.example.com");
    assert_eq!(s.default_frame_ancestors, "frame-ancestors 'self'");
}

#[test]
fn applying_changes_leaves_the_old_snapshot_untouched() {
    let old = Snapshot::from_wire(wire_snapshot()).expect("compiles");
    let new = old
        .apply(
            4,
            vec![
                Change::DeletePreview { id: "pv_1".into() },
                Change::DeleteSandbox { id: "abcd1234".into() },
            ],
        )
        .expect("applies");
    assert_eq!(new.version, 4);
    assert!(new.previews.is_empty() && new.sandboxes.is_empty());
    assert_eq!(old.previews.len(), 1);
    assert_eq!(old.sandboxes.len(), 1);
}

#[test]
fn a_replaced_preview_slug_stops_resolving() {
    let s = Snapshot::from_wire(wire_snapshot()).expect("compiles");
    let mut p = s.previews.get("slug0001").expect("exists").preview.clone();
    p.slug = "slug0002".into();
    let s = s.apply(5, vec![Change::UpsertPreview { preview: p }]).expect("applies");
    assert!(!s.previews.contains_key("slug0001"));
    assert!(s.previews.contains_key("slug0002"));
}

#[test]
fn wire_round_trip_keeps_everything() {
    let w = wire_snapshot();
    let back = Snapshot::from_wire(w.clone()).expect("compiles").to_wire();
    assert_eq!(back, w);
}

#[test]
fn a_packed_snapshot_compiles_to_the_same_state_as_its_wire_form() {
    let w = wire_snapshot();
    let mut packed = Vec::new();
    wire::packed::encode(&w, &mut packed).expect("packs");
    assert_eq!(Snapshot::from_packed(&packed).expect("compiles").to_wire(), w);
    assert!(matches!(Snapshot::from_packed(&packed[..packed.len() - 1]), Err(StateError::Packed(_))));
    // zstd-compressed, as control sends it: decompressed as it is decoded.
    let compressed = zstd::bulk::compress(&packed, 3).expect("compresses");
    assert_eq!(Snapshot::from_packed(&compressed).expect("compiles").to_wire(), w);
    let cut = &compressed[..compressed.len() - 4];
    assert!(matches!(Snapshot::from_packed(cut), Err(StateError::Packed(_))));
}

#[test]
fn a_bad_template_from_control_is_an_error_not_a_panic() {
    let mut w = wire_snapshot();
    w.settings.host_templates = vec!["{nope}.x".into()];
    assert!(Snapshot::from_wire(w).is_err());
}

/// Control is upgraded before its edges: a field this edge does not know yet, at any level of a feed
/// answer, must not stop it taking the change.
#[test]
fn a_change_with_a_field_added_by_a_newer_control_still_applies() {
    let old = Snapshot::from_wire(wire_snapshot()).expect("compiles");
    let json = r#"{"type":"changes","version":4,"added_to_message":1,"changes":[
        {"op":"upsert_sandbox","added_to_change":true,"sandbox":{
            "id":"efgh5678","tenant_id":"tn_a","address":"127.0.0.3","state":"running",
            "default_visibility":"public","wake_policy":"on_request","added_to_sandbox":{"x":1}}}]}"#;
    let Ok(wire::FeedMessage::Changes { version, changes }) = serde_json::from_str::<wire::FeedMessage>(json)
    else {
        panic!("a feed answer with unknown fields must parse");
    };
    let new = old.apply(version, changes).expect("applies");
    assert_eq!(new.sandboxes["efgh5678"].address, "127.0.0.3");
    assert!(new.sandboxes.contains_key("abcd1234"));
}

#[test]
fn a_snapshot_with_fields_added_by_a_newer_control_still_compiles() {
    let mut value =
        serde_json::to_value(wire::FeedMessage::Snapshot { snapshot: wire_snapshot() }).expect("json");
    value["snapshot"]["added_to_snapshot"] = 1.into();
    value["snapshot"]["settings"]["added_to_settings"] = "x".into();
    value["snapshot"]["tenants"][0]["added_to_tenant"] = true.into();
    value["snapshot"]["previews"][0]["added_to_preview"] = 2.into();
    let Ok(wire::FeedMessage::Snapshot { snapshot }) = serde_json::from_value::<wire::FeedMessage>(value)
    else {
        panic!("a snapshot with unknown fields must parse");
    };
    let s = Snapshot::from_wire(snapshot).expect("compiles");
    assert!(s.previews.contains_key("slug0001"));
    assert!(s.sandboxes.contains_key("abcd1234"));
}

#[test]
fn a_snapshot_that_repeats_an_id_keeps_the_last_record_everywhere() {
    let mut w = wire_snapshot();
    let first = Sandbox { preview_auth_sha256: Some(Sha256([0xaa; 32])), ..w.sandboxes[0].clone() };
    let last = Sandbox {
        address: "127.0.0.3".into(),
        preview_auth_sha256: Some(Sha256([0xbb; 32])),
        ..first.clone()
    };
    w.sandboxes = vec![first, last];
    let moved = Preview { slug: "slug0002".into(), ..w.previews[0].clone() };
    w.previews.push(moved);
    let mut packed = Vec::new();
    wire::packed::encode(&w, &mut packed).expect("packs");
    let from_packed = Snapshot::from_packed(&packed).expect("compiles");
    let s = Snapshot::from_wire(w).expect("compiles");
    assert_eq!(from_packed.to_wire(), s.to_wire(), "either form, the same state");
    assert_eq!((s.sandboxes.len(), s.sandboxes["abcd1234"].address.as_str()), (1, "127.0.0.3"));
    // The replaced record's token no longer names the sandbox; the last one's does.
    assert!(!s.preview_auth.contains_key(&[0xaa; 32]));
    assert_eq!(s.preview_auth[&[0xbb; 32]].address, "127.0.0.3");
    assert_eq!(s.previews.len(), 1);
    assert!(s.previews.contains_key("slug0002") && !s.previews.contains_key("slug0001"));
    assert_eq!(s.preview_by_id("pv_1").map(|p| p.slug.as_str()), Some("slug0002"));
}

fn sandbox_of<'a>(s: &'a Snapshot, slug: &str) -> Option<&'a str> {
    s.previews.get(slug).and_then(|p| p.sandbox.as_ref()).map(|sb| sb.address.as_str())
}

/// A preview holds its sandbox's record (a preview host is one look-up): every change to the sandbox
/// must reach the previews that open it, in the new snapshot only.
#[test]
fn a_preview_follows_its_sandbox_through_changes() {
    let old = Snapshot::from_wire(wire_snapshot()).expect("compiles");
    assert_eq!(sandbox_of(&old, "slug0001"), Some("127.0.0.2"));
    let mut moved = old.sandboxes["abcd1234"].as_ref().clone();
    moved.address = "127.0.0.9".into();
    let new = old.apply(4, vec![Change::UpsertSandbox { sandbox: moved.clone() }]).expect("applies");
    assert_eq!(sandbox_of(&new, "slug0001"), Some("127.0.0.9"));
    assert_eq!(sandbox_of(&old, "slug0001"), Some("127.0.0.2"), "the old snapshot is untouched");
    assert!(Arc::ptr_eq(
        new.preview_by_id("pv_1").and_then(|p| p.sandbox.as_ref()).expect("held"),
        &new.sandboxes["abcd1234"]
    ));

    let gone = new.apply(5, vec![Change::DeleteSandbox { id: "abcd1234".into() }]).expect("applies");
    assert!(gone.previews.contains_key("slug0001") && sandbox_of(&gone, "slug0001").is_none());
    let back = gone.apply(6, vec![Change::UpsertSandbox { sandbox: moved }]).expect("applies");
    assert_eq!(sandbox_of(&back, "slug0001"), Some("127.0.0.9"));
}

/// A batch may name a preview before its sandbox, and a preview may move to another sandbox.
#[test]
fn a_preview_named_before_its_sandbox_or_moved_opens_the_right_one() {
    let s = Snapshot::from_wire(wire_snapshot()).expect("compiles");
    let other = Sandbox {
        id: "efgh5678".into(),
        address: "127.0.0.3".into(),
        ..s.sandboxes["abcd1234"].as_ref().clone()
    };
    let early = Preview {
        id: "pv_2".into(),
        slug: "slug0002".into(),
        sandbox_id: "efgh5678".into(),
        ..s.previews.get("slug0001").expect("exists").preview.clone()
    };
    let s = s
        .apply(
            4,
            vec![Change::UpsertPreview { preview: early.clone() }, Change::UpsertSandbox { sandbox: other }],
        )
        .expect("applies");
    assert_eq!(sandbox_of(&s, "slug0002"), Some("127.0.0.3"));

    let moved = Preview { sandbox_id: "abcd1234".into(), ..early };
    let s = s.apply(5, vec![Change::UpsertPreview { preview: moved }]).expect("applies");
    assert_eq!(sandbox_of(&s, "slug0002"), Some("127.0.0.2"));
    // The sandbox it left no longer re-points it.
    let mut left = s.sandboxes["efgh5678"].as_ref().clone();
    left.address = "127.0.0.4".into();
    let s = s.apply(6, vec![Change::UpsertSandbox { sandbox: left }]).expect("applies");
    assert_eq!(sandbox_of(&s, "slug0002"), Some("127.0.0.2"));
    let s = s.apply(7, vec![Change::DeletePreview { id: "pv_2".into() }]).expect("applies");
    assert!(!s.previews.contains_key("slug0002"));
    assert_eq!(sandbox_of(&s, "slug0001"), Some("127.0.0.2"));
}

fn tenant_of<'a>(s: &'a Snapshot, sandbox: &str) -> Option<&'a str> {
    let (_, slot) = s.sandboxes.get_with(sandbox)?;
    s.tenants.at(slot).map(|t| t.frame_ancestors())
}

/// Sandboxes and previews hold their tenant's slot, not the tenant: a tenant's change, removal and return
/// reach them with nothing re-pointed, in the new snapshot only; a sandbox named before its tenant finds
/// it once it comes.
#[test]
fn sandboxes_and_previews_find_their_tenant_as_it_is_now() {
    let old = Snapshot::from_wire(wire_snapshot()).expect("compiles");
    assert_eq!(tenant_of(&old, "abcd1234"), Some("frame-ancestors https://app.example.com"));
    let mut tenant = old.tenants["tn_a"].tenant.clone();
    tenant.frame_ancestors = Some(vec!["https://b.example.com".into()]);
    let new = old.apply(4, vec![Change::UpsertTenant { tenant: tenant.clone() }]).expect("applies");
    assert_eq!(tenant_of(&new, "abcd1234"), Some("frame-ancestors https://b.example.com"));
    assert_eq!(tenant_of(&old, "abcd1234"), Some("frame-ancestors https://app.example.com"));
    let (_, slot) = new.previews.get_with_tenant("slug0001").expect("exists");
    assert!(Arc::ptr_eq(new.tenants.at(slot).expect("tenant"), &new.tenants["tn_a"]));

    let gone = new.apply(5, vec![Change::DeleteTenant { id: "tn_a".into() }]).expect("applies");
    assert_eq!((tenant_of(&gone, "abcd1234"), gone.tenants.len()), (None, 0));
    let back = gone.apply(6, vec![Change::UpsertTenant { tenant }]).expect("applies");
    assert_eq!(tenant_of(&back, "abcd1234"), Some("frame-ancestors https://b.example.com"));

    let early = Sandbox {
        id: "efgh5678".into(),
        tenant_id: "tn_b".into(),
        ..back.sandboxes["abcd1234"].as_ref().clone()
    };
    let s = back.apply(7, vec![Change::UpsertSandbox { sandbox: early }]).expect("applies");
    assert_eq!(tenant_of(&s, "efgh5678"), None);
    let tn_b = Tenant { id: "tn_b".into(), frame_ancestors: None, ..s.tenants["tn_a"].tenant.clone() };
    let s = s.apply(8, vec![Change::UpsertTenant { tenant: tn_b }]).expect("applies");
    assert_eq!(tenant_of(&s, "efgh5678"), Some("frame-ancestors 'self'"));
    assert_eq!(s.tenants.len(), 2);
}
