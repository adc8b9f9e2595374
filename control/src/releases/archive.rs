//! The `.tar.gz` walker behind [`super::check_stream`]: gunzips as the bytes arrive and reads the tar
//! stream one 512-byte header at a time, so it holds a few blocks and at most one capped extension header
//! whatever the archive claims.
//!
//! Why not `tar::Archive::entries`: it reads a GNU long name (`L`), long link (`K`) or PAX extension (`x`)
//! into memory in full before returning the entry it describes, so one header claiming a 1 GiB name
//! allocates 1 GiB before any check runs. Here the size in the header is checked against a cap *before*
//! the data is read. The framing mirrors `tar` 0.4's `EntriesFields::next_entry` step for step (checksum,
//! PAX `size` overriding the header's, one pending extension of each kind, the first all-zero block ends
//! the archive) and reuses its header and PAX parsers, so the paths checked here are the paths the edge's
//! `tar` unpacks: a parser disagreement would let an archive look different to the two.

use std::io::Read;

use flate2::read::GzDecoder;
use tar::{EntryType, Header, PaxExtensions};

use super::{check_path, Checked, ReleaseError, ReleaseLimits};

/// A GNU long name or long link longer than this is refused (Linux's `PATH_MAX`).
pub const MAX_LONG_NAME: u64 = 4096;
/// A PAX extension block (`x`) larger than this is refused.
pub const MAX_PAX: u64 = 64 * 1024;
/// Unpacked, an archive may hold at most this many times the compressed bytes read so far (a gzip bomb
/// stops within a few blocks of crossing it)…
pub const MAX_EXPANSION: u64 = 20;
/// …with this much allowed whatever the ratio, so a small, very compressible release still goes through.
pub const EXPANSION_FLOOR: u64 = 8 * 1024 * 1024;

const BLOCK: u64 = 512;

/// Walks the archive `gz` to its end-of-archive marker (or EOF), refusing what an edge must not unpack.
pub fn walk(gz: impl Read, limits: ReleaseLimits) -> Result<Checked, ReleaseError> {
    let mut s = Stream { gz: GzDecoder::new(Counted { inner: gz, n: 0 }), out: 0 };
    let mut checked = Checked { files: 0, unpacked_bytes: 0 };
    let mut entries = 0u64;
    let mut pending = Pending::default();
    let mut header = Header::new_old();
    loop {
        if !s.block_or_eof(header.as_mut_bytes())? || header.as_bytes().iter().all(|b| *b == 0) {
            // EOF or the end-of-archive marker: `tar` stops here too and reads nothing after it.
            if pending.any() {
                return Err(unreadable("the archive ends after a header describing a further entry"));
            }
            return Ok(checked);
        }
        verify_checksum(&header)?;
        let kind = header.entry_type();
        let extension = kind.is_gnu_longname()
            || kind.is_gnu_longlink()
            || kind.is_pax_local_extensions()
            || kind.is_pax_global_extensions();
        let mut size = header.entry_size().map_err(|e| unreadable(e.to_string()))?;
        if !extension {
            if let Some(pax_size) = pending.pax.as_deref().and_then(|p| pax_value(p, "size")) {
                size = pax_size;
            }
        }
        let recognized = header.as_gnu().is_some() || header.as_ustar().is_some();
        if recognized {
            let slot = if kind.is_gnu_longname() {
                Some((&mut pending.long_name, MAX_LONG_NAME, "GNU long name"))
            } else if kind.is_gnu_longlink() {
                Some((&mut pending.long_link, MAX_LONG_NAME, "GNU long link name"))
            } else if kind.is_pax_local_extensions() {
                Some((&mut pending.pax, MAX_PAX, "PAX extension header"))
            } else {
                None
            };
            if let Some((slot, max, what)) = slot {
                if slot.is_some() {
                    return Err(unreadable(format!("two {what}s describe the same entry")));
                }
                if size > max {
                    return Err(ReleaseError::HeaderTooLarge { what, size, max });
                }
                *slot = Some(s.data(size)?);
                continue;
            }
        }
        // An entry: it consumes the extensions before it.
        let pending = std::mem::take(&mut pending);
        entries += 1;
        if entries > limits.max_files {
            return Err(ReleaseError::TooManyFiles(limits.max_files));
        }
        if kind.is_pax_global_extensions() {
            // Archive-wide metadata: nothing to unpack, and the edge skips it too.
            s.skip(size)?;
            continue;
        }
        let raw = String::from_utf8_lossy(&pending.path(&header)).into_owned();
        check_path(&raw)?;
        if kind.is_symlink() || kind.is_hard_link() {
            return Err(ReleaseError::Link(raw));
        }
        if !kind.is_dir() {
            if !kind.is_file() && kind != EntryType::Continuous {
                return Err(ReleaseError::Unsupported(raw));
            }
            checked.files += 1;
            checked.unpacked_bytes = checked.unpacked_bytes.saturating_add(size);
        }
        // Read the data rather than trusting the header: a corrupt stream must fail here, not at an edge.
        s.skip(size)?;
    }
}

