//! Credential formats, shared by control (which mints them) and edges (which check them).
//!
//! - `mp_` preview tokens: `mp_<base64url(claims JSON)>.<base64url(Ed25519 signature)>`, the signature over
//!   everything before the dot. Edges verify them offline with control's public keys, found by `kid`.
//! - `ms_` share tokens and sandbox preview-auth tokens: random; only their SHA-256 is ever stored.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ring::digest::{digest, SHA256};
use ring::signature::{Ed25519KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};

pub const PREVIEW_TOKEN_PREFIX: &str = "mp_";
pub const SHARE_TOKEN_PREFIX: &str = "ms_";
/// The scope needed to view a preview.
pub const SCOPE_READ: &str = "preview:read";
/// Every scope control will mint.
pub const KNOWN_SCOPES: [&str; 1] = [SCOPE_READ];
/// Anything longer is not a token of ours; refusing it early bounds the work an attacker can cause.
pub const MAX_TOKEN_LEN: usize = 2048;

/// What an `mp_` token grants.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviewClaims {
    /// The signing key's id.
    pub kid: String,
    /// Tenant id.
    pub tid: String,
    /// Sandbox id.
    pub sbx: String,
    /// The one port it opens; `None`: every port of the sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub scp: Vec<String>,
    /// Unix seconds.
    pub exp: u64,
    pub jti: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not a well-formed token")]
    Malformed,
    #[error("signed with an unknown key")]
    UnknownKey,
    #[error("bad signature")]
    BadSignature,
    #[error("expired")]
    Expired,
}

/// Signs `claims` into an `mp_` token.
pub fn sign_preview_token(claims: &PreviewClaims, key: &Ed25519KeyPair) -> String {
    // Serialising a plain struct of strings and integers cannot fail.
    let payload = serde_json::to_vec(claims).unwrap_or_default();
    let signed = format!("{PREVIEW_TOKEN_PREFIX}{}", B64.encode(payload));
    let sig = key.sign(signed.as_bytes());
    format!("{signed}.{}", B64.encode(sig.as_ref()))
}

/// Verifies an `mp_` token's signature with the key its `kid` names, then its expiry against `now`
/// (unix seconds). `public_key` maps a kid to raw Ed25519 public key bytes.
pub fn verify_preview_token<'k>(
    token: &str,
    now: u64,
    public_key: impl Fn(&str) -> Option<&'k [u8]>,
) -> Result<PreviewClaims, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed);
    }
    let body = token.strip_prefix(PREVIEW_TOKEN_PREFIX).ok_or(TokenError::Malformed)?;
    let (payload_b64, sig_b64) = body.split_once('.').ok_or(TokenError::Malformed)?;
    let payload = B64.decode(payload_b64).map_err(|_| TokenError::Malformed)?;
    let sig = B64.decode(sig_b64).map_err(|_| TokenError::Malformed)?;
    let claims: PreviewClaims = serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
    let key = public_key(&claims.kid).ok_or(TokenError::UnknownKey)?;
    let signed = &token[..PREVIEW_TOKEN_PREFIX.len() + payload_b64.len()];
    UnparsedPublicKey::new(&ED25519, key)
        .verify(signed.as_bytes(), &sig)
        .map_err(|_| TokenError::BadSignature)?;
    if now >= claims.exp {
        return Err(TokenError::Expired);
    }
    Ok(claims)
}

/// Hex SHA-256: how hashed credentials and API keys are stored and compared.
pub fn sha256_hex(secret: &str) -> String {
    // On every request with a hashed credential: one allocation, not one formatted string per byte.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let hash = digest(&SHA256, secret.as_bytes());
    let mut out = String::with_capacity(64);
    for b in hash.as_ref() {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 15)]));
    }
    out
}

/// base64url without padding, the encoding of keys and random tokens.
pub fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

pub fn b64_decode(s: &str) -> Option<Vec<u8>> {
    B64.decode(s).ok()
}

#[cfg(test)]
mod tests;
