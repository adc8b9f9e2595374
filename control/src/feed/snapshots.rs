//! The snapshot an edge gets when it starts (or fell too far behind), built once per version and shared.
//!
//! Ten edges cold-starting at once against a million sandboxes must not make control build and hold ten
//! copies of the whole state. The latest snapshot is serialised straight into a gzip stream (no JSON string
//! of it ever exists) and kept compressed; builds are single-flight — whoever finds the cache stale builds
//! while the others wait on the same lock and then share the result. So control holds one compressed copy,
//! plus one build's rows at a time, however many edges ask.
//!
//! Two forms, each cached on its own: packed (`wire::packed`, what current edges ask for: a fifth of the
//! JSON's size and of its parsing time) and JSON (every edge reads it; older ones ask for nothing else).
//! A mixed fleet keeps both; a uniform one builds only the form it asks for.
//!
//! A build costs seconds at a million sandboxes, and while changes flow the database's version moves on
//! every few milliseconds: rebuilding whenever the cache is behind meant every cold start paid a whole
//! build. The cached snapshot is served while it is at most `max_behind` versions old and the changes
//! after it are still retained: the edge asks for those next (`since` = the snapshot's version), as it
//! would for any change, and is current a round trip later. Control builds one as it starts, so the first
//! edges after a restart do not wait for it either.

use std::io::{BufWriter, Read, Write};

use bytes::Bytes;
use flate2::write::GzEncoder;
use portico_wire::{FeedMessage, Snapshot};
use sqlx::AnyPool;
use tokio::sync::Mutex;

use crate::error::{ApiError, ApiResult};

/// Fast compression: the feed is built on the request path of a starting edge.
const LEVEL: flate2::Compression = flate2::Compression::fast();
/// A decompressed snapshot larger than this is refused rather than buffered (for edges that do not read
/// its compression).
const MAX_INFLATED: u64 = 4 << 30;
/// The default `--feed-snapshot-lag`: a few seconds of a busy platform, caught up by the edge's next poll
/// or two (an answer holds up to 5,000 rows).
pub const DEFAULT_LAG: u64 = 2_000;

/// zstd's level for the packed form: fast, and still a third of gzip's inflating time at the edge.
const ZSTD_LEVEL: i32 = 3;

/// The form of a snapshot answer, as the edge asked for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// `FeedMessage::Snapshot`, kept gzip-compressed (what every edge reads).
    Json = 0,
    /// `wire::packed`, kept zstd-compressed (edges that read it accept zstd too).
    Packed = 1,
}

impl Form {
    pub fn media_type(self) -> &'static str {
        match self {
            Form::Json => "application/json",
            Form::Packed => portico_wire::packed::MEDIA_TYPE,
        }
    }

    /// The `Content-Encoding` its cached bytes are in.
    pub fn encoding(self) -> &'static str {
        match self {
            Form::Json => "gzip",
            Form::Packed => "zstd",
        }
    }
}

pub struct Snapshots {
    /// Per [`Form`]: the version and the compressed answer.
    latest: Mutex<[Option<(u64, Bytes)>; 2]>,
    /// How many versions the served snapshot may lag behind the database (`--feed-snapshot-lag`).
    max_behind: u64,
}

impl Snapshots {
    pub fn new(max_behind: u64) -> Snapshots {
        Snapshots { latest: Mutex::new([None, None]), max_behind }
    }

    /// The snapshot answer in `form` at the database's current version, compressed as
    /// [`Form::encoding`] says: for JSON a `FeedMessage::Snapshot`, packed the snapshot alone.
    pub async fn latest(&self, pool: &AnyPool, form: Form) -> ApiResult<Bytes> {
        let mut cache = self.latest.lock().await;
        let latest = &mut cache[form as usize];
        let current = current_version(pool).await?;
        if let Some((version, gzip)) = latest.as_ref() {
            if *version >= current
                || (current - *version <= self.max_behind && changes_retained_after(pool, *version).await?)
            {
                return Ok(gzip.clone());
            }
        }
        let started = std::time::Instant::now();
        let snapshot = super::current_snapshot(pool).await?;
        let version = snapshot.version;
        let sandboxes = snapshot.sandboxes.len();
        let gzip = tokio::task::spawn_blocking(move || match form {
            Form::Json => compress(&FeedMessage::Snapshot { snapshot }),
            Form::Packed => compress_packed(&snapshot),
        })
        .await
        .map_err(|e| ApiError::Internal(format!("compressing the snapshot: {e}")))??;
        // Seconds at a million sandboxes, and starting edges wait for it: operators should see what it costs.
        tracing::info!(
            version,
            sandboxes,
            form = form.media_type(),
            bytes = gzip.len(),
            ms = started.elapsed().as_millis() as u64,
            "feed snapshot built"
        );
        *latest = Some((version, gzip.clone()));
        Ok(gzip)
    }
}

