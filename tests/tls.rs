//! HTTPS at the edge, end to end: certificates uploaded through the API and dropped into `--certs-dir`,
//! SNI selection, ALPN, WebSocket over TLS, the HTTP→HTTPS redirect, preview-domain verification against
//! a DNS server on loopback, and ACME against a real ACME server (Debian's `pebble`, with
//! `pebble-challtestsrv` as the DNS server both pebble and control ask).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::sandbox::{header, FakeSandbox};
use common::{free_port, sandbox_ip, wait_until, Api, Control, Edge, Proc, Stack};
use futures_util::{SinkExt, StreamExt};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::RootCertStore;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const CNAME_TARGET: &str = "edge.portico.test";

/// A CA made for one test.
struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "Portico test CA");
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("ca");
        TestCa { issuer }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf certificate for `names` and its key, as PEM.
    fn leaf(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("params");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        (cert.pem(), key.serialize_pem())
    }

    fn roots(&self) -> RootCertStore {
        roots_from_pem(&self.pem())
    }
}

fn roots_from_pem(pem: &str) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    for cert in rustls_pemfile_certs(pem) {
        roots.add(cert).expect("root");
    }
    roots
}

fn rustls_pemfile_certs(pem: &str) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes()).map(|c| c.expect("pem")).collect()
}

fn leaf_der(pem: &str) -> Vec<u8> {
    rustls_pemfile_certs(pem)[0].to_vec()
}

/// What one handshake showed: the leaf served and the protocol negotiated by ALPN.
struct Handshake {
    leaf: Vec<u8>,
    alpn: Option<Vec<u8>>,
}

async fn handshake(addr: SocketAddr, sni: &str, roots: &RootCertStore) -> Result<Handshake, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?;
    let tls = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let (_, conn) = tls.get_ref();
    let leaf = conn.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).unwrap_or_default();
    Ok(Handshake { leaf, alpn: conn.alpn_protocol().map(|p| p.to_vec()) })
}

/// Waits until a handshake for `sni` shows `want` as its leaf.
async fn until_served(addr: SocketAddr, sni: &str, roots: &RootCertStore, want: &[u8], timeout: Duration) {
    wait_until(&format!("{sni} to be served its certificate"), timeout, || async {
        handshake(addr, sni, roots).await.is_ok_and(|h| h.leaf == want)
    })
    .await;
}

/// An HTTPS client trusting `roots_pem` that sends every host to `addr`, offering h2 and http/1.1.
fn https_client(addr: SocketAddr, roots_pem: &str) -> reqwest::Client {
    let mut builder =
        reqwest::Client::builder().tls_built_in_root_certs(false).redirect(reqwest::redirect::Policy::none());
    for cert in reqwest::Certificate::from_pem_bundle(roots_pem.as_bytes()).expect("roots") {
        builder = builder.add_root_certificate(cert);
    }
    struct To(SocketAddr);
    impl reqwest::dns::Resolve for To {
        fn resolve(&self, _: reqwest::dns::Name) -> reqwest::dns::Resolving {
            let addr = self.0;
            Box::pin(async move { Ok(Box::new(std::iter::once(addr)) as reqwest::dns::Addrs) })
        }
    }
    builder.dns_resolver(Arc::new(To(addr))).build().expect("client")
}

/// A control and an HTTPS edge (with `edge_extra` flags) on loopback.
struct TlsStack {
    stack: Stack,
    https: SocketAddr,
}

