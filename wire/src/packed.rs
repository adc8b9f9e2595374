//! A whole [`Snapshot`] in a compact binary form, for the two places where its size is the cost: the
//! first answer of the feed to a starting edge, and the edge's state dir base.
//!
//! Why: at a million sandboxes the JSON snapshot is ~270 MB; parsing it was most of an edge's cold start
//! (ten edges starting at once on one control host spend seconds of CPU each), and writing it back as the
//! state dir's base moved as many bytes again. The records that make up nearly all of it — sandboxes,
//! previews, shares — are flat strings and small enums: here each is its fields in order, strings as a
//! length and bytes, enums as one byte. Everything else (settings, tenants, keys, deployments…) is few,
//! nested and changes shape more often: it travels as one JSON section inside, read as JSON is read
//! (unknown fields ignored).
//!
//! Mixed versions: the binary records are not self-describing, so the form is versioned as a whole
//! ([`FORMAT`], named in [`MEDIA_TYPE`]). An edge asks for it with `Accept`; a control that writes the
//! same format answers with it, any other answers JSON, which every edge reads. The encoder destructures
//! each record without `..`: a field added to one does not compile until it is written here, which is
//! when [`FORMAT`] must change.
//!
//! Layout (integers little-endian, lengths and counts LEB128):
//! `MAGIC` · format `u32` · version `u64` · JSON section (length, bytes) · sandboxes (count, records) ·
//! previews (count, records) · shares (count, records), and nothing after. A sandbox's token hash is its
//! 32 bytes.

use std::io::{self, BufRead, Read, Write};

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use crate::snapshot::{
    AcmeChallenge, Certificate, Deployment, Preview, Revocation, Sandbox, SandboxState, Settings, Share,
    Snapshot, Tenant, VerifyKey, Visibility, WakePolicy,
};
use crate::tokens::Sha256;

/// The first bytes of a packed snapshot, so that a file or body in another form is told apart at once.
pub const MAGIC: [u8; 8] = *b"PORTICOS";
/// The version of this layout. Change it with any change to the records below.
pub const FORMAT: u32 = 1;
/// The media type of this format, as an edge asks for it and control labels it.
pub const MEDIA_TYPE: &str = "application/vnd.portico.snapshot.v1";

#[derive(Debug, thiserror::Error)]
pub enum PackedError {
    #[error("not a packed snapshot (its first bytes are not the format's mark)")]
    Magic,
    #[error("a packed snapshot of format {found}; this build reads format {FORMAT}")]
    Format { found: u32 },
    #[error("a packed snapshot cut short (at byte {0})")]
    Truncated(usize),
    #[error("a packed snapshot with text that is not UTF-8 (at byte {0})")]
    Utf8(usize),
    #[error("a packed snapshot with an unknown {what} ({byte}) at byte {at}")]
    Tag { what: &'static str, byte: u8, at: usize },
    #[error("a packed snapshot with more bytes after its end (at byte {0})")]
    Trailing(usize),
    #[error("reading a packed snapshot: {0}")]
    Read(io::Error),
    #[error("a packed snapshot's JSON section: {0}")]
    Json(#[from] serde_json::Error),
}

/// The snapshot's few, nested parts, written as its JSON section.
#[derive(Serialize)]
pub struct Rest<'a> {
    pub settings: &'a Settings,
    pub tenants: &'a [Tenant],
    pub verify_keys: &'a [VerifyKey],
    pub revocations: &'a [Revocation],
    pub deployments: &'a [Deployment],
    pub certificates: &'a [Certificate],
    pub acme_challenges: &'a [AcmeChallenge],
}

#[derive(Deserialize)]
struct RestIn {
    settings: Settings,
    tenants: Vec<Tenant>,
    #[serde(default)]
    verify_keys: Vec<VerifyKey>,
    #[serde(default)]
    revocations: Vec<Revocation>,
    #[serde(default)]
    deployments: Vec<Deployment>,
    #[serde(default)]
    certificates: Vec<Certificate>,
    #[serde(default)]
    acme_challenges: Vec<AcmeChallenge>,
}

/// Writes `snapshot` packed. Many small writes: give it a buffered writer.
pub fn encode(snapshot: &Snapshot, out: &mut impl Write) -> io::Result<()> {
    let Snapshot {
        version,
        settings,
        tenants,
        sandboxes,
        previews,
        verify_keys,
        revocations,
        shares,
        deployments,
        certificates,
        acme_challenges,
    } = snapshot;
    let rest =
        Rest { settings, tenants, verify_keys, revocations, deployments, certificates, acme_challenges };
    encode_parts(
        *version,
        &rest,
        Records { len: sandboxes.len(), iter: sandboxes },
        Records { len: previews.len(), iter: previews },
        Records { len: shares.len(), iter: shares },
        out,
    )
}

/// A sequence of records and how many it holds (written first). A count that the records do not match
/// is an error, never a damaged snapshot.
pub struct Records<I> {
    pub len: usize,
    pub iter: I,
}

/// Writes a snapshot packed from its parts, for a holder of the records in another form (the edge's
/// compiled state) that would otherwise copy a million of them into a [`Snapshot`] first.
pub fn encode_parts<'s, W: Write>(
    version: u64,
    rest: &Rest<'_>,
    sandboxes: Records<impl IntoIterator<Item = &'s Sandbox>>,
    previews: Records<impl IntoIterator<Item = &'s Preview>>,
    shares: Records<impl IntoIterator<Item = &'s Share>>,
    out: &mut W,
) -> io::Result<()> {
    out.write_all(&MAGIC)?;
    out.write_all(&FORMAT.to_le_bytes())?;
    out.write_all(&version.to_le_bytes())?;
    bytes(out, &serde_json::to_vec(rest)?)?;
    let mut w = Writer(out);
    w.records(sandboxes, Writer::sandbox)?;
    w.records(previews, Writer::preview)?;
    w.records(shares, Writer::share)
}

