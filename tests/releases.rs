//! Static releases end to end: upload to control, promote, served by the edge from its state dir.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::{until_status, Api, Control, Stack};
use serde_json::json;

const APP_JS: &str = "export function hello(name) { return `hello ${name}`; }\n";

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A `.tar.gz` of `(path, type, data)` entries; names are written raw so hostile ones can be built too.
fn archive(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut b = tar::Builder::new(gz);
    for (name, kind, data) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(*kind);
        h.set_size(data.len() as u64);
        h.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        if kind.is_symlink() {
            h.set_link_name("../../snapshot.bin").unwrap();
        }
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

fn site() -> Vec<u8> {
    let big = "<p>docs</p>\n".repeat(400);
    archive(&[
        ("index.html", tar::EntryType::Regular, b"<h1>home</h1>"),
        ("404.html", tar::EntryType::Regular, b"<h1>custom not found</h1>"),
        ("docs/", tar::EntryType::Directory, b""),
        ("docs/index.html", tar::EntryType::Regular, big.as_bytes()),
        ("docs/guide/", tar::EntryType::Directory, b""),
        ("docs/guide/page.html", tar::EntryType::Regular, b"<p>nested page</p>"),
        ("assets/app.js", tar::EntryType::Regular, APP_JS.as_bytes()),
    ])
}

async fn upload(api: &Api, bytes: &[u8], sha: &str) -> (u16, serde_json::Value) {
    let resp = reqwest::Client::new()
        .put(format!("{}/v1/releases/{sha}", api.url))
        .bearer_auth(&api.key)
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

/// The archives control's database holds: (sha256, bytes), each reassembled from its chunks in order.
async fn stored(control: &Control) -> Vec<(String, Vec<u8>)> {
    use sqlx::Connection;
    let url = format!("sqlite://{}", control.data_dir.join("portico.db").display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let rows: Vec<(String, Vec<u8>)> = sqlx::query_as(
        "SELECT d.sha256, COALESCE(c.data, d.data) FROM release_data d \
         LEFT JOIN release_chunks c ON c.sha256 = d.sha256 ORDER BY d.sha256, c.seq",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    let mut archives: Vec<(String, Vec<u8>)> = Vec::new();
    for (sha, data) in rows {
        match archives.last_mut() {
            Some((last, bytes)) if *last == sha => bytes.extend(data),
            _ => archives.push((sha, data)),
        }
    }
    archives
}

/// A deployment serving `bytes` as its active release; returns its host.
async fn static_site(stack: &Stack, tenant: &Api, bytes: &[u8]) -> String {
    let sha = sha256_hex(bytes);
    assert_eq!(upload(tenant, bytes, &sha).await.0, 201);
    let host = promote(tenant, &sha).await;
    until_status(&stack.edge.client(), &stack.edge.url(&host, "/"), 200, Duration::from_secs(5)).await;
    host
}

/// A new deployment with the uploaded release `sha` as its active version; returns its host.
async fn promote(tenant: &Api, sha: &str) -> String {
    let d =
        tenant.ok("POST", "/v1/deployments", Some(json!({"name": "site", "workspace": "acme"})), 201).await;
    let id = d["id"].as_str().unwrap();
    let v = tenant
        .ok("POST", &format!("/v1/deployments/{id}/versions"), Some(json!({"release": sha})), 201)
        .await;
    tenant
        .ok("POST", &format!("/v1/deployments/{id}/promote"), Some(json!({"version_id": v["id"]})), 200)
        .await;
    d["hostname"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_static_release_serves_nested_files_with_etags_ranges_and_compression() {
    let stack = Stack::start().await;
    let tenant = stack.admin.tenant("acme").await;
    let bytes = site();
    let host = static_site(&stack, &tenant, &bytes).await;
    // Uploading the same release again stores nothing new: one row, the archive as uploaded.
    let sha = sha256_hex(&bytes);
    assert_eq!(upload(&tenant, &bytes, &sha).await.0, 200);
    assert_eq!(stored(&stack.control).await, [(sha.clone(), bytes.clone())]);
    // Another tenant uploading it too gets its own 201, and still one archive is stored.
    let other = stack.admin.tenant("other").await;
    assert_eq!(upload(&other, &bytes, &sha).await.0, 201);
    assert_eq!(stored(&stack.control).await.len(), 1);
    assert!(!stack.control.data_dir.join("releases").exists(), "nothing on control's disk");

    // Without reqwest's own `Accept-Encoding: gzip` (on since the workspace enabled its `gzip` feature):
    // a compressed response carries a weak validator, and this test asks for compression explicitly below.
    let client = common::builder_to(stack.edge.addr).no_gzip().build().unwrap();
    let url = |path: &str| stack.edge.url(&host, path);
    let root = client.get(url("/")).send().await.unwrap();
    assert_eq!(root.status(), 200);
    assert_eq!(root.headers()["content-type"], "text/html; charset=utf-8");
    assert!(root.headers()["content-security-policy"].to_str().unwrap().contains("frame-ancestors"));
    assert_eq!(root.text().await.unwrap(), "<h1>home</h1>");
    for dir in ["/docs", "/docs/"] {
        let text = client.get(url(dir)).send().await.unwrap().text().await.unwrap();
        assert!(text.starts_with("<p>docs</p>"), "{dir} serves its index.html");
    }
    assert_eq!(
        client.get(url("/docs/guide/page.html")).send().await.unwrap().text().await.unwrap(),
        "<p>nested page</p>"
    );

    let js = client.get(url("/assets/app.js")).send().await.unwrap();
    assert_eq!(js.headers()["content-type"], "text/javascript; charset=utf-8");
    let etag = js.headers()["etag"].to_str().unwrap().to_string();
    assert!(etag.starts_with('"'), "a strong validator: {etag}");
    assert_eq!(js.text().await.unwrap(), APP_JS);
    let cached = client.get(url("/assets/app.js")).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(cached.status(), 304);
    assert!(cached.bytes().await.unwrap().is_empty());

    let head = client.head(url("/assets/app.js")).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], APP_JS.len().to_string());
    assert!(head.bytes().await.unwrap().is_empty());

    let part = client.get(url("/assets/app.js")).header("range", "bytes=7-14").send().await.unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.headers()["content-range"], format!("bytes 7-14/{}", APP_JS.len()));
    assert_eq!(part.text().await.unwrap(), &APP_JS[7..=14]);
    let beyond = client.get(url("/assets/app.js")).header("range", "bytes=9999-").send().await.unwrap();
    assert_eq!(beyond.status(), 416);

    let gz = client.get(url("/docs/")).header("accept-encoding", "gzip").send().await.unwrap();
    assert_eq!(gz.headers()["content-encoding"], "gzip");
    let zipped = gz.bytes().await.unwrap();
    let mut plain = String::new();
    flate2::read::GzDecoder::new(&zipped[..]).read_to_string(&mut plain).unwrap();
    assert_eq!(plain, "<p>docs</p>\n".repeat(400));
    assert!(zipped.len() < plain.len() / 4);
    let br = client.get(url("/docs/")).header("accept-encoding", "br").send().await.unwrap();
    assert_eq!(br.headers()["content-encoding"], "br");

    let missing = client.get(url("/no/such/page")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.text().await.unwrap(), "<h1>custom not found</h1>", "the release's own 404.html");
}

/// Sends `path` byte for byte (no client normalisation) and returns the status and body.
fn raw_get(addr: std::net::SocketAddr, host: &str, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text)
}

#[tokio::test]
async fn no_spelling_of_a_path_escapes_the_release() {
    let stack = Stack::start().await;
    let tenant = stack.admin.tenant("acme").await;
    let host = static_site(&stack, &tenant, &site()).await;
    let attempts = [
        "/../snapshot.bin",
        "/../../snapshot.bin",
        "/docs/../../snapshot.bin",
        "/%2e%2e/snapshot.bin",
        "/%2E%2E/%2e%2e/snapshot.bin",
        "/%2e%2e%2fsnapshot.bin",
        "/docs%2f..%2f..%2f..%2fsnapshot.bin",
        "/..%5csnapshot.bin",
        "/docs\\..\\..\\snapshot.bin",
        "/index.html%00.js",
        "/%00",
        "/%252e%252e/snapshot.bin",
        "/%c0%ae%c0%ae/snapshot.bin",
        "/.%2e/.%2e/snapshot.bin",
    ];
    let addr = stack.edge.addr;
    for path in attempts {
        let host = host.clone();
        let (status, text) = tokio::task::spawn_blocking(move || raw_get(addr, &host, path)).await.unwrap();
        assert!(status == 400 || status == 404, "{path} → {status}: {text}");
        assert!(!text.contains("\"settings\""), "{path} leaked the edge's state: {text}");
    }
    // The release itself is still served.
    assert_eq!(raw_get(addr, &host, "/docs/guide/page.html").0, 200);
}

#[tokio::test]
async fn bad_archives_are_refused_with_422_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let control = Control::start_with(
        &dir.path().join("control"),
        common::free_port(),
        &["--release-max-files", "3", "--release-max-bytes", "4096"],
    )
    .await;
    let tenant = Api::admin(&control.url).tenant("acme").await;
    let file = |name| (name, tar::EntryType::Regular, &b"x"[..]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("absolute", archive(&[file("/etc/cron.d/x")])),
        ("'..'", archive(&[file("a/../../x")])),
        ("link", archive(&[("evil", tar::EntryType::Symlink, &b""[..])])),
        ("hard link", archive(&[("evil", tar::EntryType::Link, &b""[..])])),
        ("more than 3 files", archive(&[file("a"), file("b"), file("c"), file("d")])),
        ("larger than 4096", {
            // Incompressible: random bytes.
            let mut noise = vec![0u8; 20_000];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut noise).unwrap();
            archive(&[("noise.bin", tar::EntryType::Regular, &noise[..])])
        }),
        ("not gzip", b"just some text".to_vec()),
    ];
    for (what, bytes) in &cases {
        let (status, body) = upload(&tenant, bytes, &sha256_hex(bytes)).await;
        assert_eq!(status, 422, "{what}: {body}");
        assert!(
            body["error"]["message"].as_str().unwrap().starts_with("release: "),
            "{what}: a reason: {body}"
        );
    }
    let good = archive(&[file("index.html")]);
    let (status, body) = upload(&tenant, &good, &"0".repeat(64)).await;
    assert_eq!(status, 422, "a hash that does not match the body: {body}");
    let kept = stored(&control).await;
    assert!(kept.is_empty(), "nothing stored: {:?}", kept.iter().map(|(sha, _)| sha).collect::<Vec<_>>());

    // A version cannot name a release that was refused.
    let d =
        tenant.ok("POST", "/v1/deployments", Some(json!({"name": "site", "workspace": "acme"})), 201).await;
    let path = format!("/v1/deployments/{}/versions", d["id"].as_str().unwrap());
    let bad = sha256_hex(&cases[0].1);
    assert_eq!(tenant.call("POST", &path, Some(json!({"release": bad}))).await.0, 422);
}

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// A raw ustar header block.
fn header(name: &str, kind: tar::EntryType, size: u64) -> Vec<u8> {
    let mut h = tar::Header::new_ustar();
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
    h.set_cksum();
    h.as_bytes().to_vec()
}

