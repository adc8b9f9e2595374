//! Rate limits end to end (SPEC §4 step 2): real control and edge processes, clients on their own
//! 127.0.1.x source addresses so the edge sees distinct client IPs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::sandbox::{header, FakeSandbox};
use common::{sandbox_ip, until_status, Api, Stack};
use serde_json::{json, Value};

/// A client connecting from `source` and sending every host name to the edge.
fn client_from(edge: &common::Edge, source: &str) -> reqwest::Client {
    common::builder_to(edge.addr)
        .local_address(source.parse::<IpAddr>().expect("source ip"))
        .build()
        .expect("client")
}

/// Status and `Retry-After` (seconds) of a GET.
async fn get(client: &reqwest::Client, url: &str) -> (u16, Option<u64>) {
    get_with(client, url, &[]).await
}

async fn get_with(client: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> (u16, Option<u64>) {
    let mut req = client.get(url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = req.send().await.expect("request");
    let retry =
        resp.headers().get("retry-after").map(|v| v.to_str().unwrap().parse().expect("whole seconds"));
    (resp.status().as_u16(), retry)
}

/// Sends up to `max` requests until one is refused with 429; returns how many passed first and its
/// `Retry-After`.
async fn until_limited(client: &reqwest::Client, url: &str, max: usize) -> (usize, u64) {
    until_limited_with(client, url, &[], max).await
}

async fn until_limited_with(
    client: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
    max: usize,
) -> (usize, u64) {
    for passed in 0..max {
        match get_with(client, url, headers).await {
            (429, Some(retry)) => return (passed, retry),
            (429, None) => panic!("429 without Retry-After"),
            (status, _) => assert!(status < 400 || status == 401, "unexpected {status}"),
        }
    }
    panic!("{url}: no 429 in {max} requests");
}

async fn set_limits(tenant: &Api, limits: Value) {
    tenant.ok("PUT", "/v1/tenant/rate-limits", Some(limits), 200).await;
}

fn limits(public: (u32, u32), private: (u32, u32), failures_per_minute: u32) -> Value {
    json!({
        "public_per_ip": {"rps": public.0, "burst": public.1},
        "private_per_token": {"rps": private.0, "burst": private.1},
        "auth_failures_per_ip": {"per_minute": failures_per_minute},
    })
}

struct Site {
    tenant: Api,
    tenant_id: String,
    _fake: FakeSandbox,
    /// Host of a public sandbox port.
    public_host: String,
    /// Hosts of two private sandboxes' ports, with each one's preview-auth token.
    private: [(String, String); 2],
}

async fn site(stack: &Stack, limits: Value) -> Site {
    let tenant = stack.admin.tenant("acme").await;
    let tenant_id = tenant.ok("GET", "/v1/tenant", None, 200).await["id"].as_str().unwrap().to_string();
    set_limits(&tenant, limits).await;
    let fake = FakeSandbox::start(sandbox_ip(), 0).await;
    let address = fake.addr.ip().to_string();
    let public = tenant.sandbox(json!({"address": address, "default_visibility": "public"})).await;
    let public_host = format!("{}-{}.sandbox.localhost", fake.port(), public["id"].as_str().unwrap());
    let mut private = Vec::new();
    for _ in 0..2 {
        let sb = tenant.sandbox(json!({"address": address, "preview_auth": {"token": "auto"}})).await;
        let host = format!("{}-{}.sandbox.localhost", fake.port(), sb["id"].as_str().unwrap());
        private.push((host, sb["preview_auth_token"].as_str().unwrap().to_string()));
    }
    stack.synced().await;
    let private = private.try_into().unwrap();
    Site { tenant, tenant_id, _fake: fake, public_host, private }
}

#[tokio::test]
async fn a_public_burst_passes_then_429_with_retry_after_and_the_tenant_page_then_recovers() {
    let stack = Stack::start().await;
    let site = site(&stack, limits((1, 5), (100, 100), 30)).await;
    site.tenant
        .ok(
            "PUT",
            "/v1/tenant/branding",
            Some(json!({"logo_url": "https://cdn.acme.dev/logo.svg", "accent_color": "#12ab34",
                        "product_name": "Acme Builder"})),
            200,
        )
        .await;
    stack.synced().await;
    let url = stack.edge.url(&site.public_host, "/");
    let alice = client_from(&stack.edge, "127.0.1.2");

    // The burst of 5 always passes; at 1 rps a sixth cannot be far behind.
    let mut passed = 0;
    let page = loop {
        let resp = alice.get(&url).header("sec-fetch-mode", "navigate").send().await.expect("request");
        if resp.status() == 429 {
            break resp;
        }
        assert_eq!(resp.status(), 200);
        passed += 1;
        assert!(passed <= 8, "no 429 after {passed} requests");
    };
    assert!(passed >= 5, "only {passed} passed before the first 429");
    assert_eq!(page.headers()["retry-after"], "1", "at 1 rps the next request fits within a second");
    assert_eq!(page.headers()["x-edge-error"], "rate_limited");
    assert_eq!(page.headers()["cache-control"], "no-store");
    let body = page.text().await.expect("page");
    assert!(body.contains("Acme Builder") && !body.contains("Portico"), "the tenant's page: {body}");

    // Another client IP has its own budget.
    let bob = client_from(&stack.edge, "127.0.1.3");
    assert_eq!(get(&bob, &url).await.0, 200);

    // Waiting as told is enough.
    let (_, retry) = until_limited(&alice, &url, 5).await;
    tokio::time::sleep(Duration::from_secs(retry)).await;
    assert_eq!(get(&alice, &url).await.0, 200, "after Retry-After the client is served again");
}

#[tokio::test]
async fn private_previews_are_limited_per_credential_not_per_ip_or_sandbox() {
    let stack = Stack::start().await;
    let site = site(&stack, limits((1000, 1000), (1, 3), 30)).await;
    let client = client_from(&stack.edge, "127.0.1.2");
    let [(host_a, token_a), (host_b, token_b)] = &site.private;
    let url_a = stack.edge.url(host_a, &format!("/?token={token_a}"));

    let (passed, _) = until_limited(&client, &url_a, 10).await;
    assert!((3..=6).contains(&passed), "{passed}");
    // The same credential sent another way is the same budget: at most what refilled meanwhile passes.
    let by_header = [("x-portico-preview-token", token_a.as_str())];
    let (passed, _) = until_limited_with(&client, &stack.edge.url(host_a, "/"), &by_header, 4).await;
    assert!(passed <= 1, "the budget follows the credential, not its transport: {passed} passed");

    // Same client IP, same tenant: another credential is not limited.
    let url_b = stack.edge.url(host_b, &format!("/?token={token_b}"));
    assert_eq!(get(&client, &url_b).await.0, 200);
    // Even on the same sandbox, a different credential has its own budget (and is then checked: 401).
    let wrong = stack.edge.url(host_a, "/?token=not-the-token-at-all");
    assert_eq!(get(&client, &wrong).await.0, 401);
}

#[tokio::test]
async fn failed_credential_checks_lock_out_that_ip_only() {
    let stack = Stack::start().await;
    let site = site(&stack, limits((1000, 1000), (1000, 1000), 3)).await;
    let (host, token) = &site.private[0];
    let good = stack.edge.url(host, &format!("/?token={token}"));
    let bad = stack.edge.url(host, "/?token=guess-number-one-xyz");
    let none = stack.edge.url(host, "/");

    let mallory = client_from(&stack.edge, "127.0.1.2");
    // Asking without any credential is not a failed check.
    for _ in 0..5 {
        assert_eq!(get(&mallory, &none).await.0, 401);
    }
    for _ in 0..3 {
        assert_eq!(get(&mallory, &bad).await.0, 401);
    }
    // Locked out: refused before the credential is looked at, even a valid one.
    let (status, retry) = get(&mallory, &good).await;
    assert_eq!(status, 429);
    let retry = retry.expect("Retry-After");
    assert!((15..=20).contains(&retry), "3 a minute: the next attempt in about 20 s, got {retry}");

    let alice = client_from(&stack.edge, "127.0.1.3");
    assert_eq!(get(&alice, &good).await.0, 200, "another IP is not locked out");
    assert_eq!(get(&alice, &bad).await.0, 401);
    assert_eq!(get(&alice, &good).await.0, 200, "one failure is within its budget");
}

#[tokio::test]
async fn a_policy_change_is_in_force_within_a_second_both_ways() {
    let stack = Stack::start().await;
    let site = site(&stack, limits((100, 400), (100, 400), 30)).await;
    let client = client_from(&stack.edge, "127.0.1.2");
    let url = stack.edge.url(&site.public_host, "/");
    for _ in 0..5 {
        assert_eq!(get(&client, &url).await.0, 200);
    }

    set_limits(&site.tenant, limits((1, 1), (100, 400), 30)).await;
    let took = until_status(&client, &url, 429, Duration::from_secs(1)).await;
    println!("lowered limit in force after {took:?}");

    set_limits(&site.tenant, limits((100, 400), (100, 400), 30)).await;
    let took = until_status(&client, &url, 200, Duration::from_secs(1)).await;
    println!("raised limit in force after {took:?}");
}

/// `name{a="1",b="2"} value` → (name, labels, value).
fn parse_sample(line: &str) -> Option<(&str, BTreeMap<&str, &str>, f64)> {
    let (series, value) = line.rsplit_once(' ')?;
    let (name, labels) = series.split_once('{').unwrap_or((series, "}"));
    let labels = labels
        .trim_end_matches('}')
        .split(',')
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k, v.trim_matches('"')))
        .collect();
    Some((name, labels, value.parse().ok()?))
}

