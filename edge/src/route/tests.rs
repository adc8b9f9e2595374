use super::*;
use portico_wire::{Preview, Sandbox, SandboxState, Settings, Tenant, WakePolicy};

fn snap() -> Snapshot {
    let tenant = |id: &str, domain: Option<&str>| Tenant {
        id: id.into(),
        branding: None,
        frame_ancestors: None,
        rate_limits: Default::default(),
        preview_domain: domain.map(Into::into),
        upstream_cidrs: None,
    };
    let sandbox = |id: &str, tenant: &str| Sandbox {
        id: id.into(),
        tenant_id: tenant.into(),
        address: "127.0.0.2".into(),
        state: SandboxState::Running,
        default_visibility: Visibility::Private,
        wake_policy: WakePolicy::OnRequest,
        preview_auth_sha256: None,
        allow_preflight: false,
    };
    Snapshot::from_wire(wire::Snapshot {
        version: 1,
        settings: Settings {
            host_templates: portico_wire::DEFAULT_HOST_TEMPLATES.iter().map(|s| s.to_string()).collect(),
            default_frame_ancestors: vec![],
            default_rate_limits: Default::default(),
            upstream_allow: Vec::new(),
        },
        tenants: vec![tenant("tn_a", Some("preview.acme.dev")), tenant("tn_b", None)],
        sandboxes: vec![sandbox("sbxa0001", "tn_a"), sandbox("sbxb0001", "tn_b")],
        previews: vec![
            Preview {
                id: "pv_a".into(),
                slug: "slugaaaa".into(),
                tenant_id: "tn_a".into(),
                sandbox_id: "sbxa0001".into(),
                port: 5173,
                visibility: Visibility::Public,
            },
            Preview {
                id: "pv_b".into(),
                slug: "slugbbbb".into(),
                tenant_id: "tn_b".into(),
                sandbox_id: "sbxb0001".into(),
                port: 8000,
                visibility: Visibility::Public,
            },
        ],
        verify_keys: vec![],
        revocations: vec![],
        shares: vec![],
        deployments: vec![],
        certificates: vec![],
        acme_challenges: vec![],
    })
    .expect("compiles")
}

#[test]
fn sandbox_port_host_follows_the_sandbox_visibility() {
    let r = resolve(&snap(), "3000-sbxa0001.sandbox.localhost:8080").expect("routes");
    assert_eq!(
        (r.sandbox().expect("sandbox").id.as_str(), r.port(), r.visibility),
        ("sbxa0001", Some(3000), Visibility::Private)
    );
    assert_eq!(r.tenant.tenant.id, "tn_a");
}

#[test]
fn preview_slug_routes_to_its_port_with_its_visibility() {
    let r = resolve(&snap(), "SLUGAAAA.preview.localhost").expect("routes");
    assert_eq!((r.port(), r.visibility, r.kind), (Some(5173), Visibility::Public, RouteKind::Preview));
}

#[test]
fn verified_tenant_domain_routes_only_its_own_previews() {
    assert_eq!(resolve(&snap(), "slugaaaa.preview.acme.dev").expect("routes").port(), Some(5173));
    assert_eq!(resolve(&snap(), "slugbbbb.preview.acme.dev").err(), Some(EdgeError::NotFound));
}

#[test]
fn unknown_hosts_sandboxes_and_slugs_are_not_found() {
    for host in [
        "example.com",
        "3000-nosuch00.sandbox.localhost",
        "nosuch00.preview.localhost",
        "",
        "a.b.apps.localhost",
    ] {
        assert_eq!(resolve(&snap(), host).err(), Some(EdgeError::NotFound), "{host}");
    }
}

/// A preview holds its sandbox and both hold their tenant's slot: a route must still be `not_found` once
/// control deletes the sandbox or the tenant, and route again when they come back.
#[test]
fn a_deleted_sandbox_or_tenant_is_not_found_until_it_returns() {
    let s = snap();
    let (port_host, preview_host) = ("3000-sbxa0001.sandbox.localhost", "slugaaaa.preview.localhost");
    let sandbox = s.sandboxes["sbxa0001"].as_ref().clone();
    let tenant = s.tenants["tn_a"].tenant.clone();

    let no_sandbox =
        s.apply(2, vec![wire::Change::DeleteSandbox { id: "sbxa0001".into() }]).expect("applies");
    assert_eq!(resolve(&no_sandbox, preview_host).err(), Some(EdgeError::NotFound));
    let back = no_sandbox.apply(3, vec![wire::Change::UpsertSandbox { sandbox }]).expect("applies");
    assert_eq!(resolve(&back, preview_host).expect("routes").port(), Some(5173));

    let no_tenant = back.apply(4, vec![wire::Change::DeleteTenant { id: "tn_a".into() }]).expect("applies");
    for host in [port_host, preview_host] {
        assert_eq!(resolve(&no_tenant, host).err(), Some(EdgeError::NotFound), "{host}");
    }
    let back = no_tenant.apply(5, vec![wire::Change::UpsertTenant { tenant }]).expect("applies");
    for host in [port_host, preview_host] {
        assert_eq!(resolve(&back, host).expect("routes").tenant.tenant.id, "tn_a", "{host}");
    }
}
