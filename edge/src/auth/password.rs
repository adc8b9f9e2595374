//! Password-protected shares: the branded form's CSRF token, the check at control, and the session
//! cookie that proves the password was given. Cookies and CSRF tokens are MACed with a key every edge
//! derives from the shared edge token, so any edge accepts what another issued.

use percent_encoding::percent_decode_str;
use ring::digest::{digest, SHA256};
use ring::hmac;

use crate::error::EdgeError;

/// Session cookies for password shares: `ps1.<share id>.<expiry>.<mac>`.
pub const SESSION_PREFIX: &str = "ps1.";
const CSRF_TTL_SECS: u64 = 3600;
/// A form body larger than this is not a password form.
pub const MAX_FORM_BYTES: usize = 8 * 1024;

pub struct Sessions {
    key: hmac::Key,
}

impl Sessions {
    pub fn new(edge_token: &str) -> Self {
        let seed = digest(&SHA256, format!("portico password sessions v1|{edge_token}").as_bytes());
        Self { key: hmac::Key::new(hmac::HMAC_SHA256, seed.as_ref()) }
    }

    fn mac(&self, msg: &str) -> String {
        portico_wire::tokens::b64(hmac::sign(&self.key, msg.as_bytes()).as_ref())
    }

    fn check(&self, msg: &str, mac: &str) -> bool {
        portico_wire::tokens::b64_decode(mac)
            .is_some_and(|m| hmac::verify(&self.key, msg.as_bytes(), &m).is_ok())
    }

    /// A session value for `share_id`, valid until `exp` (unix seconds).
    pub fn issue(&self, share_id: &str, exp: u64) -> String {
        let body = format!("{SESSION_PREFIX}{share_id}.{exp}");
        let mac = self.mac(&body);
        format!("{body}.{mac}")
    }

    /// The share id and expiry of a genuine, unexpired session value.
    pub fn verify(&self, value: &str, now: u64) -> Option<(String, u64)> {
        let (body, mac) = value.rsplit_once('.')?;
        let (share_id, exp) = body.strip_prefix(SESSION_PREFIX)?.split_once('.')?;
        let exp: u64 = exp.parse().ok()?;
        (self.check(body, mac) && exp > now).then(|| (share_id.to_string(), exp))
    }

    /// The CSRF token the form carries: binds the submission to this share and to a recent form.
    pub fn csrf(&self, share_id: &str, now: u64) -> String {
        format!("{now}.{}", self.mac(&format!("csrf|{share_id}|{now}")))
    }

    fn csrf_ok(&self, share_id: &str, token: &str, now: u64) -> bool {
        let Some((ts, mac)) = token.split_once('.') else { return false };
        let Ok(ts) = ts.parse::<u64>() else { return false };
        ts <= now && now - ts <= CSRF_TTL_SECS && self.check(&format!("csrf|{share_id}|{ts}"), mac)
    }

    /// Reads a submitted form: the password when the CSRF token is good, else the form again.
    pub fn submitted_password(&self, share_id: &str, body: &[u8], now: u64) -> Result<String, EdgeError> {
        let again = || EdgeError::SharePassword { share_id: share_id.to_string(), wrong: true };
        let body = std::str::from_utf8(body).map_err(|_| again())?;
        let field = |name: &str| {
            body.split('&')
                .filter_map(|p| p.split_once('='))
                .find(|(n, _)| *n == name)
                .map(|(_, v)| percent_decode_str(&v.replace('+', " ")).decode_utf8_lossy().into_owned())
        };
        let csrf = field("csrf").ok_or_else(again)?;
        if !self.csrf_ok(share_id, &csrf, now) {
            return Err(again());
        }
        field("password").filter(|p| !p.is_empty()).ok_or_else(again)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_verify_only_untampered_unexpired_values() {
        let s = Sessions::new("edge-token");
        let v = s.issue("sh_abc", 100);
        assert_eq!(s.verify(&v, 99), Some(("sh_abc".into(), 100)));
        assert_eq!(s.verify(&v, 100), None, "expired");
        assert_eq!(s.verify(&v.replace("sh_abc", "sh_abd"), 99), None, "another share");
        assert_eq!(s.verify(&v.replace(".100.", ".999."), 99), None, "extended");
        assert_eq!(Sessions::new("other-token").verify(&v, 99), None, "another deployment's key");
        for junk in ["", "ps1.", "ps1.a.b", "ps1...", "ps1.a.1.%%%"] {
            assert_eq!(s.verify(junk, 0), None, "{junk}");
        }
    }

    #[test]
    fn csrf_binds_share_and_age() {
        let s = Sessions::new("edge-token");
        let csrf = s.csrf("sh_a", 1_000);
        let form = |c: &str| format!("password=open+sesame&csrf={}", c.replace('.', "%2E"));
        assert_eq!(
            s.submitted_password("sh_a", form(&csrf).as_bytes(), 1_010).ok().as_deref(),
            Some("open sesame")
        );
        assert!(s.submitted_password("sh_b", form(&csrf).as_bytes(), 1_010).is_err());
        assert!(s.submitted_password("sh_a", form(&csrf).as_bytes(), 1_000 + CSRF_TTL_SECS + 1).is_err());
        assert!(s.submitted_password("sh_a", b"password=x", 1_010).is_err());
        assert!(s.submitted_password("sh_a", &[0xff, 0xfe], 1_010).is_err());
    }
}