/// A well-formed gzip of `prefix` followed by `zeros` zero bytes (a whole number of MiB), made without
/// compressing every zero: one MiB of zeros is deflated once, flushed to a byte boundary (so it refers
/// only to itself) and repeated; the trailer's CRC-32 is combined rather than computed over the whole.
fn gz_with_zeros(prefix: &[u8], zeros: u64) -> Vec<u8> {
    use flate2::{Compress, Compression, Crc, FlushCompress};
    assert_eq!(zeros % MIB, 0);
    let deflate = |data: &[u8]| {
        let mut c = Compress::new(Compression::best(), false);
        let mut out = Vec::with_capacity(data.len() + 1024);
        c.compress_vec(data, &mut out, FlushCompress::Sync).unwrap();
        assert_eq!(c.total_in(), data.len() as u64);
        out
    };
    let mib = vec![0u8; MIB as usize];
    let segment = deflate(&mib);
    let mut crc = Crc::new();
    crc.update(prefix);
    let mut crc_mib = Crc::new();
    crc_mib.update(&mib);
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    out.extend(deflate(prefix));
    for _ in 0..zeros / MIB {
        out.extend_from_slice(&segment);
        crc.combine(&crc_mib);
    }
    // The final block: fixed Huffman, end-of-block only.
    out.extend_from_slice(&[0x03, 0x00]);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&crc.amount().to_le_bytes());
    out
}

