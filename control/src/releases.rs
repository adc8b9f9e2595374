//! Static releases: `.tar.gz` archives checked as they are uploaded and kept content-addressed in the
//! database (`release_data` and its `release_chunks`, keyed by SHA-256), so the same release uploaded twice
//! (by anyone) is stored once and every control replica can hand it to an edge.
//!
//! An upload is checked while it streams, in two halves that never see the whole archive at once:
//! [`Intake`] takes the body's bytes as they arrive (SHA-256, `--release-max-bytes`), and
//! [`check_stream`] reads the same bytes through a gzip decoder and a header-at-a-time tar walker
//! (`archive.rs`) that caps long-name and PAX headers before reading them, counts every entry against
//! `--release-max-files`, and stops a compression bomb at 20 times the compressed bytes read so far.
//! Meanwhile the bytes are spooled to an anonymous temporary file ([`Spool`]); once both halves accept the
//! archive it is written to the database a chunk at a time (`store.rs`), and a refused one is dropped with
//! its file, nothing stored.

use std::io::Read;
use std::path::{Component, Path};

mod archive;
mod store;
#[cfg(test)]
mod tests;

pub use store::{chunks, find, store, Spool, Stored};

/// Limits on one archive (`control --release-max-bytes`, `--release-max-files`).
#[derive(Clone, Copy, Debug)]
pub struct ReleaseLimits {
    /// The `.tar.gz` itself.
    pub max_bytes: u64,
    /// Entries in it: files, directories, and anything else a header describes.
    pub max_files: u64,
}

impl Default for ReleaseLimits {
    fn default() -> Self {
        Self { max_bytes: 100 * 1024 * 1024, max_files: 10_000 }
    }
}

/// Why an archive is refused; each message is shown to the uploader (422).
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("the body's SHA-256 is {actual}, not the {expected} named in the URL")]
    HashMismatch { expected: String, actual: String },
    #[error("the archive is larger than {0} bytes")]
    TooLarge(u64),
    #[error(
        "the archive unpacks to more than {ratio} times its compressed size (stopped after {unpacked} \
         bytes unpacked)"
    )]
    Expands { ratio: u64, unpacked: u64 },
    #[error("the archive holds more than {0} entries (files and directories count alike)")]
    TooManyFiles(u64),
    #[error("a {what} of {size} bytes; at most {max} bytes are accepted")]
    HeaderTooLarge { what: &'static str, size: u64, max: u64 },
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
    /// Regular files (directories count against the limit, not here).
    pub files: u64,
    pub unpacked_bytes: u64,
}

/// A release id as it may appear in a URL: 64 lowercase hex digits.
pub fn is_release_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The upload's bytes as they arrive: counted against `--release-max-bytes` and hashed.
pub struct Intake {
    sha256: ring::digest::Context,
    len: u64,
    max: u64,
}

impl Intake {
    pub fn new(limits: ReleaseLimits) -> Self {
        Self { sha256: ring::digest::Context::new(&ring::digest::SHA256), len: 0, max: limits.max_bytes }
    }

    pub fn push(&mut self, bytes: &[u8]) -> Result<(), ReleaseError> {
        self.len += bytes.len() as u64;
        if self.len > self.max {
            return Err(ReleaseError::TooLarge(self.max));
        }
        self.sha256.update(bytes);
        Ok(())
    }

    /// The whole body has arrived: its hash must be the one in the URL.
    pub fn finish(self, expected_sha256: &str) -> Result<(), ReleaseError> {
        let actual = hex::encode(self.sha256.finish());
        if actual != expected_sha256 {
            return Err(ReleaseError::HashMismatch { expected: expected_sha256.to_string(), actual });
        }
        Ok(())
    }
}

/// Reads the archive once as it streams from `gz`, refusing anything an edge could not unpack safely.
/// Blocking: run it off the async workers, fed by a channel.
pub fn check_stream(gz: impl Read, limits: ReleaseLimits) -> Result<Checked, ReleaseError> {
    archive::walk(gz, limits)
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