fn sum(text: &str, name: &str, want: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter_map(parse_sample)
        .filter(|(n, labels, _)| *n == name && want.iter().all(|(k, v)| labels.get(k) == Some(v)))
        .map(|(_, _, v)| v)
        .sum()
}

#[tokio::test]
async fn metrics_count_every_decision_and_label_nothing_but_tenant_key_and_decision() {
    let stack = Stack::start().await;
    let site = site(&stack, limits((1, 5), (1, 3), 2)).await;
    let client = client_from(&stack.edge, "127.0.1.2");
    let t = site.tenant_id.as_str();

    let public = stack.edge.url(&site.public_host, "/");
    let (mut allowed, mut limited) = (0.0, 0.0);
    let started = Instant::now();
    for _ in 0..10 {
        match get(&client, &public).await.0 {
            200 => allowed += 1.0,
            429 => limited += 1.0,
            other => panic!("{other}"),
        }
    }
    let burst_secs = started.elapsed().as_secs_f64();
    assert!(limited >= 1.0);
    let (host, token) = &site.private[0];
    let private = stack.edge.url(host, &format!("/?token={token}"));
    let (token_passed, _) = until_limited(&client, &private, 10).await;
    let wrong = stack.edge.url(host, "/?token=wrong-wrong-wrong");
    for _ in 0..2 {
        assert_eq!(get(&client, &wrong).await.0, 401);
    }
    assert_eq!(get(&client, &wrong).await.0, 429, "two failures a minute");

    let text = stack.edge.metrics_text().await;
    let decisions = "portico_ratelimit_decisions_total";
    assert_eq!(sum(&text, decisions, &[("tenant", t), ("key", "ip"), ("decision", "allowed")]), allowed);
    assert_eq!(sum(&text, decisions, &[("tenant", t), ("key", "ip"), ("decision", "limited")]), limited);
    assert_eq!(sum(&text, decisions, &[("tenant", t), ("key", "token"), ("decision", "limited")]), 1.0);
    // Only an accepted credential spends a request budget: the wrong one's requests spent none.
    assert_eq!(
        sum(&text, decisions, &[("tenant", t), ("key", "token"), ("decision", "allowed")]),
        token_passed as f64
    );
    // Every private request asked whether its IP was locked out; the last one was.
    let private_requests = token_passed as f64 + 1.0 + 3.0;
    assert_eq!(sum(&text, decisions, &[("tenant", t), ("key", "auth_failures")]), private_requests);
    assert_eq!(
        sum(&text, decisions, &[("tenant", t), ("key", "auth_failures"), ("decision", "limited")]),
        1.0
    );

    // One rate observation per request-budget decision; a burst of ten shows up above 2 rps.
    let observed = "portico_ratelimit_observed_rps_count";
    assert_eq!(sum(&text, observed, &[("tenant", t), ("key", "ip")]), allowed + limited);
    let at_most_2 =
        sum(&text, "portico_ratelimit_observed_rps_bucket", &[("tenant", t), ("key", "ip"), ("le", "2")]);
    assert!(at_most_2 >= 1.0, "the first request of the burst is seen at 1 rps");
    let over_2 = sum(&text, observed, &[("tenant", t), ("key", "ip")]) - at_most_2;
    if burst_secs < 2.0 {
        assert!(over_2 >= 1.0, "ten requests in {burst_secs:.2} s: some at over 2 rps\n{text}");
    }
    assert_eq!(sum(&text, observed, &[("tenant", t), ("key", "auth_failures")]), 2.0, "one per failure");

    // Label hygiene: only bounded values, and nothing identifying a client, host or credential anywhere.
    for (name, labels, _) in text.lines().filter_map(parse_sample) {
        if !name.starts_with("portico_ratelimit_") {
            continue;
        }
        for (k, v) in &labels {
            let ok = match *k {
                "tenant" => *v == t,
                "key" => ["ip", "token", "auth_failures"].contains(v),
                "decision" => ["allowed", "limited"].contains(v),
                "le" => true,
                _ => false,
            };
            assert!(ok, "{name}: label {k}={v}");
        }
    }
    for secret in ["127.0.1.2", host.as_str(), token.as_str(), site.public_host.as_str(), "wrong-wrong"] {
        assert!(!text.contains(secret), "metrics mention {secret}");
    }
}

