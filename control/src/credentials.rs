//! Credentials control keeps: the Ed25519 keys `mp_` tokens are signed with, minted tokens' revocation
//! state, share links, and share passwords (PBKDF2, so a stolen database does not give them away).

use std::num::NonZeroU32;

use portico_wire::{self as wire, tokens};
use rand::RngCore;
use ring::signature::{Ed25519KeyPair, KeyPair};
use sqlx::{AnyConnection, AnyPool};
use tokio::sync::watch;

use crate::db::{now_ms, Kind, Write};
use crate::error::{ApiError, ApiResult};
use crate::keys;

/// The longest an `mp_` token may live, so a retired key can be dropped once this has passed.
pub const MAX_TOKEN_TTL_SECS: u64 = 24 * 3600;
/// OWASP's 2023 figure for PBKDF2-HMAC-SHA256.
const PBKDF2_ITERATIONS: u32 = 600_000;

pub fn now_secs() -> u64 {
    u64::try_from(now_ms() / 1000).unwrap_or_default()
}

#[derive(Debug, sqlx::FromRow)]
pub struct SigningKeyRow {
    pub kid: String,
    pub private_pkcs8: String,
    pub public_key: String,
    pub created_at: i64,
    pub retired_at: Option<i64>,
}

impl SigningKeyRow {
    pub fn to_wire(&self) -> wire::VerifyKey {
        wire::VerifyKey { kid: self.kid.clone(), public_key: self.public_key.clone() }
    }

    pub fn keypair(&self) -> ApiResult<Ed25519KeyPair> {
        let doc = tokens::b64_decode(&self.private_pkcs8)
            .ok_or_else(|| ApiError::Internal(format!("signing key {} is not base64", self.kid)))?;
        Ed25519KeyPair::from_pkcs8(&doc)
            .map_err(|_| ApiError::Internal(format!("signing key {} is not a valid Ed25519 key", self.kid)))
    }
}

const KEY_COLUMNS: &str = "kid, private_pkcs8, public_key, created_at, retired_at";

pub async fn verify_keys(conn: &mut AnyConnection) -> ApiResult<Vec<SigningKeyRow>> {
    let sql = format!("SELECT {KEY_COLUMNS} FROM signing_keys ORDER BY created_at, kid");
    Ok(sqlx::query_as(&sql).fetch_all(conn).await?)
}

pub async fn verify_key(conn: &mut AnyConnection, kid: &str) -> ApiResult<Option<SigningKeyRow>> {
    let sql = format!("SELECT {KEY_COLUMNS} FROM signing_keys WHERE kid = $1");
    Ok(sqlx::query_as(&sql).bind(kid).fetch_optional(conn).await?)
}

/// The key new tokens are signed with: the newest one not retired.
pub async fn active_key(pool: &AnyPool) -> ApiResult<SigningKeyRow> {
    let sql = format!(
        "SELECT {KEY_COLUMNS} FROM signing_keys WHERE retired_at IS NULL ORDER BY created_at DESC LIMIT 1"
    );
    sqlx::query_as(&sql)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| ApiError::Internal("no active signing key".into()))
}

/// Adds a new signing key inside `write` and retires the others; retired keys keep verifying tokens
/// they signed until those have expired.
pub async fn add_key(write: &mut Write) -> ApiResult<SigningKeyRow> {
    let rng = ring::rand::SystemRandom::new();
    let doc = Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| ApiError::Internal("key generation failed".into()))?;
    let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref())
        .map_err(|_| ApiError::Internal("generated key does not parse".into()))?;
    let now = now_ms();
    let row = SigningKeyRow {
        kid: format!("k{}", keys::random_alnum(10)),
        private_pkcs8: tokens::b64(doc.as_ref()),
        public_key: tokens::b64(pair.public_key().as_ref()),
        created_at: now,
        retired_at: None,
    };
    sqlx::query("UPDATE signing_keys SET retired_at = $1 WHERE retired_at IS NULL")
        .bind(now)
        .execute(write.conn())
        .await?;
    sqlx::query(&format!("INSERT INTO signing_keys ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, NULL)"))
        .bind(&row.kid)
        .bind(&row.private_pkcs8)
        .bind(&row.public_key)
        .bind(row.created_at)
        .execute(write.conn())
        .await?;
    write.touch(Kind::VerifyKey, &row.kid);
    Ok(row)
}

/// Makes sure a signing key exists, at start.
pub async fn ensure_key(pool: &AnyPool, notify: &watch::Sender<u64>) -> ApiResult<()> {
    let mut write = Write::begin(pool).await?;
    let active: Option<String> =
        sqlx::query_scalar("SELECT kid FROM signing_keys WHERE retired_at IS NULL LIMIT 1")
            .fetch_optional(write.conn())
            .await?;
    if active.is_some() {
        write.tx.rollback().await?;
        return Ok(());
    }
    add_key(&mut write).await?;
    write.commit(notify).await
}

/// A revocation as edges see it: present while the token is revoked and not yet expired.
pub async fn revocation(conn: &mut AnyConnection, jti: &str) -> ApiResult<Option<wire::Revocation>> {
    let row: Option<(String, i64)> = sqlx::query_as(
        "SELECT jti, expires_at FROM preview_tokens WHERE jti = $1 AND revoked_at IS NOT NULL AND expires_at > $2",
    )
    .bind(jti)
    .bind(i64::try_from(now_secs()).unwrap_or(i64::MAX))
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|(jti, exp)| wire::Revocation { jti, expires_at: u64::try_from(exp).unwrap_or_default() }))
}