/// Control's resident set (VmRSS) in bytes.
fn rss(control: &Control) -> u64 {
    rss_of(control.proc.child.id())
}

fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// Runs `work` while a thread samples control's VmRSS every few milliseconds; returns its output and the
/// highest sample.
async fn peak_rss<T>(control: &Control, work: impl std::future::Future<Output = T>) -> (T, u64) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let pid = control.proc.child.id();
    let done = Arc::new(AtomicBool::new(false));
    let sampler = std::thread::spawn({
        let done = done.clone();
        move || {
            let mut peak = rss_of(pid);
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(2));
                peak = peak.max(rss_of(pid));
            }
            peak
        }
    });
    let out = work.await;
    done.store(true, Ordering::Relaxed);
    (out, sampler.join().unwrap())
}

/// Uploads `bomb` and asserts a 422 naming `reason`, nothing stored, and control's memory bounded.
async fn refused_in_bounded_memory(control: &Control, tenant: &Api, bomb: &[u8], reason: &str) {
    // Warm up first: a small valid upload, so the baseline includes what any upload allocates.
    let warm = archive(&[("warm.txt", tar::EntryType::Regular, b"warm")]);
    assert_eq!(upload(tenant, &warm, &sha256_hex(&warm)).await.0, 201);
    let before = rss(control);
    let (status, body) = upload(tenant, bomb, &sha256_hex(bomb)).await;
    let after = rss(control);
    let grew = after.saturating_sub(before);
    eprintln!("{reason}: control's RSS grew by {} KiB for a {}-byte archive", grew / 1024, bomb.len());
    assert!(grew < 64 * MIB, "control grew from {before} to {after} bytes");
    assert_eq!(status, 422, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(reason), "the limit is named: {message}");
    let kept: Vec<_> = stored(control).await.into_iter().map(|(sha, _)| sha).collect();
    assert_eq!(kept, [sha256_hex(&warm)], "nothing stored for the refused archive");
}