/// The snapshot packed in `input`, which must be exactly one.
pub fn decode(input: &[u8]) -> Result<Snapshot, PackedError> {
    let (mut sandboxes, mut previews, mut shares) = (Vec::new(), Vec::new(), Vec::new());
    let rest = decode_with(input, |s| sandboxes.push(s), |p| previews.push(p), |s| shares.push(s))?;
    Ok(Snapshot { sandboxes, previews, shares, ..rest })
}

/// Decodes one packed snapshot from `input` (a slice, or a decompressing stream: nothing is read ahead
/// of what is decoded), handing each sandbox, preview and share to its function as it is read, for a
/// holder that keeps them in another form (the edge's maps): a list of a million records in between
/// would be written once and read once. Returns the rest, with those three lists empty.
pub fn decode_with(
    input: impl BufRead,
    mut sandbox: impl FnMut(Sandbox),
    mut preview: impl FnMut(Preview),
    mut share: impl FnMut(Share),
) -> Result<Snapshot, PackedError> {
    let mut r = Reader::new(input);
    let version = r.header()?;
    let n = r.len()?;
    let rest: RestIn = r.with(n, |b| serde_json::from_slice(b))??;
    for _ in 0..r.len()? {
        sandbox(r.sandbox()?);
    }
    for _ in 0..r.len()? {
        preview(r.preview()?);
    }
    for _ in 0..r.len()? {
        share(r.share()?);
    }
    if !r.at_end()? {
        return Err(PackedError::Trailing(r.at));
    }
    Ok(Snapshot {
        version,
        settings: rest.settings,
        tenants: rest.tenants,
        sandboxes: Vec::new(),
        previews: Vec::new(),
        verify_keys: rest.verify_keys,
        revocations: rest.revocations,
        shares: Vec::new(),
        deployments: rest.deployments,
        certificates: rest.certificates,
        acme_challenges: rest.acme_challenges,
    })
}

fn bytes(out: &mut impl Write, b: &[u8]) -> io::Result<()> {
    Writer(out).len(b.len())?;
    out.write_all(b)
}

struct Writer<'w, W>(&'w mut W);