/// Extension headers read so far for the next entry, each at most its cap.
#[derive(Default)]
struct Pending {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<Vec<u8>>,
}

impl Pending {
    fn any(&self) -> bool {
        self.long_name.is_some() || self.long_link.is_some() || self.pax.is_some()
    }

    /// The entry's path as `tar` 0.4 reads it (`EntryFields::path_bytes`): the GNU long name (less one
    /// trailing NUL), else the PAX `path`, else the header's own (ustar prefix + name).
    fn path(&self, header: &Header) -> Vec<u8> {
        if let Some(name) = &self.long_name {
            return name.strip_suffix(b"\0").unwrap_or(name).to_vec();
        }
        let pax = self.pax.as_deref().and_then(|p| {
            PaxExtensions::new(p)
                .filter_map(Result::ok)
                .find(|e| e.key_bytes() == b"path")
                .map(|e| e.value_bytes())
        });
        pax.map_or_else(|| header.path_bytes().into_owned(), <[u8]>::to_vec)
    }
}

/// A PAX record's numeric value, as `tar` 0.4's `pax_extensions_value` reads it.
fn pax_value(pax: &[u8], key: &str) -> Option<u64> {
    for ext in PaxExtensions::new(pax) {
        let ext = ext.ok()?;
        if ext.key() == Ok(key) {
            return ext.value().ok()?.parse().ok();
        }
    }
    None
}

fn verify_checksum(header: &Header) -> Result<(), ReleaseError> {
    let bytes = header.as_bytes();
    let sum = bytes[..148].iter().chain(&bytes[156..]).fold(8 * 32, |a, b| a + u32::from(*b));
    match header.cksum() {
        Ok(c) if c == sum => Ok(()),
        _ => Err(unreadable("archive header checksum mismatch")),
    }
}

fn unreadable(why: impl ToString) -> ReleaseError {
    ReleaseError::Unreadable(why.to_string())
}

/// Counts the compressed bytes the gzip decoder has taken.
struct Counted<R> {
    inner: R,
    n: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

/// The decompressed tar stream, checked against the expansion bound on every read.
struct Stream<R: Read> {
    gz: GzDecoder<Counted<R>>,
    out: u64,
}

impl<R: Read> Stream<R> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ReleaseError> {
        let n = loop {
            match self.gz.read(buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(unreadable(e)),
            }
        };
        self.out += n as u64;
        let allowed = self.gz.get_ref().n.saturating_mul(MAX_EXPANSION).max(EXPANSION_FLOOR);
        if self.out > allowed {
            return Err(ReleaseError::Expands { ratio: MAX_EXPANSION, unpacked: self.out });
        }
        Ok(n)
    }

    /// Fills `buf`; `false` at a clean EOF before its first byte.
    fn block_or_eof(&mut self, buf: &mut [u8]) -> Result<bool, ReleaseError> {
        let mut at = 0;
        while at < buf.len() {
            match self.read(&mut buf[at..])? {
                0 if at == 0 => return Ok(false),
                0 => return Err(unreadable("the archive ends inside a header")),
                n => at += n,
            }
        }
        Ok(true)
    }

    /// An extension header's data (already checked against its cap), then the padding after it.
    fn data(&mut self, size: u64) -> Result<Vec<u8>, ReleaseError> {
        let len = usize::try_from(size).map_err(|_| unreadable("header size overflow"))?;
        let mut data = vec![0; len];
        if !data.is_empty() && !self.block_or_eof(&mut data)? {
            return Err(truncated());
        }
        self.discard(padding(size))?;
        Ok(data)
    }

    /// Reads past an entry's data and its padding to the next 512-byte boundary.
    fn skip(&mut self, size: u64) -> Result<(), ReleaseError> {
        self.discard(size.checked_add(padding(size)).ok_or_else(|| unreadable("header size overflow"))?)
    }

    /// Reads `left` bytes and drops them.
    fn discard(&mut self, mut left: u64) -> Result<(), ReleaseError> {
        let mut buf = [0u8; 8192];
        while left > 0 {
            let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
            match self.read(&mut buf[..want])? {
                0 => return Err(truncated()),
                n => left -= n as u64,
            }
        }
        Ok(())
    }
}

fn padding(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
}

fn truncated() -> ReleaseError {
    unreadable("the archive ends inside an entry")
}
