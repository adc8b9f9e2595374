use super::*;

fn fa(sources: &[&str]) -> ApiResult<Vec<String>> {
    frame_ancestors("sources", &sources.iter().map(|s| s.to_string()).collect::<Vec<_>>())
}

#[test]
fn frame_ancestors_accept_keywords_schemes_and_hosts_normalised() {
    let got = fa(&[
        "'SELF'",
        "HTTPS:",
        "https://*.Example.com:*",
        "app.example.com:8443",
        "*",
        "https://a.b/path/x",
    ])
    .expect("valid");
    assert_eq!(
        got,
        ["'self'", "https:", "https://*.example.com:*", "app.example.com:8443", "*", "https://a.b/path/x"]
    );
}

#[test]
fn frame_ancestors_reject_injection_and_oddities() {
    for bad in [
        "",
        "a b",
        "example.com;script-src *",
        "a.com,b.com",
        "'unsafe-inline'",
        "\"self\"",
        "https://",
        "*.",
        "a..com",
        "https://a.com:99999x",
        "https://a.com/pa th",
        "https://a.com/<x>",
        "1http://a.com",
    ] {
        assert!(fa(&[bad]).is_err(), "{bad:?} should be rejected");
    }
    assert!(fa(&[]).is_err());
    assert!(fa(&["'none'", "'self'"]).is_err());
    assert!(fa(&["'none'"]).is_ok());
    let many: Vec<String> = (0..33).map(|i| format!("a{i}.example.com")).collect();
    assert!(frame_ancestors("sources", &many).is_err());
}

#[test]
fn invalid_field_messages_start_with_the_field_name() {
    let err = fa(&["ok.com", "bad;"]).expect_err("invalid");
    assert!(err.to_string().starts_with("sources[1]:"), "{err}");
    assert!(accent_color("red").expect_err("invalid").to_string().starts_with("accent_color:"));
}

#[test]
fn https_urls_only() {
    assert_eq!(
        https_url("logo_url", "https://cdn.example.com/l.png").expect("ok"),
        "https://cdn.example.com/l.png"
    );
    for bad in [
        "http://x.com/",
        "javascript:alert(1)",
        "https://",
        "/relative",
        "https://u:p@x.com/",
        "https://x.com/a b",
    ] {
        assert!(https_url("logo_url", bad).is_err(), "{bad:?}");
    }
    assert!(https_url("logo_url", &format!("https://x.com/{}", "a".repeat(MAX_URL))).is_err());
}

#[test]
fn accent_colours_are_hex_triplets() {
    assert_eq!(accent_color("#AABBCC").expect("ok"), "#aabbcc");
    for bad in ["#abc", "aabbcc", "#gg0000", "#aabbccdd", ""] {
        assert!(accent_color(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn addresses_are_ips_or_host_names() {
    assert_eq!(address("10.0.0.2").expect("ok"), "10.0.0.2");
    assert_eq!(address("[::1]").expect("ok"), "::1");
    assert_eq!(address("Sandbox-1.internal").expect("ok"), "sandbox-1.internal");
    assert_eq!(address("web_1").expect("ok"), "web_1");
    for bad in ["", "10.0.0.2:3000", "http://x", "a b", "-a.com", "a..b", "x/y"] {
        assert!(address(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn metadata_must_be_a_small_object() {
    assert!(metadata(&serde_json::json!({"a": 1})).is_ok());
    assert!(metadata(&serde_json::json!([1])).is_err());
    assert!(metadata(&serde_json::json!({"a": "x".repeat(MAX_METADATA)})).is_err());
}

#[test]
fn names_and_tokens() {
    assert!(name("name", "Acme", 100).is_ok());
    assert!(name("name", "", 100).is_err());
    assert!(name("name", "   ", 100).is_err());
    assert!(name("name", "a\u{0}b", 100).is_err());
    assert!(name("name", &"é".repeat(100), 100).is_ok());
    assert!(preview_auth_token("0123456789abcdef").is_ok());
    assert!(preview_auth_token("short").is_err());
    assert!(preview_auth_token("0123456789 abcdef").is_err());
    assert_eq!(hostname("Preview.Acme.dev.").expect("ok"), "preview.acme.dev");
    assert!(hostname("localhost").is_err());
}