#[tokio::test]
async fn forwarded_for_from_a_trusted_proxy_names_the_client() {
    let dir = tempfile::tempdir().expect("tempdir");
    let control = common::Control::start(&dir.path().join("c")).await;
    let edge =
        common::Edge::start_with(&control.url, &dir.path().join("e"), &["--trusted-proxy", "127.0.0.0/8"])
            .await;
    let stack = Stack { admin: Api::admin(&control.url), dir, control, edge };
    let site = site(&stack, limits((1, 2), (100, 100), 30)).await;
    let proxy = client_from(&stack.edge, "127.0.1.2");
    let url = stack.edge.url(&site.public_host, "/");
    let via = |client: &str| proxy.get(&url).header("x-forwarded-for", format!("198.51.100.1, {client}"));

    let mut passed = 0;
    while via("203.0.113.7").send().await.expect("request").status() == 200 {
        passed += 1;
        assert!(passed < 6, "no 429 for 203.0.113.7");
    }
    let resp = via("203.0.113.8").send().await.expect("request");
    assert_eq!(resp.status(), 200, "another client behind the same proxy has its own budget");
    let echo: Value = resp.json().await.expect("echo");
    assert_eq!(header(&echo, "x-forwarded-for"), Some("203.0.113.8"), "the sandbox is told the client");
}