impl<W: Write> Writer<'_, W> {
    fn records<T>(
        &mut self,
        records: Records<impl IntoIterator<Item = T>>,
        mut write: impl FnMut(&mut Self, T) -> io::Result<()>,
    ) -> io::Result<()> {
        self.len(records.len)?;
        let mut written = 0usize;
        for r in records.iter {
            write(self, r)?;
            written += 1;
        }
        if written != records.len {
            let e = format!("{} records where {} were announced", written, records.len);
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
        Ok(())
    }

    fn len(&mut self, mut n: usize) -> io::Result<()> {
        let mut buf = [0u8; 10];
        let mut i = 0;
        loop {
            let low = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                buf[i] = low;
                break;
            }
            buf[i] = low | 0x80;
            i += 1;
        }
        self.0.write_all(&buf[..=i])
    }

    fn str(&mut self, s: &str) -> io::Result<()> {
        self.len(s.len())?;
        self.0.write_all(s.as_bytes())
    }

    fn u8(&mut self, b: u8) -> io::Result<()> {
        self.0.write_all(&[b])
    }

    fn sandbox(&mut self, s: &Sandbox) -> io::Result<()> {
        // No `..`: a new field must be written here (and FORMAT changed) before this compiles.
        let Sandbox {
            id,
            tenant_id,
            address,
            state,
            default_visibility,
            wake_policy,
            preview_auth_sha256,
            allow_preflight,
        } = s;
        self.str(id)?;
        self.str(tenant_id)?;
        self.str(address)?;
        self.u8(match state {
            SandboxState::Running => 0,
            SandboxState::Hibernated => 1,
            SandboxState::Waking => 2,
        })?;
        self.u8(visibility(*default_visibility))?;
        self.u8(match wake_policy {
            WakePolicy::OnRequest => 0,
            WakePolicy::Off => 1,
        })?;
        match preview_auth_sha256 {
            None => self.u8(0)?,
            Some(h) => {
                self.u8(1)?;
                self.0.write_all(&h.0)?;
            }
        }
        self.u8(u8::from(*allow_preflight))
    }

    fn preview(&mut self, p: &Preview) -> io::Result<()> {
        let Preview { id, slug, tenant_id, sandbox_id, port, visibility: v } = p;
        self.str(id)?;
        self.str(slug)?;
        self.str(tenant_id)?;
        self.str(sandbox_id)?;
        self.0.write_all(&port.to_le_bytes())?;
        self.u8(visibility(*v))
    }

    fn share(&mut self, s: &Share) -> io::Result<()> {
        let Share { id, tenant_id, preview_id, sha256, expires_at, password } = s;
        self.str(id)?;
        self.str(tenant_id)?;
        self.str(preview_id)?;
        self.str(sha256)?;
        match expires_at {
            None => self.u8(0)?,
            Some(t) => {
                self.u8(1)?;
                self.0.write_all(&t.to_le_bytes())?;
            }
        }
        self.u8(u8::from(*password))
    }
}

fn visibility(v: Visibility) -> u8 {
    match v {
        Visibility::Private => 0,
        Visibility::Public => 1,
    }
}

/// Reads from any buffered source: a slice (a file read whole) or a decompressing stream, which then
/// never needs the whole decompressed snapshot in memory at once.
struct Reader<R> {
    input: R,
    /// Bytes read so far, for errors.
    at: usize,
    /// Where a value that straddles the source's buffer is put together.
    scratch: Vec<u8>,
}

impl<R: BufRead> Reader<R> {
    fn new(input: R) -> Self {
        Self { input, at: 0, scratch: Vec::new() }
    }

    fn io(&self, e: io::Error) -> PackedError {
        match e.kind() {
            io::ErrorKind::UnexpectedEof => PackedError::Truncated(self.at),
            _ => PackedError::Read(e),
        }
    }

    /// Hands the next `n` bytes to `f`, borrowed from the source's buffer when they are all in it.
    fn with<T>(&mut self, n: usize, f: impl FnOnce(&[u8]) -> T) -> Result<T, PackedError> {
        let buf = self.input.fill_buf().map_err(PackedError::Read)?;
        let out = if buf.len() >= n {
            let out = f(&buf[..n]);
            self.input.consume(n);
            out
        } else {
            // Read as it arrives: a damaged length must not reserve what the input does not hold.
            self.scratch.clear();
            let got =
                (&mut self.input).take(n as u64).read_to_end(&mut self.scratch).map_err(|e| self.io(e))?;
            if got < n {
                return Err(PackedError::Truncated(self.at + got));
            }
            f(&self.scratch)
        };
        self.at += n;
        Ok(out)
    }

