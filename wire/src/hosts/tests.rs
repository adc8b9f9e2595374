use super::*;

fn defaults() -> Vec<HostTemplate> {
    DEFAULT_HOST_TEMPLATES.iter().map(|t| HostTemplate::parse(t).expect("default template")).collect()
}

fn route(host: &str) -> Option<String> {
    let host = normalize_host(host)?;
    defaults().iter().find_map(|t| t.matches(&host).map(|m| format!("{m:?}")))
}

#[test]
fn port_dash_sandbox_form_routes_to_a_sandbox_port() {
    assert_eq!(
        route("3000-k3v9x2ab.sandbox.localhost").as_deref(),
        Some(r#"SandboxPort { sandbox: "k3v9x2ab", port: 3000 }"#)
    );
}

#[test]
fn second_sandbox_form_routes_too() {
    assert_eq!(
        route("sb-k3v9x2ab-p5173.workers.localhost").as_deref(),
        Some(r#"SandboxPort { sandbox: "k3v9x2ab", port: 5173 }"#)
    );
}

#[test]
fn slug_and_deployment_forms_route() {
    assert_eq!(route("abcd1234.preview.localhost").as_deref(), Some(r#"Preview { slug: "abcd1234" }"#));
    assert_eq!(
        route("my-app.team-1.apps.localhost").as_deref(),
        Some(r#"Deployment { app: "my-app", workspace: "team-1" }"#)
    );
}

#[test]
fn host_matching_ignores_case_port_and_trailing_dot() {
    let want = Some(r#"SandboxPort { sandbox: "k3v9x2ab", port: 3000 }"#.to_string());
    assert_eq!(route("3000-K3V9X2AB.Sandbox.LOCALHOST"), want);
    assert_eq!(route("3000-k3v9x2ab.sandbox.localhost:8080"), want);
    assert_eq!(route("3000-k3v9x2ab.sandbox.localhost."), want);
    assert_eq!(route("3000-k3v9x2ab.sandbox.localhost.:8080"), want);
}

#[test]
fn invalid_ports_and_ids_do_not_route() {
    for host in [
        "0-k3v9x2ab.sandbox.localhost",
        "65536-k3v9x2ab.sandbox.localhost",
        "03000-k3v9x2ab.sandbox.localhost",
        "3000-abc.sandbox.localhost",
        "3000-k3v9_2ab.sandbox.localhost",
        "3000k3v9x2ab.sandbox.localhost",
        "x.3000-k3v9x2ab.sandbox.localhost",
        "sandbox.localhost",
        ".sandbox.localhost",
        "x.abcd1234.preview.localhost",
        "my-app.apps.localhost",
        "x.my-app.team-1.apps.localhost",
        "my-app..apps.localhost",
        "3000-k3v9x2ab.sandbox.localhost:80a",
        "",
        ":8080",
    ] {
        assert_eq!(route(host), None, "{host}");
    }
}

#[test]
fn templates_are_validated() {
    assert!(matches!(HostTemplate::parse("{port}{sandbox}.x.dev"), Err(TemplateError::Adjacent(_))));
    assert!(matches!(HostTemplate::parse("{port}.x.dev"), Err(TemplateError::Placeholders(_))));
    assert!(matches!(HostTemplate::parse("{nope}.x.dev"), Err(TemplateError::UnknownPlaceholder(..))));
    assert!(matches!(HostTemplate::parse("{slug.x.dev"), Err(TemplateError::Brace(_))));
    assert!(matches!(HostTemplate::parse("{slug}..dev"), Err(TemplateError::Literal(_))));
    assert!(matches!(HostTemplate::parse("{slug}-{slug}.dev"), Err(TemplateError::Placeholders(_))));
}

#[test]
fn render_is_the_inverse_of_matching() {
    for t in defaults() {
        let host = t.render(Some(8080), "k3v9x2ab", "s1ug0001", "web", "acme");
        assert!(t.matches(&host).is_some(), "{t} rendered {host}");
    }
}

#[test]
fn custom_template_with_separator_inside_sandbox_label() {
    let t = HostTemplate::parse("{sandbox}--{port}.Preview.Example.App").expect("valid");
    assert_eq!(
        t.matches("abcd1234--443.preview.example.app"),
        Some(HostMatch::SandboxPort { sandbox: "abcd1234", port: 443 })
    );
}

/// Found by fuzz/ (host_templates): with `{app}t{workspace}`, `web`/`team` rendered `webtteam`, which came
/// back as `webt`/`eam`. Likewise with `{app}-{workspace}`, app `my` in workspace `app-team` and app
/// `my-app` in workspace `team` share one host, routed to whichever the matcher tries first.
#[test]
fn templates_where_one_host_could_name_two_routes_are_refused() {
    for t in [
        "{app}-{workspace}.apps.dev",
        "{sandbox}1{port}.x.dev",
        "x{app}a{workspace}y.dev",
        "{app}--{workspace}.d",
    ] {
        assert!(matches!(HostTemplate::parse(t), Err(TemplateError::Ambiguous(_))), "{t}");
    }
    // A separator holding a character one side cannot contain fixes where the values split.
    let t = HostTemplate::parse("{sandbox}x{port}.x.dev").expect("unambiguous");
    assert_eq!(t.matches("abcxx1.x.dev"), Some(HostMatch::SandboxPort { sandbox: "abcx", port: 1 }));
    let t = HostTemplate::parse("{port}a{sandbox}.x.dev").expect("unambiguous");
    assert_eq!(t.matches("1aaabc.x.dev"), Some(HostMatch::SandboxPort { sandbox: "aabc", port: 1 }));
}

/// The matcher ends a value at the first character it cannot contain instead of trying every split:
/// hosts with that character in other places still route exactly as before.
#[test]
fn a_value_ends_at_the_first_character_it_cannot_contain() {
    assert_eq!(route("30-00-abcd.sandbox.localhost"), None);
    assert_eq!(route("-3000-abcd.sandbox.localhost"), None);
    assert_eq!(route("sb-abcd-p-p80.workers.localhost"), None);
    assert_eq!(route("sb-abcd-p80-.workers.localhost"), None);
    assert_eq!(
        route("sb-abcd-p80.workers.localhost"),
        Some("SandboxPort { sandbox: \"abcd\", port: 80 }".into())
    );
    assert_eq!(
        route("web-1.team-2.apps.localhost"),
        Some("Deployment { app: \"web-1\", workspace: \"team-2\" }".into())
    );
}

#[test]
fn ports_are_one_to_65535_without_leading_zeros_or_signs() {
    for (s, want) in [("1", Some(1)), ("3000", Some(3000)), ("65535", Some(65535))] {
        assert_eq!(parse_port(s), want, "{s:?}");
    }
    for s in ["", "0", "00", "080", "65536", "99999", "123456", "12a", "+1", "-1", " 1", "١"] {
        assert_eq!(parse_port(s), None, "{s:?}");
    }
}

/// The plan (one left-to-right pass) and the label-by-label matcher agree on every host, for templates of
/// every shape; templates that need backtracking have no plan.
#[test]
fn a_template_plan_matches_what_the_label_matcher_matches() {
    let mut templates: Vec<&str> = DEFAULT_HOST_TEMPLATES.to_vec();
    templates.extend([
        "{sandbox}--{port}.preview.example.app",
        "p{port}.{sandbox}.x.dev",
        "x-{slug}-y.z.dev",
        "{app}.x.{workspace}.d",
        "{sandbox}x{port}.x.dev",
        "{port}a{sandbox}.x.dev",
    ]);
    let hosts = [
        "3000-abcd.sandbox.localhost",
        "3000-abcd.x.sandbox.localhost",
        "3000--abcd.sandbox.localhost",
        "sb-abcd-p80.workers.localhost",
        "sb-abcd-p80-.workers.localhost",
        "sb-abcd-p-p80.workers.localhost",
        "myslug1.preview.localhost",
        "a.b.preview.localhost",
        "web-1.team-2.apps.localhost",
        "web.team.x.apps.localhost",
        "abcd--8080.preview.example.app",
        "abcd-8080.preview.example.app",
        "p80.abcd.x.dev",
        "p80.ab.x.dev",
        "p080.abcd.x.dev",
        "x-slug1-y.z.dev",
        "x-slug1-y-.z.dev",
        "my-app.x.team.d",
        "my-app.y.team.d",
        "abcxx1.x.dev",
        "1aaabc.x.dev",
        "3000-ABCD.sandbox.localhost",
        "",
        ".",
        "-.x.dev",
        "99999-abcd.sandbox.localhost",
        "65535-abcd.sandbox.localhost",
    ];
    let mut planned = 0;
    for source in templates {
        let t = HostTemplate::parse(source).expect("valid");
        planned += usize::from(t.plan.is_some());
        for host in hosts {
            let by_labels = host
                .strip_suffix(t.suffix.as_str())
                .and_then(|head| t.match_labels(head))
                .and_then(|v| t.found(v));
            assert_eq!(t.matches(host), by_labels, "{source} on {host}");
        }
    }
    assert_eq!(planned, 9, "all but `{{sandbox}}x{{port}}`, whose value may hold the x after it");
}
