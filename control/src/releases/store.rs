//! Where accepted archives live: spooled to an anonymous temporary file while the upload is checked,
//! then written to the database in chunks of at most [`CHUNK`] bytes (`release_chunks`), and read back
//! one chunk at a time for an edge. Neither side holds more than a chunk or two of an archive in memory,
//! so control's memory does not grow with `--release-max-bytes` (SPEC §7).

use std::io::SeekFrom;

use bytes::Bytes;
use futures_util::Stream;
use sqlx::AnyPool;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// The largest chunk stored in one row, and so the most of an archive held at once to store or serve it.
pub const CHUNK: usize = 1024 * 1024;

/// An upload's bytes until they are checked: an anonymous file in the system temp dir, which the OS
/// removes when it is dropped (or when control dies), so a refused archive leaves nothing behind.
pub struct Spool {
    file: tokio::fs::File,
}

impl Spool {
    pub async fn new() -> std::io::Result<Self> {
        let file = tokio::task::spawn_blocking(tempfile::tempfile).await.map_err(std::io::Error::other)??;
        Ok(Self { file: tokio::fs::File::from_std(file) })
    }

    pub async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.file.write_all(bytes).await
    }

    /// Back to the first byte, with every write finished.
    async fn rewind(&mut self) -> std::io::Result<()> {
        self.file.flush().await?;
        self.file.seek(SeekFrom::Start(0)).await?;
        Ok(())
    }

    /// Fills `buf` but at the end; the bytes read, 0 once all are.
    async fn read_chunk(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut at = 0;
        while at < buf.len() {
            match self.file.read(&mut buf[at..]).await? {
                0 => break,
                n => at += n,
            }
        }
        Ok(at)
    }
}

/// Stores the spooled archive unless it is already there; `true` when this call stored it. Its row and
/// all its chunks go in one transaction, so a reader sees the whole archive or none of it, and an upload
/// of the same archive racing this one stores nothing.
pub async fn store(pool: &AnyPool, sha256: &str, spool: &mut Spool, now_ms: i64) -> sqlx::Result<bool> {
    // Already stored: do not send the bytes again.
    if exists(pool, sha256).await? {
        return Ok(false);
    }
    spool.rewind().await?;
    let mut buf = vec![0u8; CHUNK];
    let mut tx = pool.begin().await?;
    // The row first: it takes the write lock, and the chunks follow only if this upload is the one.
    let inserted = sqlx::query(
        "INSERT INTO release_data (sha256, data, created_at) VALUES ($1, $2, $3) ON CONFLICT (sha256) DO NOTHING",
    )
    .bind(sha256)
    .bind(Vec::<u8>::new())
    .bind(now_ms)
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 0 {
        return Ok(false);
    }
    let mut seq = 0i64;
    loop {
        let n = spool.read_chunk(&mut buf).await?;
        if n == 0 {
            break;
        }
        sqlx::query("INSERT INTO release_chunks (sha256, seq, data) VALUES ($1, $2, $3)")
            .bind(sha256)
            .bind(seq)
            .bind(&buf[..n])
            .execute(&mut *tx)
            .await?;
        seq += 1;
    }
    tx.commit().await?;
    Ok(true)
}

async fn exists(pool: &AnyPool, sha256: &str) -> sqlx::Result<bool> {
    let found: Option<String> = sqlx::query_scalar("SELECT sha256 FROM release_data WHERE sha256 = $1")
        .bind(sha256)
        .fetch_optional(pool)
        .await?;
    Ok(found.is_some())
}

/// How a stored archive is laid out.
#[derive(Debug, PartialEq, Eq)]
pub enum Stored {
    /// `count` rows of `release_chunks`, `len` bytes in all: read them with [`chunks`].
    Chunks { count: i64, len: u64 },
    /// Stored before chunks: the whole archive is `release_data.data` (at most the
    /// `--release-max-bytes` in force when it was uploaded).
    Whole(Vec<u8>),
}

/// The archive's layout, or `None` when no release has this hash. Lengths are read without the bytes.
pub async fn find(pool: &AnyPool, sha256: &str) -> sqlx::Result<Option<Stored>> {
    let found: Option<(i64, i64)> = sqlx::query_as(
        "SELECT COUNT(c.seq), COALESCE(SUM(LENGTH(c.data)), 0) FROM release_data d \
         LEFT JOIN release_chunks c ON c.sha256 = d.sha256 WHERE d.sha256 = $1 GROUP BY d.sha256",
    )
    .bind(sha256)
    .fetch_optional(pool)
    .await?;
    match found {
        None => Ok(None),
        Some((0, _)) => {
            let whole: Option<Vec<u8>> =
                sqlx::query_scalar("SELECT data FROM release_data WHERE sha256 = $1")
                    .bind(sha256)
                    .fetch_optional(pool)
                    .await?;
            Ok(whole.map(Stored::Whole))
        }
        Some((count, len)) => Ok(Some(Stored::Chunks { count, len: u64::try_from(len).unwrap_or(0) })),
    }
}

/// The archive's `count` chunks in order, each fetched only when the one before has been taken: a slow
/// reader holds one chunk in memory, and no database connection between chunks.
pub fn chunks(pool: AnyPool, sha256: String, count: i64) -> impl Stream<Item = sqlx::Result<Bytes>> + Send {
    futures_util::stream::try_unfold(0i64, move |seq| {
        let (pool, sha256) = (pool.clone(), sha256.clone());
        async move {
            if seq >= count {
                return Ok(None);
            }
            let data: Vec<u8> =
                sqlx::query_scalar("SELECT data FROM release_chunks WHERE sha256 = $1 AND seq = $2")
                    .bind(&sha256)
                    .bind(seq)
                    .fetch_optional(&pool)
                    .await?
                    .ok_or(sqlx::Error::RowNotFound)?;
            Ok(Some((Bytes::from(data), seq + 1)))
        }
    })
}