pub async fn revocations(conn: &mut AnyConnection) -> ApiResult<Vec<wire::Revocation>> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT jti, expires_at FROM preview_tokens WHERE revoked_at IS NOT NULL AND expires_at > $1 ORDER BY jti",
    )
    .bind(i64::try_from(now_secs()).unwrap_or(i64::MAX))
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(jti, exp)| wire::Revocation { jti, expires_at: u64::try_from(exp).unwrap_or_default() })
        .collect())
}

pub const SHARE_COLUMNS: &str =
    "id, tenant_id, preview_id, sha256, token_prefix, expires_at, password_hash, created_at";

#[derive(Debug, sqlx::FromRow)]
pub struct ShareRow {
    pub id: String,
    pub tenant_id: String,
    pub preview_id: String,
    pub sha256: String,
    pub token_prefix: String,
    pub expires_at: Option<i64>,
    pub password_hash: Option<String>,
    pub created_at: i64,
}

impl ShareRow {
    pub fn to_wire(&self) -> wire::Share {
        wire::Share {
            id: self.id.clone(),
            tenant_id: self.tenant_id.clone(),
            preview_id: self.preview_id.clone(),
            sha256: self.sha256.clone(),
            expires_at: self.expires_at.and_then(|e| u64::try_from(e).ok()),
            password: self.password_hash.is_some(),
        }
    }
}

pub async fn share(conn: &mut AnyConnection, id: &str) -> ApiResult<Option<ShareRow>> {
    let sql = format!("SELECT {SHARE_COLUMNS} FROM shares WHERE id = $1");
    Ok(sqlx::query_as(&sql).bind(id).fetch_optional(conn).await?)
}

pub async fn shares(conn: &mut AnyConnection) -> ApiResult<Vec<ShareRow>> {
    let sql = format!("SELECT {SHARE_COLUMNS} FROM shares ORDER BY id");
    Ok(sqlx::query_as(&sql).fetch_all(conn).await?)
}

/// `pbkdf2-sha256$<iterations>$<salt>$<hash>`, salt and hash base64url.
pub fn hash_password(password: &str) -> String {
    hash_password_with(password, PBKDF2_ITERATIONS)
}

fn hash_password_with(password: &str, iterations: u32) -> String {
    let mut salt = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    let mut out = [0u8; 32];
    let n = NonZeroU32::new(iterations).unwrap_or(NonZeroU32::MIN);
    ring::pbkdf2::derive(ring::pbkdf2::PBKDF2_HMAC_SHA256, n, &salt, password.as_bytes(), &mut out);
    format!("pbkdf2-sha256${iterations}${}${}", tokens::b64(&salt), tokens::b64(&out))
}

/// Checks a password against a stored hash in constant time; a malformed hash never matches.
pub fn verify_password(password: &str, stored: &str) -> bool {
    let mut parts = stored.split('$');
    let (Some("pbkdf2-sha256"), Some(iterations), Some(salt), Some(hash), None) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let (Some(n), Some(salt), Some(hash)) = (
        iterations.parse::<u32>().ok().and_then(NonZeroU32::new),
        tokens::b64_decode(salt),
        tokens::b64_decode(hash),
    ) else {
        return false;
    };
    ring::pbkdf2::verify(ring::pbkdf2::PBKDF2_HMAC_SHA256, n, &salt, password.as_bytes(), &hash).is_ok()
}

/// Forgets what no longer matters to edges: revocations of tokens that have expired anyway, and retired
/// keys older than any token they can have signed. Each removal is a feed change, so edges drop them too.
pub async fn prune(pool: &AnyPool, notify: &watch::Sender<u64>) -> ApiResult<()> {
    let now = i64::try_from(now_secs()).unwrap_or(i64::MAX);
    let mut write = Write::begin(pool).await?;
    let expired: Vec<(String, Option<i64>)> =
        sqlx::query_as("SELECT jti, revoked_at FROM preview_tokens WHERE expires_at <= $1 LIMIT 10000")
            .bind(now)
            .fetch_all(write.conn())
            .await?;
    let retired_before = now_ms() - i64::try_from(MAX_TOKEN_TTL_SECS * 1000 + 60_000).unwrap_or(0);
    let old_keys: Vec<String> = sqlx::query_scalar("SELECT kid FROM signing_keys WHERE retired_at < $1")
        .bind(retired_before)
        .fetch_all(write.conn())
        .await?;
    if expired.is_empty() && old_keys.is_empty() {
        write.tx.rollback().await?;
        return Ok(());
    }
    for (jti, revoked) in &expired {
        sqlx::query("DELETE FROM preview_tokens WHERE jti = $1").bind(jti).execute(write.conn()).await?;
        if revoked.is_some() {
            write.touch(Kind::Revocation, jti);
        }
    }
    for kid in &old_keys {
        sqlx::query("DELETE FROM signing_keys WHERE kid = $1").bind(kid).execute(write.conn()).await?;
        write.touch(Kind::VerifyKey, kid);
    }
    write.commit(notify).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_hash_verifies_only_the_right_password() {
        let stored = hash_password_with("correct horse", 1_000);
        assert!(stored.starts_with("pbkdf2-sha256$1000$"));
        assert!(verify_password("correct horse", &stored));
        assert!(!verify_password("correct hors", &stored));
        assert_ne!(stored, hash_password_with("correct horse", 1_000), "salted");
    }

    #[test]
    fn malformed_stored_hashes_never_match() {
        for bad in [
            "",
            "pbkdf2-sha256$",
            "pbkdf2-sha256$0$AA$AA",
            "md5$1$AA$AA",
            "pbkdf2-sha256$x$AA$AA",
            "a$b$c$d$e",
        ] {
            assert!(!verify_password("x", bad), "{bad}");
        }
    }
}
