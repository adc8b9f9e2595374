//! Which credential opens which route. `mp_` tokens are verified offline with control's public keys;
//! hashed credentials (shares, preview-auth tokens) are found by SHA-256 in the snapshot, or looked up at
//! control when the snapshot does not know them yet.

use std::sync::Arc;

use portico_wire::tokens::{
    self, PreviewClaims, TokenError, MAX_TOKEN_LEN, PREVIEW_TOKEN_PREFIX, SCOPE_READ, SHARE_TOKEN_PREFIX,
};
use portico_wire::{CredentialLookup, Share};
use subtle::ConstantTimeEq;

use super::password::{Sessions, SESSION_PREFIX};
use super::{Credential, Grant, Kind, Transport};
use crate::error::EdgeError;
use crate::lookup::Lookup;
use crate::metrics;
use crate::route::Route;
use crate::state::Snapshot;

/// How long a session cookie lasts for a credential without an expiry of its own.
const SESSION_MAX_AGE_SECS: u64 = 24 * 3600;

/// `mp_` tokens whose signature this edge has verified: a page load sends the same token (in its cookie)
/// hundreds of times, and an Ed25519 verification costs tens of microseconds. Only the signature is
/// remembered; expiry, revocation, key and route are checked on every request.
const VERIFIED_TOKENS: u64 = 10_000;
const VERIFIED_TTL: std::time::Duration = std::time::Duration::from_secs(300);

pub struct Authenticator {
    pub lookup: Lookup,
    pub sessions: Sessions,
    /// Keyed by tokens whose signature verified (only control can make those), hashed with foldhash seeded
    /// at random per process.
    verified: moka::sync::Cache<String, Arc<PreviewClaims>, foldhash::quality::RandomState>,
}

impl Authenticator {
    pub fn new(lookup: Lookup, sessions: Sessions) -> Self {
        let verified = moka::sync::Cache::builder()
            .max_capacity(VERIFIED_TOKENS)
            .time_to_live(VERIFIED_TTL)
            .build_with_hasher(foldhash::quality::RandomState::default());
        Self { lookup, sessions, verified }
    }

    /// The first offered credential that opens the route, or the most telling failure: a share's password
    /// form over expired over invalid.
    pub async fn authenticate(
        &self,
        snap: &Snapshot,
        route: &Route,
        offered: Vec<Credential>,
    ) -> Result<Grant, EdgeError> {
        let result = self.first_valid(snap, route, offered).await;
        match &result {
            Ok(g) => metrics::token_check_passed(g.kind.index()),
            Err(e) => metrics::TOKEN_CHECKS.with_label_values(&["any", e.code()]).inc(),
        }
        result
    }

    async fn first_valid(
        &self,
        snap: &Snapshot,
        route: &Route,
        offered: Vec<Credential>,
    ) -> Result<Grant, EdgeError> {
        if offered.is_empty() {
            return Err(EdgeError::TokenRequired);
        }
        let now = now_secs();
        let mut failure = EdgeError::TokenInvalid;
        for (refused, credential) in offered.into_iter().enumerate() {
            match self.check(snap, route, &credential, now).await {
                Ok((kind, remaining_secs)) => return Ok(Grant { kind, credential, remaining_secs, refused }),
                Err(e @ EdgeError::SharePassword { .. }) => failure = e,
                Err(e @ EdgeError::TokenExpired) if !matches!(failure, EdgeError::SharePassword { .. }) => {
                    failure = e
                }
                Err(_) => {}
            }
        }
        Err(failure)
    }

    async fn check(
        &self,
        snap: &Snapshot,
        route: &Route,
        c: &Credential,
        now: u64,
    ) -> Result<(Kind, u64), EdgeError> {
        let token = c.token.as_str();
        if token.len() > MAX_TOKEN_LEN {
            return Err(EdgeError::TokenInvalid);
        }
        if token.starts_with(PREVIEW_TOKEN_PREFIX) {
            let claims = self.verify(snap, token, now)?;
            preview_token(snap, route, &claims, now)
        } else if c.transport == Transport::Cookie && token.starts_with(SESSION_PREFIX) {
            let (share_id, exp) = self.sessions.verify(token, now).ok_or(EdgeError::TokenInvalid)?;
            let share = snap.share_by_id(&share_id).ok_or(EdgeError::TokenInvalid)?;
            share_opens(snap, route, share, now)?;
            Ok((Kind::Share, exp.saturating_sub(now)))
        } else if token.starts_with(SHARE_TOKEN_PREFIX) {
            let share = self.share(snap, token).await.ok_or(EdgeError::TokenInvalid)?;
            let remaining = share_opens(snap, route, &share, now)?;
            if share.password {
                return Err(EdgeError::SharePassword { share_id: share.id.clone(), wrong: false });
            }
            Ok((Kind::Share, remaining))
        } else {
            self.preview_auth(snap, route, token).await?;
            Ok((Kind::PreviewAuth, SESSION_MAX_AGE_SECS))
        }
    }

