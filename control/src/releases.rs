//! Static releases: `.tar.gz` archives checked once on upload and kept content-addressed in the database
//! (`release_data`, keyed by SHA-256), so the same release uploaded twice (by anyone) is stored once and
//! every control replica can hand it to an edge.

use std::io::Read;
use std::path::{Component, Path};

use sqlx::AnyPool;

/// Limits on one archive (`control --release-max-bytes`, `--release-max-files`).
#[derive(Clone, Copy, Debug)]
pub struct ReleaseLimits {
    /// The `.tar.gz` itself.
    pub max_bytes: u64,
    /// Regular files in it.
    pub max_files: u64,
}

impl Default for ReleaseLimits {
    fn default() -> Self {
        Self { max_bytes: 100 * 1024 * 1024, max_files: 10_000 }
    }
}

/// Unpacked, an archive may hold this many times its packed size at most: a gzip bomb stops here.
const MAX_EXPANSION: u64 = 20;

/// Why an archive is refused; each message is shown to the uploader (422).
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("the body's SHA-256 is {actual}, not the {expected} named in the URL")]
    HashMismatch { expected: String, actual: String },
    #[error("the archive is larger than {0} bytes")]
    TooLarge(u64),
    #[error("the archive unpacks to more than {0} bytes")]
    TooLargeUnpacked(u64),
    #[error("the archive holds more than {0} files")]
    TooManyFiles(u64),
    #[error("not a gzip-compressed tar archive: {0}")]
    Unreadable(String),
    #[error("entry {0:?} has an absolute path")]
    AbsolutePath(String),
    #[error("entry {0:?} climbs out of the release with '..'")]
    ParentDir(String),
    #[error("entry {0:?} is a link; releases hold regular files and directories only")]
    Link(String),
    #[error("entry {0:?} is neither a regular file nor a directory")]
    Unsupported(String),
    #[error("entry {0:?} has a name that cannot be served (empty, NUL or backslash)")]
    BadName(String),
}

/// What an accepted archive holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checked {
    pub files: u64,
    pub unpacked_bytes: u64,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
}

/// A release id as it may appear in a URL: 64 lowercase hex digits.
pub fn is_release_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Reads the whole archive once, refusing anything an edge could not unpack safely.
pub fn check(expected_sha256: &str, bytes: &[u8], limits: ReleaseLimits) -> Result<Checked, ReleaseError> {
    if bytes.len() as u64 > limits.max_bytes {
        return Err(ReleaseError::TooLarge(limits.max_bytes));
    }
    let actual = sha256_hex(bytes);
    if actual != expected_sha256 {
        return Err(ReleaseError::HashMismatch { expected: expected_sha256.to_string(), actual });
    }
    let max_unpacked = (bytes.len() as u64).saturating_mul(MAX_EXPANSION).max(1024 * 1024);
    let unreadable = |e: std::io::Error| ReleaseError::Unreadable(e.to_string());
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    let mut checked = Checked { files: 0, unpacked_bytes: 0 };
    for entry in archive.entries().map_err(unreadable)? {
        let mut entry = entry.map_err(unreadable)?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            continue;
        }
        check_path(&raw)?;
        if kind.is_symlink() || kind.is_hard_link() {
            return Err(ReleaseError::Link(raw));
        }
        if kind.is_dir() {
            continue;
        }
        if !kind.is_file() && kind != tar::EntryType::Continuous {
            return Err(ReleaseError::Unsupported(raw));
        }
        checked.files += 1;
        if checked.files > limits.max_files {
            return Err(ReleaseError::TooManyFiles(limits.max_files));
        }
        // Read the data rather than trusting the header: a corrupt stream must fail here, not at an edge.
        let n = std::io::copy(&mut (&mut entry).take(max_unpacked + 1), &mut std::io::sink())
            .map_err(unreadable)?;
        checked.unpacked_bytes += n;
        if checked.unpacked_bytes > max_unpacked {
            return Err(ReleaseError::TooLargeUnpacked(max_unpacked));
        }
    }
    Ok(checked)
}

/// An entry's path must stay inside the release: relative, no `..`, a servable name.
fn check_path(raw: &str) -> Result<(), ReleaseError> {
    if raw.is_empty() || raw.contains('\0') || raw.contains('\\') {
        return Err(ReleaseError::BadName(raw.to_string()));
    }
    for c in Path::new(raw).components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => return Err(ReleaseError::ParentDir(raw.to_string())),
            Component::RootDir | Component::Prefix(_) => {
                return Err(ReleaseError::AbsolutePath(raw.to_string()))
            }
        }
    }
    Ok(())
}

/// Stores the archive unless it is already there; `true` when this call stored it.
pub async fn store(pool: &AnyPool, sha256: &str, bytes: &[u8], now_ms: i64) -> sqlx::Result<bool> {
    // Already stored: do not send the bytes again.
    if exists(pool, sha256).await? {
        return Ok(false);
    }
    let inserted = sqlx::query(
        "INSERT INTO release_data (sha256, data, created_at) VALUES ($1, $2, $3) ON CONFLICT (sha256) DO NOTHING",
    )
    .bind(sha256)
    .bind(bytes)
    .bind(now_ms)
    .execute(pool)
    .await?;
    Ok(inserted.rows_affected() > 0)
}

async fn exists(pool: &AnyPool, sha256: &str) -> sqlx::Result<bool> {
    let found: Option<String> = sqlx::query_scalar("SELECT sha256 FROM release_data WHERE sha256 = $1")
        .bind(sha256)
        .fetch_optional(pool)
        .await?;
    Ok(found.is_some())
}

/// The archive as uploaded, or `None` when no release has this hash.
pub async fn read(pool: &AnyPool, sha256: &str) -> sqlx::Result<Option<Vec<u8>>> {
    sqlx::query_scalar("SELECT data FROM release_data WHERE sha256 = $1")
        .bind(sha256)
        .fetch_optional(pool)
        .await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

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

    fn checked(bytes: &[u8]) -> Result<Checked, ReleaseError> {
        check(&sha256_hex(bytes), bytes, ReleaseLimits { max_bytes: 1 << 20, max_files: 3 })
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
}