fn compress(message: &FeedMessage) -> ApiResult<Bytes> {
    let mut encoder = GzEncoder::new(Vec::new(), LEVEL);
    serde_json::to_writer(&mut encoder, message)
        .map_err(|e| ApiError::Internal(format!("serialising the snapshot: {e}")))?;
    let out = encoder.finish().and_then(|mut w| w.flush().map(|()| w));
    let mut out = out.map_err(|e| ApiError::Internal(format!("compressing the snapshot: {e}")))?;
    // Cached as long as it is current: without the room the growing buffer kept.
    out.shrink_to_fit();
    Ok(Bytes::from(out))
}

/// Packed straight into a zstd stream (no uncompressed copy of it exists, as for JSON), kept at its
/// compressed size: the cache holds it for as long as it is current.
fn compress_packed(snapshot: &Snapshot) -> ApiResult<Bytes> {
    let err = |e: std::io::Error| ApiError::Internal(format!("packing the snapshot: {e}"));
    let encoder = zstd::stream::write::Encoder::new(Vec::new(), ZSTD_LEVEL).map_err(err)?;
    // The encoder writes field by field: buffered, so that the compressor sees large writes.
    let mut w = BufWriter::with_capacity(1 << 16, encoder);
    portico_wire::packed::encode(snapshot, &mut w).map_err(err)?;
    let mut out = w.into_inner().map_err(|e| err(e.into_error()))?.finish().map_err(err)?;
    out.shrink_to_fit();
    Ok(Bytes::from(out))
}

/// The plain answer, for an edge that did not accept the form's encoding.
pub fn decompress(form: Form, compressed: &[u8]) -> ApiResult<Bytes> {
    let mut out = Vec::new();
    let read = match form {
        Form::Json => flate2::read::GzDecoder::new(compressed).take(MAX_INFLATED).read_to_end(&mut out),
        Form::Packed => zstd::stream::read::Decoder::new(compressed)
            .and_then(|d| d.take(MAX_INFLATED).read_to_end(&mut out)),
    };
    read.map_err(|e| ApiError::Internal(format!("decompressing the snapshot: {e}")))?;
    Ok(Bytes::from(out))
}

/// Builds the snapshot once in the background (packed, the form current edges ask for), so that edges
/// starting right after control do not wait for it. Holds the state weakly: nothing to do once control is
/// gone.
pub(crate) async fn warm(state: std::sync::Weak<crate::state::AppState>) {
    let Some(state) = state.upgrade() else { return };
    if let Err(e) = state.snapshots.latest(&state.pool, Form::Packed).await {
        tracing::warn!(error = %e, "building the first feed snapshot at start failed; the first edge will");
    }
}

/// Whether an edge at `version` can still catch up through the change feed (the feed's own rule).
async fn changes_retained_after(pool: &AnyPool, version: u64) -> ApiResult<bool> {
    let oldest: Option<i64> = sqlx::query_scalar("SELECT MIN(version) FROM changes").fetch_one(pool).await?;
    let version = i64::try_from(version).unwrap_or(i64::MAX);
    Ok(oldest.is_some_and(|oldest| version >= oldest - 1))
}

async fn current_version(pool: &AnyPool) -> ApiResult<u64> {
    let v: i64 = sqlx::query_scalar("SELECT version FROM feed_state WHERE id = 1").fetch_one(pool).await?;
    Ok(u64::try_from(v).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_wire::Change;

    #[test]
    fn compressed_messages_inflate_to_the_same_json() {
        let message =
            FeedMessage::Changes { version: 7, changes: vec![Change::DeleteSandbox { id: "abcd".into() }] };
        let gzip = compress(&message).expect("compress");
        let json = decompress(Form::Json, &gzip).expect("inflate");
        assert_eq!(json, serde_json::to_vec(&message).expect("json"));
    }
}