#[tokio::test]
async fn forwarded_for_from_an_untrusted_peer_is_ignored() {
    let stack = Stack::start().await;
    let site = site(&stack, limits((1, 2), (100, 100), 30)).await;
    let client = client_from(&stack.edge, "127.0.1.2");
    let url = stack.edge.url(&site.public_host, "/");
    let mut statuses = Vec::new();
    for i in 0..6 {
        // A client rotating the address it claims is still one client.
        let resp =
            client.get(&url).header("x-forwarded-for", format!("203.0.113.{i}")).send().await.expect("req");
        let status = resp.status().as_u16();
        if status == 200 {
            let echo: Value = resp.json().await.expect("echo");
            assert_eq!(header(&echo, "x-forwarded-for"), Some("127.0.1.2"));
        }
        statuses.push(status);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
}

#[tokio::test]
async fn tenants_without_limits_of_their_own_follow_the_platform_defaults() {
    let dir = tempfile::tempdir().expect("tempdir");
    let control = common::Control::start_with(
        &dir.path().join("control"),
        common::free_port(),
        &["--default-public-per-ip", "1/3", "--default-auth-failures-per-minute", "7"],
    )
    .await;
    let edge = common::Edge::start(&control.url, &dir.path().join("edge")).await;
    let admin = Api::admin(&control.url);
    let tenant = admin.tenant("defaults").await;
    let shown = tenant.ok("GET", "/v1/tenant", None, 200).await;
    assert_eq!(shown["rate_limits"]["public_per_ip"], json!({"rps": 1, "burst": 3}));
    assert_eq!(shown["rate_limits"]["auth_failures_per_ip"], json!({"per_minute": 7}));

    let fake = FakeSandbox::start(sandbox_ip(), 0).await;
    let sb =
        tenant.sandbox(json!({"address": fake.addr.ip().to_string(), "default_visibility": "public"})).await;
    let url = edge.url(&format!("{}-{}.sandbox.localhost", fake.port(), sb["id"].as_str().unwrap()), "/");
    let client = client_from(&edge, "127.0.1.200");
    until_status(&client, &url, 200, Duration::from_secs(2)).await;
    let (passed, _) = until_limited(&client, &url, 20).await;
    assert!(passed <= 3, "the default burst of 3 applies, {passed} passed");

    // A tenant's own policy replaces the default, once the edge has it.
    let before = edge.config_version().await;
    set_limits(
        &tenant,
        json!({
            "public_per_ip": {"rps": 1000, "burst": 1000},
            "private_per_token": {"rps": 1000, "burst": 1000},
            "auth_failures_per_ip": {"per_minute": 100}
        }),
    )
    .await;
    let edge_ref = &edge;
    common::wait_until("the edge to apply the tenant's policy", Duration::from_secs(5), || async move {
        edge_ref.config_version().await > before
    })
    .await;
    let other = client_from(&edge, "127.0.1.201");
    for _ in 0..10 {
        assert_eq!(get(&other, &url).await.0, 200);
    }
}

#[test]
fn bad_default_limit_flags_are_refused_with_a_clear_message() {
    let out = common::portico()
        .args(["control", "--check", "--default-public-per-ip", "fast"])
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("RPS/BURST"), "{err}");
}