#[tokio::test]
async fn a_gnu_long_name_of_a_gibibyte_is_refused_in_bounded_memory() {
    let stack = Stack::start().await;
    let tenant = stack.admin.tenant("acme").await;
    // One 'L' header claiming a 1 GiB name, and the GiB of it: about 1 MB compressed.
    let bomb = gz_with_zeros(&header("././@LongLink", tar::EntryType::GNULongName, GIB), GIB);
    assert!(bomb.len() < 2 * MIB as usize, "{} bytes", bomb.len());
    refused_in_bounded_memory(&stack.control, &tenant, &bomb, "GNU long name").await;

    // A long name under the cap still works: written by `tar`'s builder as a GNU long name, served by the
    // edge, which streamed the archive to disk and kept nothing but the unpacked release.
    let deep = format!("{}/page.html", "long-directory-name".repeat(12));
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut b = tar::Builder::new(gz);
    for (path, data) in [("index.html", &b"<h1>home</h1>"[..]), (deep.as_str(), b"<p>deep</p>")] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, path, data).unwrap();
    }
    let site = b.into_inner().unwrap().finish().unwrap();
    let host = static_site(&stack, &tenant, &site).await;
    let deep_page = stack.edge.client().get(stack.edge.url(&host, &format!("/{deep}"))).send().await.unwrap();
    assert_eq!(deep_page.text().await.unwrap(), "<p>deep</p>");
    let left: Vec<_> = std::fs::read_dir(stack.edge.state_dir.join("releases"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, [sha256_hex(&site)], "no download or archive left beside the release");
}

#[tokio::test]
async fn a_thousand_to_one_compression_bomb_is_refused_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let control = Control::start(&dir.path().join("control")).await;
    let tenant = Api::admin(&control.url).tenant("acme").await;
    // One regular file of a GiB of zeros (the last KiB is the end-of-archive marker).
    let bomb = gz_with_zeros(&header("zeros.bin", tar::EntryType::Regular, GIB - 1024), GIB);
    assert!(GIB / bomb.len() as u64 >= 1000, "a 1,000:1 ratio: {} bytes", bomb.len());
    refused_in_bounded_memory(&control, &tenant, &bomb, "times its compressed size").await;
}

