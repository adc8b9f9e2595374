#![allow(clippy::unwrap_used)]
use std::io::Write;

use super::archive::{EXPANSION_FLOOR, MAX_EXPANSION, MAX_LONG_NAME, MAX_PAX};
use super::store::CHUNK;
use super::*;

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
}

fn archive(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    for (name, kind, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        // Written raw: the builder's own path checks would refuse the hostile names tested here.
        let bytes = name.as_bytes();
        h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
        if kind.is_symlink() {
            h.set_link_name("/etc/passwd").unwrap();
        }
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

/// A raw tar header block: `name`, `kind`, `size` (octal), ustar magic, checksum.
fn header(name: &str, kind: u8, size: u64) -> [u8; 512] {
    let mut h = tar::Header::new_ustar();
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_entry_type(tar::EntryType::new(kind));
    h.set_size(size);
    h.set_mode(0o644);
    h.set_cksum();
    *h.as_bytes()
}

/// Gzips `blocks` (each padded to 512 bytes) plus the end-of-archive marker.
fn gz(blocks: &[&[u8]]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    for b in blocks {
        e.write_all(b).unwrap();
        e.write_all(&vec![0; (512 - b.len() % 512) % 512]).unwrap();
    }
    e.write_all(&[0; 1024]).unwrap();
    e.finish().unwrap()
}

fn pax(records: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in records {
        let body = format!(" {k}={v}\n");
        let mut len = body.len() + 1;
        while format!("{len}{body}").len() != len {
            len += 1;
        }
        out.extend_from_slice(format!("{len}{body}").as_bytes());
    }
    out
}

const LIMITS: ReleaseLimits = ReleaseLimits { max_bytes: 1 << 20, max_files: 3 };

/// The upload as the handler runs it: intake (size, hash) and the streaming check over the same bytes.
fn check(expected_sha256: &str, bytes: &[u8], limits: ReleaseLimits) -> Result<Checked, ReleaseError> {
    let mut intake = Intake::new(limits);
    for chunk in bytes.chunks(1000) {
        intake.push(chunk)?;
    }
    let checked = check_stream(bytes, limits)?;
    intake.finish(expected_sha256)?;
    Ok(checked)
}

fn checked(bytes: &[u8]) -> Result<Checked, ReleaseError> {
    check(&sha256_hex(bytes), bytes, LIMITS)
}

#[test]
fn nested_files_and_directories_are_accepted() {
    let a = archive(&[
        ("index.html", tar::EntryType::Regular, b"hi"),
        ("docs/", tar::EntryType::Directory, b""),
        ("docs/a/b.css", tar::EntryType::Regular, b"body{}"),
    ]);
    assert_eq!(checked(&a).unwrap(), Checked { files: 2, unpacked_bytes: 8 });
}

#[test]
fn hostile_entries_are_refused_with_a_reason() {
    type Case = (&'static str, tar::EntryType, fn(&ReleaseError) -> bool);
    let cases: [Case; 5] = [
        ("/etc/x", tar::EntryType::Regular, |e| matches!(e, ReleaseError::AbsolutePath(_))),
        ("a/../../x", tar::EntryType::Regular, |e| matches!(e, ReleaseError::ParentDir(_))),
        ("link", tar::EntryType::Symlink, |e| matches!(e, ReleaseError::Link(_))),
        ("hard", tar::EntryType::Link, |e| matches!(e, ReleaseError::Link(_))),
        ("fifo", tar::EntryType::Fifo, |e| matches!(e, ReleaseError::Unsupported(_))),
    ];
    for (name, kind, want) in cases {
        let err = checked(&archive(&[(name, kind, b"")])).unwrap_err();
        assert!(want(&err), "{name}: {err}");
    }
}

#[test]
fn limits_and_hash_are_enforced() {
    let four = archive(&[
        ("a", tar::EntryType::Regular, b"1"),
        ("b", tar::EntryType::Regular, b"2"),
        ("c", tar::EntryType::Regular, b"3"),
        ("d", tar::EntryType::Regular, b"4"),
    ]);
    assert!(matches!(checked(&four), Err(ReleaseError::TooManyFiles(3))));
    let one = archive(&[("a", tar::EntryType::Regular, b"1")]);
    assert!(matches!(
        check(&"0".repeat(64), &one, ReleaseLimits::default()),
        Err(ReleaseError::HashMismatch { .. })
    ));
    let small = ReleaseLimits { max_bytes: 10, max_files: 10 };
    assert!(matches!(check(&sha256_hex(&one), &one, small), Err(ReleaseError::TooLarge(10))));
    assert!(matches!(checked(b"not gzip"), Err(ReleaseError::Unreadable(_))));
}

#[test]
fn directories_count_against_the_entry_limit() {
    let dirs = archive(&[
        ("a/", tar::EntryType::Directory, b""),
        ("b/", tar::EntryType::Directory, b""),
        ("c/", tar::EntryType::Directory, b""),
        ("d/", tar::EntryType::Directory, b""),
    ]);
    assert!(matches!(checked(&dirs), Err(ReleaseError::TooManyFiles(3))));
}

#[test]
fn extension_headers_are_capped_before_their_data_is_read() {
    // Claims 1 GiB of name but carries none of it: refused from the header alone.
    let long = gz(&[&header("././@LongLink", b'L', 1 << 30)]);
    let err = checked(&long).unwrap_err();
    assert!(
        matches!(err, ReleaseError::HeaderTooLarge { what: "GNU long name", size: 1_073_741_824, max: 4096 }),
        "{err}"
    );
    let link = gz(&[&header("././@LongLink", b'K', MAX_LONG_NAME + 1)]);
    assert!(matches!(checked(&link), Err(ReleaseError::HeaderTooLarge { .. })));
    let pax_block = gz(&[&header("pax", b'x', MAX_PAX + 1)]);
    assert!(matches!(checked(&pax_block), Err(ReleaseError::HeaderTooLarge { max: MAX_PAX, .. })));
}

#[test]
fn long_names_and_pax_paths_are_the_paths_checked() {
    // What `tar` (and so the edge) would unpack is the long name / PAX path, not the header's own name.
    let name = b"a/../../escape\0";
    let long = gz(&[&header("././@LongLink", b'L', name.len() as u64), name, &header("ok", b'0', 0)]);
    let err = checked(&long).unwrap_err();
    assert!(matches!(&err, ReleaseError::ParentDir(p) if p == "a/../../escape"), "{err}");
    let records = pax(&[("path", "/etc/cron.d/x")]);
    let pax_path = gz(&[&header("pax", b'x', records.len() as u64), &records, &header("ok", b'0', 0)]);
    assert!(matches!(checked(&pax_path), Err(ReleaseError::AbsolutePath(_))));
    // An accepted long name, and a PAX size that overrides the header's (as `tar` reads it).
    let deep = format!("{}/index.html", "d".repeat(200));
    let records = pax(&[("size", "3")]);
    let ok = gz(&[
        &header("././@LongLink", b'L', deep.len() as u64),
        deep.as_bytes(),
        &header("pax", b'x', records.len() as u64),
        &records,
        &header("x", b'0', 0),
        b"abc",
    ]);
    assert_eq!(checked(&ok).unwrap(), Checked { files: 1, unpacked_bytes: 3 });
    // …and `tar` reads it the same way.
    let mut a = tar::Archive::new(flate2::read::GzDecoder::new(&ok[..]));
    let e = a.entries().unwrap().next().unwrap().unwrap();
    assert_eq!((e.path_bytes().into_owned(), e.size()), (deep.clone().into_bytes(), 3));
    // Two long names for one entry, or one describing nothing, are refused as `tar` refuses them.
    let two = gz(&[&header("L", b'L', 1), b"a", &header("L", b'L', 1), b"b", &header("x", b'0', 0)]);
    assert!(matches!(checked(&two), Err(ReleaseError::Unreadable(_))));
    let dangling = gz(&[&header("L", b'L', 1), b"a"]);
    assert!(matches!(checked(&dangling), Err(ReleaseError::Unreadable(_))));
}

#[test]
fn a_compression_bomb_stops_at_the_expansion_bound() {
    let size = 2 * EXPANSION_FLOOR;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(&header("zeros.bin", b'0', size)).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..size >> 20 {
        e.write_all(&zeros).unwrap();
    }
    let bomb = e.finish().unwrap();
    let limits = ReleaseLimits { max_bytes: 1 << 30, max_files: 10 };
    let err = check(&sha256_hex(&bomb), &bomb, limits).unwrap_err();
    match err {
        ReleaseError::Expands { ratio: MAX_EXPANSION, unpacked } => {
            assert!(unpacked <= EXPANSION_FLOOR.max(bomb.len() as u64 * MAX_EXPANSION) + 64 * 1024)
        }
        e => panic!("{e}"),
    }
}

#[test]
fn bad_checksums_and_truncation_are_refused() {
    let mut h = header("a", b'0', 1);
    h[0] = b'b';
    assert!(matches!(checked(&gz(&[&h, b"x"])), Err(ReleaseError::Unreadable(_))));
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(&header("a", b'0', 4096)).unwrap();
    e.write_all(b"short").unwrap();
    let cut = e.finish().unwrap();
    assert!(matches!(checked(&cut), Err(ReleaseError::Unreadable(_))));
}

async fn spooled(bytes: &[u8]) -> Spool {
    let mut spool = Spool::new().await.unwrap();
    for part in bytes.chunks(100_000) {
        spool.write(part).await.unwrap();
    }
    spool
}

async fn read_back(pool: &sqlx::AnyPool, sha: &str) -> Vec<u8> {
    use futures_util::TryStreamExt;
    match find(pool, sha).await.unwrap().unwrap() {
        Stored::Chunks { count, len } => {
            let parts: Vec<_> = chunks(pool.clone(), sha.to_string(), count).try_collect().await.unwrap();
            assert!(parts.iter().all(|p| p.len() <= CHUNK), "no chunk above {CHUNK} bytes");
            let whole = parts.concat();
            assert_eq!(whole.len() as u64, len);
            whole
        }
        Stored::Whole(bytes) => bytes,
    }
}

#[tokio::test]
async fn an_archive_is_stored_in_chunks_once_and_read_back_in_order() {
    let pool = crate::db::open("sqlite::memory:").await.unwrap();
    // Two and a half chunks, each byte telling its place.
    let bytes: Vec<u8> = (0..CHUNK * 5 / 2).map(|i| (i % 251) as u8).collect();
    let sha = sha256_hex(&bytes);
    assert!(store(&pool, &sha, &mut spooled(&bytes).await, 1).await.unwrap());
    assert_eq!(find(&pool, &sha).await.unwrap(), Some(Stored::Chunks { count: 3, len: bytes.len() as u64 }));
    assert_eq!(read_back(&pool, &sha).await, bytes);
    // The same archive again: nothing more stored.
    assert!(!store(&pool, &sha, &mut spooled(&bytes).await, 2).await.unwrap());
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM release_chunks").fetch_one(&pool).await.unwrap();
    assert_eq!(rows, 3);
    assert_eq!(find(&pool, &"0".repeat(64)).await.unwrap(), None);
}

#[tokio::test]
async fn an_archive_stored_whole_before_chunks_is_still_read() {
    let pool = crate::db::open("sqlite::memory:").await.unwrap();
    let bytes = archive(&[("index.html", tar::EntryType::Regular, b"<h1>old</h1>")]);
    let sha = sha256_hex(&bytes);
    sqlx::query("INSERT INTO release_data (sha256, data, created_at) VALUES ($1, $2, 0)")
        .bind(&sha)
        .bind(&bytes[..])
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(find(&pool, &sha).await.unwrap(), Some(Stored::Whole(bytes.clone())));
    assert_eq!(read_back(&pool, &sha).await, bytes);
}
