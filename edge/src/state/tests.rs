use super::*;
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
    assert_eq!(s.tenants["tn_a"].frame_ancestors, "frame-ancestors https://app.example.com");
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
    let mut p = s.previews["slug0001"].as_ref().clone();
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
fn a_bad_template_from_control_is_an_error_not_a_panic() {
    let mut w = wire_snapshot();
    w.settings.host_templates = vec!["{nope}.x".into()];
    assert!(Snapshot::from_wire(w).is_err());
}