async fn tls_stack(control_extra: &[&str], edge_extra: &[&str]) -> TlsStack {
    let dir = tempfile::tempdir().expect("tempdir");
    let control = Control::start_with(&dir.path().join("control"), free_port(), control_extra).await;
    let https: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let mut args = vec!["--https".to_string(), https.to_string()];
    args.extend(edge_extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let edge = Edge::start_with(&control.url, &dir.path().join("edge"), &args).await;
    let admin = Api::admin(&control.url);
    TlsStack { stack: Stack { dir, control, edge, admin }, https }
}

async fn put_cert(admin: &Api, hostname: &str, cert: &str, key: &str, want: u16) -> Value {
    admin
        .ok(
            "PUT",
            &format!("/v1/certificates/{hostname}"),
            Some(json!({"cert_pem": cert, "key_pem": key})),
            want,
        )
        .await
}

#[tokio::test]
async fn sni_picks_the_exact_certificate_over_the_wildcard_and_unknown_names_fail_the_handshake() {
    let t = tls_stack(&[], &[]).await;
    let ca = TestCa::new();
    let (wild_cert, wild_key) = ca.leaf(&["*.apps.example.test"]);
    let (exact_cert, exact_key) = ca.leaf(&["special.apps.example.test"]);
    let shown = put_cert(&t.stack.admin, "*.apps.example.test", &wild_cert, &wild_key, 200).await;
    assert_eq!(shown["names"], json!(["*.apps.example.test"]));
    put_cert(&t.stack.admin, "special.apps.example.test", &exact_cert, &exact_key, 200).await;

    let roots = ca.roots();
    until_served(
        t.https,
        "special.apps.example.test",
        &roots,
        &leaf_der(&exact_cert),
        Duration::from_secs(5),
    )
    .await;
    let other = handshake(t.https, "other.apps.example.test", &roots).await.expect("wildcard serves");
    assert_eq!(other.leaf, leaf_der(&wild_cert));

    for unknown in ["unknown.example.test", "a.b.apps.example.test", "apps.example.test"] {
        let err = handshake(t.https, unknown, &roots).await.err();
        assert!(err.is_some(), "{unknown}: the handshake must fail rather than show another certificate");
    }

    // Key material never comes back, and what does not fit is refused with the field named.
    let listed = t.stack.admin.ok("GET", "/v1/certificates", None, 200).await.to_string();
    assert!(!listed.contains("PRIVATE KEY") && listed.contains("special.apps.example.test"), "{listed}");
    let (_, other_key) = ca.leaf(&["special.apps.example.test"]);
    let refused = put_cert(&t.stack.admin, "special.apps.example.test", &exact_cert, &other_key, 422).await;
    assert!(refused.to_string().contains("key_pem"), "{refused}");
    let refused = put_cert(&t.stack.admin, "elsewhere.example.test", &exact_cert, &exact_key, 422).await;
    assert!(refused.to_string().contains("not elsewhere.example.test"), "{refused}");
    let tenant = t.stack.admin.tenant("not-admin").await;
    let (status, _) = tenant.call("GET", "/v1/certificates", None).await;
    assert!(status == 401 || status == 403, "certificates are the admin's: {status}");

    // Deleting the exact certificate leaves the wildcard serving that name.
    t.stack.admin.ok("DELETE", "/v1/certificates/special.apps.example.test", None, 204).await;
    until_served(t.https, "special.apps.example.test", &roots, &leaf_der(&wild_cert), Duration::from_secs(5))
        .await;

    assert_eq!(t.stack.edge.metric("portico_certificates{state=\"served\"}").await, Some(1.0));
    let log = t.stack.edge.log();
    assert!(
        !log.contains("PRIVATE KEY") && !log.contains(wild_key.lines().nth(1).unwrap_or("-")),
        "keys logged"
    );
}

#[tokio::test]
async fn https_proxies_with_h2_negotiated_websockets_and_redirects_plain_http_for_certified_hosts() {
    let t = tls_stack(&[], &["--redirect-https"]).await;
    let ca = TestCa::new();
    let (cert, key) = ca.leaf(&["*.sandbox.localhost"]);
    put_cert(&t.stack.admin, "*.sandbox.localhost", &cert, &key, 200).await;
    let tenant = t.stack.admin.tenant("acme").await;
    let fake = FakeSandbox::start(sandbox_ip(), 0).await;
    let sb =
        tenant.sandbox(json!({"address": fake.addr.ip().to_string(), "default_visibility": "public"})).await;
    let id = sb["id"].as_str().expect("id").to_string();
    t.stack.synced().await;
    let host = format!("{}-{id}.sandbox.localhost", fake.port());
    until_served(t.https, &host, &ca.roots(), &leaf_der(&cert), Duration::from_secs(5)).await;

    // h2 is what ALPN picks, and the request goes through the whole pipeline over it.
    let shake = handshake(t.https, &host, &ca.roots()).await.expect("handshake");
    assert_eq!(shake.alpn.as_deref(), Some(&b"h2"[..]));
    let client = https_client(t.https, &ca.pem());
    let resp =
        client.get(format!("https://{host}:{}/over/tls?x=1", t.https.port())).send().await.expect("https");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let echo: Value = resp.json().await.expect("json");
    assert_eq!(echo["uri"], "/over/tls?x=1");
    assert_eq!(header(&echo, "x-forwarded-proto"), Some("https"));

    // WebSocket (hot reload) over TLS, HTTP/1.1 upgrade.
    let tls = {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(ca.roots())
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tcp = tokio::net::TcpStream::connect(t.https).await.expect("tcp");
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from(host.clone()).expect("name"), tcp)
            .await
            .expect("tls")
    };
    let req = format!("wss://{host}:{}/ws", t.https.port()).into_client_request().expect("ws request");
    let (mut ws, resp) = tokio_tungstenite::client_async(req, tls).await.expect("upgrade over TLS");
    assert_eq!(resp.status(), 101);
    let first = ws.next().await.expect("message").expect("ok");
    assert!(matches!(first, Message::Text(ref t) if t.starts_with("host=")), "{first:?}");
    ws.send(Message::Text("reload".into())).await.expect("send");
    assert_eq!(ws.next().await.expect("echo").expect("ok"), Message::Text("reload".into()));
    ws.close(None).await.expect("close");

    // Plain HTTP: a host with a certificate is redirected; one without stays on HTTP.
    let plain = t.stack.edge.client();
    let resp = plain.get(t.stack.edge.url(&host, "/page?q=1")).send().await.expect("http");
    assert_eq!(resp.status(), 308);
    assert_eq!(resp.headers()["location"], format!("https://{host}:{}/page?q=1", t.https.port()).as_str());
    let uncertified = format!("sb-{id}-p{}.workers.localhost", fake.port());
    let resp = plain.get(t.stack.edge.url(&uncertified, "/")).send().await.expect("http");
    assert_eq!(resp.status(), 200);
    // ACME challenges are answered on plain HTTP whatever the host, never redirected.
    let resp =
        plain.get(t.stack.edge.url(&host, "/.well-known/acme-challenge/unknown")).send().await.expect("http");
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn a_certificate_dropped_into_the_certs_dir_is_served_within_two_seconds_and_stops_when_removed() {
    let certs = tempfile::tempdir().expect("certs dir");
    let t = tls_stack(&[], &["--certs-dir", certs.path().to_str().expect("utf-8")]).await;
    let ca = TestCa::new();
    let roots = ca.roots();
    assert!(handshake(t.https, "files.example.test", &roots).await.is_err());

    let (cert, key) = ca.leaf(&["files.example.test"]);
    write_private(&certs.path().join("whatever-name.key"), &key);
    let started = Instant::now();
    std::fs::write(certs.path().join("whatever-name.crt"), &cert).expect("write");
    let deadline = started + Duration::from_secs(2);
    let mut served = false;
    while Instant::now() < deadline {
        if handshake(t.https, "files.example.test", &roots).await.is_ok_and(|h| h.leaf == leaf_der(&cert)) {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served, "not served within 2 s of the file appearing");

    // One `.pem` with chain and key works as well, named by its SAN whatever the file is called.
    let (cert2, key2) = ca.leaf(&["pem.example.test"]);
    write_private(&certs.path().join("bundle.pem"), &format!("{cert2}{key2}"));
    until_served(t.https, "pem.example.test", &roots, &leaf_der(&cert2), Duration::from_secs(2)).await;

    std::fs::remove_file(certs.path().join("whatever-name.crt")).expect("rm");
    wait_until("the removed certificate to stop serving", Duration::from_secs(2), || async {
        handshake(t.https, "files.example.test", &roots).await.is_err()
    })
    .await;
}

fn write_private(path: &Path, text: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .expect("open");
    f.write_all(text.as_bytes()).expect("write");
}

// ---------------------------------------------------------------------------------------------------------
// DNS and ACME: pebble-challtestsrv answers DNS (A 127.0.0.1 for every name, CNAMEs on request); pebble
// is the ACME server, validating HTTP-01 against the edge's plain-HTTP port.

const PEBBLE: &str = "/usr/bin/pebble";
const CHALLTESTSRV: &str = "/usr/bin/pebble-challtestsrv";

fn require(path: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: `apt-get install pebble` (Debian's package; .ci/run installs it)"
    );
}

/// pebble-challtestsrv as the DNS server on loopback.
struct Dns {
    _proc: Proc,
    addr: SocketAddr,
    management: String,
}

impl Dns {
    async fn start() -> Dns {
        require(CHALLTESTSRV);
        let port = free_port();
        let management_port = free_port();
        let child = Command::new(CHALLTESTSRV)
            .args(["-dns01", &format!("127.0.0.1:{port}")])
            .args(["-management", &format!("127.0.0.1:{management_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn pebble-challtestsrv");
        let dns = Dns {
            _proc: Proc { child, name: "challtestsrv" },
            addr: format!("127.0.0.1:{port}").parse().expect("addr"),
            management: format!("http://127.0.0.1:{management_port}"),
        };
        let url = format!("{}/set-default-ipv4", dns.management);
        wait_until("challtestsrv to answer", Duration::from_secs(10), || async {
            reqwest::Client::new().post(&url).json(&json!({"ip": "127.0.0.1"})).send().await.is_ok()
        })
        .await;
        dns
    }

    async fn set_cname(&self, host: &str, target: &str) {
        let resp = reqwest::Client::new()
            .post(format!("{}/set-cname", self.management))
            .json(&json!({"host": format!("{host}."), "target": format!("{target}.")}))
            .send()
            .await
            .expect("challtestsrv");
        assert!(resp.status().is_success());
    }

    /// A TXT record, as a domain owner proves a custom domain with.
    async fn set_txt(&self, host: &str, value: &str) {
        let resp = reqwest::Client::new()
            .post(format!("{}/set-txt", self.management))
            .json(&json!({"host": format!("{host}."), "value": value}))
            .send()
            .await
            .expect("challtestsrv");
        assert!(resp.status().is_success());
    }

    async fn clear_cname(&self, host: &str) {
        let resp = reqwest::Client::new()
            .post(format!("{}/clear-cname", self.management))
            .json(&json!({"host": format!("{host}.")}))
            .send()
            .await
            .expect("challtestsrv");
        assert!(resp.status().is_success());
    }
}

/// pebble on loopback, its own HTTPS certificate from a test CA, validating HTTP-01 on `http_port`.
struct Pebble {
    _proc: Proc,
    directory: String,
    management: u16,
    ca_pem: String,
}

impl Pebble {
    async fn start(dir: &Path, dns: &Dns, http_port: u16, port: u16) -> Pebble {
        require(PEBBLE);
        std::fs::create_dir_all(dir).expect("pebble dir");
        let ca = TestCa::new();
        let (cert, key) = ca.leaf(&["localhost", "127.0.0.1"]);
        std::fs::write(dir.join("cert.pem"), cert).expect("write");
        write_private(&dir.join("key.pem"), &key);
        std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write");
        let management = free_port();
        let config = json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{port}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": dir.join("cert.pem"),
            "privateKey": dir.join("key.pem"),
            "httpPort": http_port,
            "tlsPort": free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false
        }});
        std::fs::write(dir.join("pebble.json"), config.to_string()).expect("write");
        let child = Command::new(PEBBLE)
            .arg("-config")
            .arg(dir.join("pebble.json"))
            .args(["-dnsserver", &dns.addr.to_string()])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(common::child_stderr())
            .spawn()
            .expect("spawn pebble");
        let pebble = Pebble {
            _proc: Proc { child, name: "pebble" },
            directory: format!("https://127.0.0.1:{port}/dir"),
            management,
            ca_pem: ca.pem(),
        };
        let client = pebble.client();
        let url = pebble.directory.clone();
        wait_until("pebble to answer", Duration::from_secs(20), || async {
            client.get(&url).send().await.is_ok_and(|r| r.status().is_success())
        })
        .await;
        pebble
    }

    fn client(&self) -> reqwest::Client {
        let cert = reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).expect("ca");
        reqwest::Client::builder().add_root_certificate(cert).build().expect("client")
    }

    /// The root pebble signs issued certificates with (made at its start).
    async fn issuing_root(&self) -> String {
        let url = format!("https://127.0.0.1:{}/roots/0", self.management);
        self.client().get(url).send().await.expect("roots").text().await.expect("pem")
    }
}

