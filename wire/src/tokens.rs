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
    Sha256::of(secret).to_hex()
}

/// A SHA-256 digest, held as its 32 bytes and written as 64 lowercase hex digits (in JSON, in the
/// database). The edge holds one per sandbox with a preview-auth token: as bytes it lives inside the
/// record (a hex `String` was a second allocation of 64 bytes per sandbox, a million of them) and a
/// presented token is compared as a digest, with no hex formatted on the request path.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Sha256(pub [u8; 32]);

impl Sha256 {
    pub fn of(secret: &str) -> Self {
        let mut out = [0u8; 32];
        out.copy_from_slice(digest(&SHA256, secret.as_bytes()).as_ref());
        Self(out)
    }

    /// 64 hex digits, either case; anything else is `None`.
    pub fn from_hex(hex: &str) -> Option<Self> {
        let hex = hex.as_bytes();
        if hex.len() != 64 {
            return None;
        }
        let digit = |c: u8| char::from(c).to_digit(16).and_then(|d| u8::try_from(d).ok());
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
            *byte = digit(pair[0])? << 4 | digit(pair[1])?;
        }
        Some(Self(out))
    }

    pub fn to_hex(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(64);
        for b in self.0 {
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
        out
    }
}

impl std::fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl std::fmt::Display for Sha256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for Sha256 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Sha256 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let hex = std::borrow::Cow::<str>::deserialize(d)?;
        Self::from_hex(&hex).ok_or_else(|| serde::de::Error::custom("expected a SHA-256 as 64 hex digits"))
    }
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