    /// Whether the source has nothing left.
    fn at_end(&mut self) -> Result<bool, PackedError> {
        Ok(self.input.fill_buf().map_err(PackedError::Read)?.is_empty())
    }

    /// The mark and the format, checked; the version.
    fn header(&mut self) -> Result<u64, PackedError> {
        if self.with(MAGIC.len(), |m| m != MAGIC)? {
            return Err(PackedError::Magic);
        }
        let found = u32::from_le_bytes(self.array()?);
        if found != FORMAT {
            return Err(PackedError::Format { found });
        }
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], PackedError> {
        self.with(N, |b| {
            let mut a = [0u8; N];
            a.copy_from_slice(b);
            a
        })
    }

    fn u8(&mut self) -> Result<u8, PackedError> {
        Ok(self.array::<1>()?[0])
    }

    fn len(&mut self) -> Result<usize, PackedError> {
        let mut n = 0usize;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            n |= usize::from(b & 0x7f).checked_shl(shift).unwrap_or(0);
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(PackedError::Tag { what: "length", byte: 0x80, at: self.at })
    }

    /// The next string, as `make` turns it into what the record holds.
    fn str<T>(&mut self, make: impl FnOnce(&str) -> T) -> Result<T, PackedError> {
        let n = self.len()?;
        let at = self.at;
        self.with(n, |b| std::str::from_utf8(b).map(make))?.map_err(|_| PackedError::Utf8(at))
    }

    fn compact(&mut self) -> Result<CompactString, PackedError> {
        self.str(|s| CompactString::new(s))
    }

    fn string(&mut self) -> Result<String, PackedError> {
        self.str(str::to_owned)
    }

    fn tag(&mut self, what: &'static str, max: u8) -> Result<u8, PackedError> {
        let at = self.at;
        let byte = self.u8()?;
        if byte > max {
            return Err(PackedError::Tag { what, byte, at });
        }
        Ok(byte)
    }

    fn flag(&mut self, what: &'static str) -> Result<bool, PackedError> {
        Ok(self.tag(what, 1)? == 1)
    }

    fn visibility(&mut self) -> Result<Visibility, PackedError> {
        Ok(if self.flag("visibility")? { Visibility::Public } else { Visibility::Private })
    }

    fn sandbox(&mut self) -> Result<Sandbox, PackedError> {
        Ok(Sandbox {
            id: self.compact()?,
            tenant_id: self.compact()?,
            address: self.compact()?,
            state: match self.tag("sandbox state", 2)? {
                0 => SandboxState::Running,
                1 => SandboxState::Hibernated,
                _ => SandboxState::Waking,
            },
            default_visibility: self.visibility()?,
            wake_policy: if self.flag("wake policy")? { WakePolicy::Off } else { WakePolicy::OnRequest },
            preview_auth_sha256: match self.flag("optional token hash")? {
                false => None,
                true => Some(Sha256(self.array()?)),
            },
            allow_preflight: self.flag("preflight flag")?,
        })
    }

    fn preview(&mut self) -> Result<Preview, PackedError> {
        Ok(Preview {
            id: self.compact()?,
            slug: self.compact()?,
            tenant_id: self.compact()?,
            sandbox_id: self.compact()?,
            port: u16::from_le_bytes(self.array()?),
            visibility: self.visibility()?,
        })
    }

    fn share(&mut self) -> Result<Share, PackedError> {
        Ok(Share {
            id: self.string()?,
            tenant_id: self.string()?,
            preview_id: self.string()?,
            sha256: self.string()?,
            expires_at: match self.flag("optional expiry")? {
                false => None,
                true => Some(u64::from_le_bytes(self.array()?)),
            },
            password: self.flag("password flag")?,
        })
    }
}

#[cfg(test)]
mod tests;