async fn acme_stack(dir: &Path, dns: &Dns, pebble_http_port: Option<u16>) -> (TlsStack, Pebble) {
    // Pebble learns the edge's HTTP port from its config, so it starts after the edge; control only
    // reaches pebble when it has something to order.
    let pebble_dir = dir.join("pebble");
    std::fs::create_dir_all(&pebble_dir).expect("dir");
    // Written for real when pebble starts, before anything is ordered.
    let ca_file = pebble_dir.join("ca.pem");
    std::fs::write(&ca_file, "").expect("ca file");
    let pebble_port = free_port();
    let directory = format!("https://127.0.0.1:{pebble_port}/dir");
    let dns_addr = dns.addr.to_string();
    let control_args = [
        "--acme-directory",
        directory.as_str(),
        "--acme-ca-file",
        ca_file.to_str().expect("utf-8"),
        "--dns-resolver",
        dns_addr.as_str(),
        "--cname-target",
        CNAME_TARGET,
    ];
    let t = tls_stack(&control_args, &[]).await;
    let http_port = pebble_http_port.unwrap_or(t.stack.edge.addr.port());
    let pebble = Pebble::start(&pebble_dir, dns, http_port, pebble_port).await;
    (t, pebble)
}

/// A tenant with a verified preview domain and a public preview on it; returns the tenant, the preview
/// host and the fake sandbox serving it.
async fn verified_preview(t: &TlsStack, dns: &Dns, domain: &str) -> (Api, String, FakeSandbox) {
    let tenant = t.stack.admin.tenant("acme").await;
    tenant.ok("POST", "/v1/tenant/preview-domain", Some(json!({"hostname": domain})), 201).await;
    dns.set_cname(domain, CNAME_TARGET).await;
    let v = tenant.ok("POST", "/v1/tenant/preview-domain/verify", None, 200).await;
    assert_eq!(v["status"], "verified", "{v}");
    // Pebble resolves the domain itself by A (challtestsrv answers 127.0.0.1 once the CNAME is gone).
    dns.clear_cname(domain).await;
    let fake = FakeSandbox::start(sandbox_ip(), 0).await;
    let sb =
        tenant.sandbox(json!({"address": fake.addr.ip().to_string(), "default_visibility": "public"})).await;
    let id = sb["id"].as_str().expect("id");
    let preview = tenant
        .ok("POST", &format!("/v1/sandboxes/{id}/previews"), Some(json!({"port": fake.port()})), 201)
        .await;
    let host = format!("{}.{domain}", preview["slug"].as_str().expect("slug"));
    t.stack.synced().await;
    (tenant, host, fake)
}

