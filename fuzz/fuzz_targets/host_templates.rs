//! Host templates (SPEC §2) as an operator may write them: `template\nport\nsandbox\nslug\napp\nworkspace`.
//! Invariants: parsing never panics; a host a template renders from valid values matches it with those same
//! values (so a host names one route, not two); the last line, as a host, renders back when it matches.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico_wire::ids::{is_dns_label, is_host_id};
use portico_wire::{normalize_host, HostMatch, HostTemplate, TemplateKind};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut lines = text.split('\n');
    let Ok(t) = HostTemplate::parse(lines.next().unwrap_or_default()) else { return };
    let [port, sandbox, slug, app, workspace] = std::array::from_fn(|_| lines.next().unwrap_or_default());
    let port = port.parse::<u16>().ok().filter(|p| *p != 0);

    let want = match t.kind() {
        TemplateKind::SandboxPort if is_host_id(sandbox) => {
            port.map(|port| HostMatch::SandboxPort { sandbox, port })
        }
        TemplateKind::Preview if is_host_id(slug) => Some(HostMatch::Preview { slug }),
        TemplateKind::Deployment if is_dns_label(app) && is_dns_label(workspace) => {
            Some(HostMatch::Deployment { app, workspace })
        }
        _ => None,
    };
    if let Some(want) = want {
        let host = t.render(port, sandbox, slug, app, workspace);
        assert_eq!(t.matches(&host), Some(want), "{t} rendered {want:?} as {host:?}");
    }

    let Some(host) = lines.next().and_then(normalize_host) else { return };
    if let Some(m) = t.matches(&host) {
        let rendered = match m {
            HostMatch::SandboxPort { sandbox, port } => t.render(Some(port), sandbox, "", "", ""),
            HostMatch::Preview { slug } => t.render(None, "", slug, "", ""),
            HostMatch::Deployment { app, workspace } => t.render(None, "", "", app, workspace),
        };
        assert_eq!(rendered, host, "{t} matched {host:?} as {m:?}");
    }
});