#[tokio::test]
async fn directory_entries_count_against_the_entry_limit() {
    let dir = tempfile::tempdir().unwrap();
    // The default limit (10,000 entries) is in force.
    let control = Control::start(&dir.path().join("control")).await;
    let tenant = Api::admin(&control.url).tenant("acme").await;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    for i in 0..200_000 {
        gz.write_all(&header(&format!("d{i:06}/"), tar::EntryType::Directory, 0)).unwrap();
    }
    gz.write_all(&[0; 1024]).unwrap();
    let dirs = gz.finish().unwrap();
    let (status, body) = upload(&tenant, &dirs, &sha256_hex(&dirs)).await;
    assert_eq!(status, 422, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("more than 10000 entries"), "{message}");
    assert!(stored(&control).await.is_empty());
}

#[tokio::test]
async fn an_80_mib_release_is_stored_and_served_in_bounded_memory() {
    let stack = Stack::start().await;
    let tenant = stack.admin.tenant("acme").await;
    // Four files of 20 MiB of random bytes: incompressible, so the archive is about 80 MiB (under the
    // default `--release-max-bytes` of 100 MiB). Stored rather than deflated, which gzip would end up
    // doing with random bytes anyway, so building it stays quick.
    const FILE: usize = 20 << 20;
    let mut noise = vec![0u8; FILE];
    let gz = flate2::write::GzEncoder::new(
        Vec::with_capacity(4 * FILE + MIB as usize),
        flate2::Compression::none(),
    );
    let mut b = tar::Builder::new(gz);
    let mut h = tar::Header::new_ustar();
    h.set_size(13);
    h.set_mode(0o644);
    b.append_data(&mut h, "index.html", &b"<h1>home</h1>"[..]).unwrap();
    for i in 0..4 {
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut noise).unwrap();
        h.set_size(FILE as u64);
        b.append_data(&mut h, format!("noise/{i}.bin"), &noise[..]).unwrap();
    }
    let site = b.into_inner().unwrap().finish().unwrap();
    assert!(site.len() as u64 > 80 * MIB, "{} bytes", site.len());
    let sha = sha256_hex(&site);

    // Warm up first: a small valid upload, so the baseline includes what any upload allocates.
    let warm = archive(&[("warm.txt", tar::EntryType::Regular, b"warm")]);
    assert_eq!(upload(&tenant, &warm, &sha256_hex(&warm)).await.0, 201);
    let idle = rss(&stack.control);
    let ((status, body), peak) = peak_rss(&stack.control, upload(&tenant, &site, &sha)).await;
    assert_eq!(status, 201, "{body}");
    let grew = peak.saturating_sub(idle);
    eprintln!(
        "upload: control's RSS peaked {} KiB over {} KiB for a {}-byte archive",
        grew / 1024,
        idle / 1024,
        site.len()
    );
    assert!(grew < 64 * MIB, "control grew from {idle} to {peak} bytes during the upload");
    let kept = stored(&stack.control).await;
    let kept: Vec<_> = kept.iter().map(|(sha, bytes)| (sha.as_str(), sha256_hex(bytes))).collect();
    assert!(kept.contains(&(sha.as_str(), sha.clone())), "stored as uploaded");

    // The edge downloads it when a version using it is promoted, and serves its files. Measured against
    // the same idle size: what the upload left behind counts too.
    let (host, peak) = peak_rss(&stack.control, async {
        let host = promote(&tenant, &sha).await;
        until_status(&stack.edge.client(), &stack.edge.url(&host, "/"), 200, Duration::from_secs(60)).await;
        host
    })
    .await;
    let grew = peak.saturating_sub(idle);
    eprintln!("edge download: control's RSS peaked {} KiB over {} KiB", grew / 1024, idle / 1024);
    assert!(grew < 64 * MIB, "control grew from {idle} to {peak} bytes while the edge downloaded");
    let last = stack.edge.client().get(stack.edge.url(&host, "/noise/3.bin")).send().await.unwrap();
    assert_eq!(last.status(), 200);
    let served = last.bytes().await.unwrap();
    assert!(served == noise, "the last file, byte for byte");
}