#[tokio::test]
async fn preview_domain_verification_follows_the_cname_on_the_configured_resolver() {
    let dns = Dns::start().await;
    let dns_addr = dns.addr.to_string();
    let t = tls_stack(&["--dns-resolver", &dns_addr, "--cname-target", CNAME_TARGET], &[]).await;
    let tenant = t.stack.admin.tenant("acme").await;
    let (status, _) = tenant.call("POST", "/v1/tenant/preview-domain/verify", None).await;
    assert_eq!(status, 404, "nothing to verify yet");
    tenant
        .ok("POST", "/v1/tenant/preview-domain", Some(json!({"hostname": "previews.tenant.test"})), 201)
        .await;

    let v = tenant.ok("POST", "/v1/tenant/preview-domain/verify", None, 200).await;
    assert_eq!(v["status"], "pending", "{v}");
    assert!(v["reason"].as_str().unwrap_or("").contains("no CNAME"), "{v}");

    dns.set_cname("previews.tenant.test", "somewhere.else.test").await;
    let v = tenant.ok("POST", "/v1/tenant/preview-domain/verify", None, 200).await;
    assert_eq!(v["status"], "pending", "{v}");
    assert!(v["reason"].as_str().unwrap_or("").contains("somewhere.else.test"), "{v}");

    let fake = FakeSandbox::start(sandbox_ip(), 0).await;
    let sb =
        tenant.sandbox(json!({"address": fake.addr.ip().to_string(), "default_visibility": "public"})).await;
    let preview = tenant
        .ok(
            "POST",
            &format!("/v1/sandboxes/{}/previews", sb["id"].as_str().expect("id")),
            Some(json!({"port": fake.port()})),
            201,
        )
        .await;
    let host = format!("{}.previews.tenant.test", preview["slug"].as_str().expect("slug"));
    t.stack.synced().await;
    let client = t.stack.edge.client();
    let resp = client.get(t.stack.edge.url(&host, "/")).send().await.expect("http");
    assert_eq!(resp.status(), 404, "an unverified domain must not route");

    dns.set_cname("previews.tenant.test", CNAME_TARGET).await;
    let v = tenant.ok("POST", "/v1/tenant/preview-domain/verify", None, 200).await;
    assert_eq!(v["status"], "verified", "{v}");
    assert_eq!(tenant.ok("GET", "/v1/tenant", None, 200).await["preview_domain"]["status"], "verified");
    common::until_status(&client, &t.stack.edge.url(&host, "/"), 200, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn acme_certifies_a_verified_preview_domain_serves_it_over_https_and_renews_it_without_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dns = Dns::start().await;
    let (t, pebble) = acme_stack(dir.path(), &dns, None).await;
    let (tenant, host, _fake) = verified_preview(&t, &dns, "previews.tenant.test").await;

    // Over plain HTTP at once; over HTTPS once ACME has issued the certificate.
    let resp = t.stack.edge.client().get(t.stack.edge.url(&host, "/")).send().await.expect("http");
    assert_eq!(resp.status(), 200);
    wait_until("the preview domain's certificate to be issued", Duration::from_secs(90), || async {
        let v = tenant.ok("GET", "/v1/tenant", None, 200).await;
        let state = &v["preview_domain"]["certificate"]["state"];
        assert_ne!(state, "failed", "{v}");
        state == "issued"
    })
    .await;
    let cert = tenant.ok("GET", "/v1/tenant", None, 200).await["preview_domain"]["certificate"].clone();
    assert!(cert["expires_at"].as_str().is_some_and(|e| e > "2020"), "{cert}");

    let root = pebble.issuing_root().await;
    let roots = roots_from_pem(&root);
    wait_until("the preview host to be served its ACME certificate", Duration::from_secs(90), || async {
        handshake(t.https, &host, &roots).await.is_ok()
    })
    .await;
    let first = handshake(t.https, &host, &roots).await.expect("handshake");
    assert_eq!(first.alpn.as_deref(), Some(&b"h2"[..]));
    let client = https_client(t.https, &root);
    let resp = client.get(format!("https://{host}:{}/", t.https.port())).send().await.expect("https");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let soonest =
        t.stack.edge.metric("portico_certificate_soonest_expiry_timestamp_seconds").await.unwrap_or(0.0);
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs_f64();
    assert!(soonest > now, "a unix time in the future: {soonest}");
    let metrics = t.stack.edge.metrics_text().await;
    assert!(!metrics.contains(&host), "metrics must not name hosts");

    // An early renewal replaces the certificate at the running edge.
    t.stack.admin.ok("POST", &format!("/v1/certificates/{host}/renew"), None, 202).await;
    wait_until("the renewed certificate to be served", Duration::from_secs(90), || async {
        handshake(t.https, &host, &roots).await.is_ok_and(|h| !h.leaf.is_empty() && h.leaf != first.leaf)
    })
    .await;
    let mut edge = t.stack.edge;
    assert!(edge.proc.child.try_wait().expect("edge status").is_none(), "the edge was not restarted");
    edge.proc.kill();
}

#[tokio::test]
async fn a_failed_challenge_shows_failed_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dns = Dns::start().await;
    // Pebble validates on a port where nothing listens: every HTTP-01 challenge fails.
    let (t, _pebble) = acme_stack(dir.path(), &dns, Some(free_port())).await;
    let (tenant, _host, _fake) = verified_preview(&t, &dns, "previews.broken.test").await;
    let deadline = Instant::now() + Duration::from_secs(90);
    let last = loop {
        let cert = tenant.ok("GET", "/v1/tenant", None, 200).await["preview_domain"]["certificate"].clone();
        if cert["state"] == "failed" || Instant::now() > deadline {
            break cert;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(last["state"], "failed", "{last}");
    let reason = last["reason"].as_str().unwrap_or("");
    assert!(reason.contains("acme-challenge") && reason.contains("connection refused"), "{last}");
    // Control's metrics count it by state, never by host.
    let metrics =
        reqwest::get(format!("{}/metrics", tenant.url)).await.expect("metrics").text().await.expect("text");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("portico_control_certificates{state=\"failed\"}") && !l.ends_with(" 0")),
        "{metrics}"
    );
    assert!(!metrics.contains("broken.test"), "{metrics}");
}