#[tokio::test]
async fn decoy_credentials_buy_no_budget_and_count_as_failed_guesses() {
    let stack = Stack::start().await;
    let site = site(&stack, limits((1000, 1000), (1, 3), 1000)).await;
    let (host, token) = &site.private[0];
    let url = |decoy: usize| stack.edge.url(host, &format!("/?preview_token=decoy-{decoy}-0000000000"));
    let valid = [("x-portico-preview-token", token.as_str())];

    // A fresh decoy ahead of the valid credential on every request: the budget is the valid one's.
    let client = client_from(&stack.edge, "127.0.1.2");
    let mut passed = 0;
    for decoy in 0..10 {
        match get_with(&client, &url(decoy), &valid).await.0 {
            200 => passed += 1,
            429 => break,
            other => panic!("unexpected {other}"),
        }
    }
    assert!((3..=6).contains(&passed), "the accepted credential's budget (burst 3) applies: {passed} passed");

    // Each decoy is a failed guess for its IP, even when the request itself passed.
    set_limits(&site.tenant, limits((1000, 1000), (1000, 1000), 3)).await;
    stack.synced().await;
    let (host, token) = &site.private[1];
    let url = |decoy: usize| stack.edge.url(host, &format!("/?preview_token=decoy-{decoy}-0000000000"));
    let valid = [("x-portico-preview-token", token.as_str())];
    let mallory = client_from(&stack.edge, "127.0.1.3");
    for decoy in 100..103 {
        assert_eq!(get_with(&mallory, &url(decoy), &valid).await.0, 200);
    }
    let (status, _) = get_with(&mallory, &stack.edge.url(host, "/"), &valid).await;
    assert_eq!(status, 429, "three decoys spent the IP's failure budget");
}