    /// The claims of a genuine, unexpired `mp_` token signed by a key the snapshot still has.
    fn verify(&self, snap: &Snapshot, token: &str, now: u64) -> Result<Arc<PreviewClaims>, EdgeError> {
        if let Some(claims) = self.verified.get(token) {
            if claims.exp <= now {
                return Err(EdgeError::TokenExpired);
            }
            if snap.verify_keys.contains_key(claims.kid.as_str()) {
                return Ok(claims);
            }
        }
        let claims = tokens::verify_preview_token(token, now, |kid| snap.verify_keys.get(kid).map(|k| &**k))
            .map_err(|e| match e {
                TokenError::Expired => EdgeError::TokenExpired,
                _ => EdgeError::TokenInvalid,
            })?;
        let claims = Arc::new(claims);
        self.verified.insert(token.to_string(), claims.clone());
        Ok(claims)
    }

    async fn share(&self, snap: &Snapshot, token: &str) -> Option<Arc<Share>> {
        let hash = tokens::sha256_hex(token);
        if let Some(share) = snap.shares.get(hash.as_str()) {
            return Some(share.clone());
        }
        match self.lookup.credential(&hash).await.as_deref() {
            Some(CredentialLookup::Share { share }) => Some(Arc::new(share.clone())),
            _ => None,
        }
    }

    /// The sandbox's own token. Hashing first means a lookup's timing says nothing about the token.
    async fn preview_auth(&self, snap: &Snapshot, route: &Route, token: &str) -> Result<(), EdgeError> {
        // Compared as a digest: nothing formatted unless control has to be asked.
        let hash = tokens::Sha256::of(token);
        let Some(sandbox) = route.sandbox() else { return Err(EdgeError::TokenInvalid) };
        if let Some(expected) = &sandbox.preview_auth_sha256 {
            if bool::from(hash.0.ct_eq(&expected.0)) {
                return Ok(());
            }
        }
        // Known, but another sandbox's (or this one's before a rotation): no need to ask.
        if snap.preview_auth.contains_key(&hash.0) {
            return Err(EdgeError::TokenInvalid);
        }
        match self.lookup.credential(&hash.to_hex()).await.as_deref() {
            Some(CredentialLookup::PreviewAuth { sandbox_id }) if *sandbox_id == sandbox.id => Ok(()),
            _ => Err(EdgeError::TokenInvalid),
        }
    }
}

/// An `mp_` token opens its sandbox (and only its port, if it names one) while signed, unexpired,
/// unrevoked and scoped to read.
fn preview_token(
    snap: &Snapshot,
    route: &Route,
    claims: &PreviewClaims,
    now: u64,
) -> Result<(Kind, u64), EdgeError> {
    let opens = claims.tid == route.tenant.tenant.id
        && route.sandbox().is_some_and(|s| claims.sbx == s.id)
        && claims.port.is_none_or(|p| Some(p) == route.port())
        && claims.scp.iter().any(|s| s == SCOPE_READ)
        && !snap.revocations.contains_key(claims.jti.as_str());
    if !opens {
        return Err(EdgeError::TokenInvalid);
    }
    Ok((Kind::PreviewToken, claims.exp.saturating_sub(now)))
}

/// A share opens its preview's port of its sandbox until it expires; returns the seconds left.
fn share_opens(snap: &Snapshot, route: &Route, share: &Share, now: u64) -> Result<u64, EdgeError> {
    let preview = snap.preview_by_id(&share.preview_id).ok_or(EdgeError::TokenInvalid)?;
    let opens =
        route.sandbox().is_some_and(|s| preview.sandbox_id == s.id) && Some(preview.port) == route.port();
    if share.tenant_id != route.tenant.tenant.id || !opens {
        return Err(EdgeError::TokenInvalid);
    }
    match share.expires_at {
        Some(exp) if exp <= now => Err(EdgeError::TokenExpired),
        Some(exp) => Ok((exp - now).min(SESSION_MAX_AGE_SECS)),
        None => Ok(SESSION_MAX_AGE_SECS),
    }
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