#[tokio::test]
async fn acme_certifies_a_deployments_custom_domain_and_serves_it_over_https() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dns = Dns::start().await;
    let (t, pebble) = acme_stack(dir.path(), &dns, None).await;
    let tenant = t.stack.admin.tenant("shop-owner").await;
    let fake = FakeSandbox::start(sandbox_ip(), 0).await;
    let d =
        tenant.ok("POST", "/v1/deployments", Some(json!({"name": "shop", "workspace": "owner"})), 201).await;
    let id = d["id"].as_str().expect("id");
    let v = tenant
        .ok(
            "POST",
            &format!("/v1/deployments/{id}/versions"),
            Some(json!({"instances": [fake.addr.to_string()]})),
            201,
        )
        .await;
    tenant
        .ok("POST", &format!("/v1/deployments/{id}/promote"), Some(json!({"version_id": v["id"]})), 200)
        .await;
    // challtestsrv answers every name with 127.0.0.1, so pebble's HTTP-01 check reaches the edge.
    let host = "shop.custom.test";
    let added = tenant
        .ok("POST", &format!("/v1/deployments/{id}/domains"), Some(json!({"hostname": host})), 201)
        .await;
    assert_eq!(added["status"], "pending", "{added}");
    // No certificate is ordered before the owner proves the domain with the TXT record control asked for.
    let proof = &added["verification"];
    dns.set_txt(proof["name"].as_str().expect("name"), proof["value"].as_str().expect("value")).await;
    let verified = tenant.ok("POST", &format!("/v1/deployments/{id}/domains/{host}/verify"), None, 200).await;
    assert_eq!(verified["status"], "verified", "{verified}");

    wait_until("the custom domain's certificate to be issued", Duration::from_secs(90), || async {
        let d = tenant.ok("GET", &format!("/v1/deployments/{id}"), None, 200).await;
        let state = &d["domains"][0]["certificate"]["state"];
        assert_ne!(state, "failed", "{d}");
        state == "issued"
    })
    .await;
    let root = pebble.issuing_root().await;
    let roots = roots_from_pem(&root);
    wait_until("the custom domain to be served its ACME certificate", Duration::from_secs(90), || async {
        handshake(t.https, host, &roots).await.is_ok()
    })
    .await;
    let resp = https_client(t.https, &root)
        .get(format!("https://{host}:{}/hello", t.https.port()))
        .send()
        .await
        .expect("https");
    assert_eq!(resp.status(), 200);
    let echo: Value = resp.json().await.expect("echo");
    assert_eq!(echo["uri"], "/hello", "the deployment's instance answered over HTTPS");
}
