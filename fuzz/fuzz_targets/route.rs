//! Step 1: any `Host` value against a snapshot with tenants, sandboxes, previews and custom domains.
//! Invariants: no panic; a route's tenant owns its target; a host under a tenant's preview domain never
//! reaches another tenant's preview; case, a trailing `.` and a `:port` never change the answer; a template
//! match renders back to the host it came from.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use portico_edge::route::{resolve, Route, Target};
use portico_edge::state::Snapshot;
use portico_edge::EdgeError;
use portico_wire::{normalize_host, HostMatch};

fn summary(r: &Result<Route, EdgeError>) -> String {
    match r {
        Ok(route) => {
            let target = match &route.target {
                Target::Sandbox { sandbox, port } => format!("{}:{port}", sandbox.id),
                Target::Deployment(d) => d.id.clone(),
            };
            format!("{:?} {} {target} {:?}", route.kind, route.tenant.tenant.id, route.visibility)
        }
        Err(e) => format!("{e:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    static SNAPSHOT: OnceLock<Snapshot> = OnceLock::new();
    let snap = SNAPSHOT.get_or_init(portico_fuzz::snapshot);
    let Ok(host) = std::str::from_utf8(data) else { return };
    let result = resolve(snap, host);

    if let Ok(route) = &result {
        let owner = match &route.target {
            Target::Sandbox { sandbox, .. } => sandbox.tenant_id.as_str(),
            Target::Deployment(d) => d.tenant_id.as_str(),
        };
        assert_eq!(&route.tenant.tenant.id, owner, "{host:?} routed across tenants");
    }

    let Some(n) = normalize_host(host) else {
        assert!(result.is_err(), "{host:?} does not normalise but routed");
        return;
    };
    let template = snap.templates.iter().find_map(|t| t.matches(&n).map(|m| (t, m)));

    // A template match is a parse of the host: rendering its values gives the host back.
    if let Some((t, m)) = template {
        let rendered = match m {
            HostMatch::SandboxPort { sandbox, port } => t.render(Some(port), sandbox, "", "", ""),
            HostMatch::Preview { slug } => t.render(None, "", slug, "", ""),
            HostMatch::Deployment { app, workspace } => t.render(None, "", "", app, workspace),
        };
        assert_eq!(rendered, n, "{t} matched {n:?} as {m:?}");
    }

    // `{slug}.<tenant preview domain>` opens only that tenant's previews.
    if template.is_none() && !snap.deployment_domains.contains_key(n.as_ref()) {
        if let Ok(route) = &result {
            let (_, domain) = n.split_once('.').unwrap_or_default();
            let owner = portico_fuzz::PREVIEW_DOMAINS.iter().find(|(d, _)| *d == domain).map(|(_, t)| *t);
            assert_eq!(Some(route.tenant.tenant.id.as_str()), owner, "{host:?} left its preview domain");
        }
    }

    // Host matching ignores case, a trailing `.` and a `:port` (SPEC §2). Only for hosts that are their own
    // normal form: `a..` and `a .` lose one dot or space per normalisation, and are no host names anyway.
    if normalize_host(&n).as_deref() == Some(&*n) && !n.contains([':', '[']) {
        let want = summary(&result);
        for variant in [n.to_string(), format!("{}.", n.to_ascii_uppercase()), format!("{n}:8443")] {
            assert_eq!(summary(&resolve(snap, &variant)), want, "{host:?} vs {variant:?}");
        }
    }
});
