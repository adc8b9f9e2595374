//! What the fuzz targets share: a small compiled snapshot and the parsers the invariants are checked with.
//! The invariant parsers follow the browser's reading (CSP, Set-Cookie) or the form a sandbox sees (query),
//! not the edge's own code, so a disagreement between the two is what a target reports.

use portico_edge::state::Snapshot;
use portico_wire::{
    self as wire, ActiveVersion, Deployment, Preview, Sandbox, SandboxState, Settings, Tenant, VersionTarget,
    Visibility, WakePolicy,
};

/// Tenant preview domains of [`snapshot`], with their tenant.
pub const PREVIEW_DOMAINS: [(&str, &str); 2] = [("preview.acme.dev", "tn_a"), ("b.example", "tn_b")];

/// Three tenants (two with a verified preview domain), three sandboxes, previews of each, and deployments
/// with verified and unverified custom domains: every branch of `route::resolve` has something to find.
pub fn snapshot() -> Snapshot {
    let tenant = |id: &str, domain: Option<&str>| Tenant {
        id: id.into(),
        branding: None,
        frame_ancestors: None,
        rate_limits: Default::default(),
        preview_domain: domain.map(Into::into),
        upstream_cidrs: None,
    };
    let sandbox = |id: &str, tenant: &str, visibility| Sandbox {
        id: id.into(),
        tenant_id: tenant.into(),
        address: "127.0.0.2".into(),
        state: SandboxState::Running,
        default_visibility: visibility,
        wake_policy: WakePolicy::OnRequest,
        preview_auth_sha256: None,
        allow_preflight: false,
    };
    let preview = |slug: &str, tenant: &str, sandbox: &str, port| Preview {
        id: format!("pv_{slug}").into(),
        slug: slug.into(),
        tenant_id: tenant.into(),
        sandbox_id: sandbox.into(),
        port,
        visibility: Visibility::Public,
    };
    let deployment =
        |id: &str, tenant: &str, app: &str, domains: &[&str], unverified: &[&str], active: bool| Deployment {
            id: id.into(),
            tenant_id: tenant.into(),
            app: app.into(),
            workspace: "team".into(),
            domains: domains.iter().map(|d| d.to_string()).collect(),
            unverified_domains: unverified.iter().map(|d| d.to_string()).collect(),
            active: active.then(|| ActiveVersion {
                id: format!("v_{id}"),
                number: 1,
                target: VersionTarget::Release { sha256: "00".repeat(32) },
            }),
        };
    let snapshot = wire::Snapshot {
        version: 1,
        settings: Settings {
            host_templates: wire::DEFAULT_HOST_TEMPLATES.iter().map(|s| s.to_string()).collect(),
            default_frame_ancestors: vec![],
            default_rate_limits: Default::default(),
            upstream_allow: Vec::new(),
        },
        tenants: vec![
            tenant("tn_a", Some(PREVIEW_DOMAINS[0].0)),
            tenant("tn_b", Some(PREVIEW_DOMAINS[1].0)),
            tenant("tn_c", None),
        ],
        sandboxes: vec![
            sandbox("sbxa0001", "tn_a", Visibility::Private),
            sandbox("sbxb0001", "tn_b", Visibility::Public),
            sandbox("sbxc0001", "tn_c", Visibility::Private),
        ],
        previews: vec![
            preview("slugaaaa", "tn_a", "sbxa0001", 5173),
            preview("slugbbbb", "tn_b", "sbxb0001", 8000),
            preview("slugcccc", "tn_c", "sbxc0001", 3000),
            // A preview whose sandbox is gone: routes nowhere.
            preview("slugdead", "tn_a", "sbxgone1", 3000),
        ],
        verify_keys: vec![],
        revocations: vec![],
        shares: vec![],
        deployments: vec![
            deployment("dp_a", "tn_a", "web", &["www.acme.com"], &["shop.acme.com"], true),
            deployment("dp_b", "tn_b", "api", &["api.b.example"], &[], true),
            deployment("dp_c", "tn_c", "idle", &["idle.c.example"], &[], false),
        ],
        certificates: vec![],
        acme_challenges: vec![],
    };
    // The fixture is fixed: a failure here is a broken fuzz set-up, found on the first input.
    match Snapshot::from_wire(snapshot) {
        Ok(s) => s,
        Err(e) => panic!("the fuzz snapshot does not compile: {e}"),
    }
}

/// `application/x-www-form-urlencoded` value decoding as a sandbox's framework does it.
pub fn form_decode(value: &str) -> String {
    percent_encoding::percent_decode_str(&value.replace('+', " ")).decode_utf8_lossy().into_owned()
}

/// The `(name as sent, decoded value)` pairs of a query; a parameter without `=` has an empty value.
pub fn query_params(query: &str) -> Vec<(&str, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (n, v) = p.split_once('=').unwrap_or((p, ""));
            (n, form_decode(v))
        })
        .collect()
}

/// The query of a URL or request target: between the first `?` and any `#`.
pub fn query_of(url: &str) -> Option<&str> {
    let url = url.split_once('#').map_or(url, |(u, _)| u);
    url.split_once('?').map(|(_, q)| q)
}

/// CSP policy parsing (CSP3 §2.2.1): directives split on `;`, ASCII whitespace trimmed, the name up to the
/// first ASCII whitespace, compared lowercased. Returns the directives of one policy as (name, whole).
pub fn csp_directives(policy: &str) -> Vec<(String, String)> {
    let ascii_ws = |c: char| matches!(c, '\t' | '\n' | '\x0c' | '\r' | ' ');
    policy
        .split(';')
        .map(|d| d.trim_matches(ascii_ws))
        .filter(|d| !d.is_empty())
        .map(|d| {
            let name = d.split(ascii_ws).next().unwrap_or_default();
            (name.to_ascii_lowercase(), d.to_string())
        })
        .collect()
}

/// What a browser makes of one `Set-Cookie` value (RFC 6265bis §5.6): `None` when it ignores it, else the
/// name the cookie is sent back under and its attribute names, lowercased.
pub fn browser_set_cookie(value: &str) -> Option<(String, Vec<String>)> {
    // Control characters other than tab make the whole value ignored.
    if value.chars().any(|c| (c.is_ascii_control() && c != '\t') || c == '\x7f') {
        return None;
    }
    let wsp = |c: char| c == ' ' || c == '\t';
    let (pair, attrs) = value.split_once(';').unwrap_or((value, ""));
    let (name, cookie_value) = match pair.split_once('=') {
        Some((n, v)) => (n.trim_matches(wsp), v.trim_matches(wsp)),
        None => ("", pair.trim_matches(wsp)),
    };
    if name.is_empty() && cookie_value.is_empty() {
        return None;
    }
    // A nameless cookie is sent back as its bare value, `Cookie: <value>`: whatever precedes a `=` in it is
    // the name every server reads.
    let sent_name = if name.is_empty() {
        cookie_value.split_once('=').map_or("", |(n, _)| n.trim_matches(wsp))
    } else {
        name
    };
    let attrs = attrs
        .split(';')
        .map(|a| a.split_once('=').map_or(a, |(n, _)| n).trim_matches(wsp).to_ascii_lowercase())
        .filter(|a| !a.is_empty())
        .collect();
    Some((sent_name.to_string(), attrs))
}
