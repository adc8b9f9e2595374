//! `X-Request-Id`: one id per request, in the access log, sent upstream and shown on every error the edge
//! answers, so an operator can find the log line a user's "Reference: …" points at.
//!
//! A client's own id is kept only when the client is a proxy named by `--trusted-proxy` (which already
//! logged it) and the value is sane; anyone else could plant ids to confuse the logs. New ids are a
//! per-process random prefix and a counter: unique across edges and restarts, no lock, no syscall.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;

use pingora::http::RequestHeader;

pub const HEADER: &str = "x-request-id";

/// Longer client ids are replaced: a log line and an error page should not carry kilobytes of them.
pub const MAX_LEN: usize = 128;

/// Random per process, so two edges (or one edge before and after a restart) never hand out the same id.
static PREFIX: LazyLock<u64> = LazyLock::new(|| {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    // The system's random source does not fail on Linux; were it to, the clock and pid still differ.
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        return nanos.as_nanos() as u64 ^ u64::from(std::process::id()) << 40;
    }
    u64::from_le_bytes(bytes)
});
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// One request's id. A generated one is kept as its text inline: every request has one, and most never
/// show it anywhere but in the header sent upstream, so it costs no allocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestId {
    /// 32 lower-case hex digits: the process prefix, then the counter.
    Generated([u8; 32]),
    /// A trusted proxy's, checked by [`is_sane`].
    Given(Box<str>),
}

impl RequestId {
    pub fn as_str(&self) -> &str {
        match self {
            // Hex digits are ASCII; the fallback is never taken.
            Self::Generated(text) => std::str::from_utf8(text).unwrap_or_default(),
            Self::Given(id) => id,
        }
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A fresh id.
pub fn generate() -> RequestId {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&PREFIX.to_be_bytes());
    raw[8..].copy_from_slice(&n.to_be_bytes());
    let mut text = [0u8; 32];
    // 16 bytes always fit 32 digits.
    let _ = hex::encode_to_slice(raw, &mut text);
    RequestId::Generated(text)
}

/// 1 to [`MAX_LEN`] visible ASCII characters: safe in a header, a log field and an HTML page.
pub fn is_sane(value: &[u8]) -> bool {
    (1..=MAX_LEN).contains(&value.len()) && value.iter().all(|b| b.is_ascii_graphic())
}

/// The id of this request: the client's when it comes from a trusted proxy and is sane, else `None` (the
/// caller keeps the one it generated).
pub fn from_trusted(req: &RequestHeader, peer_trusted: bool) -> Option<RequestId> {
    if !peer_trusted {
        return None;
    }
    let mut values = req.headers.get_all(HEADER).iter();
    // Two ids for one request: neither can be believed.
    match (values.next(), values.next()) {
        (Some(v), None) if is_sane(v.as_bytes()) => v.to_str().ok().map(|id| RequestId::Given(id.into())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn req(ids: &[&[u8]]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        for id in ids {
            r.append_header(HEADER, http::HeaderValue::from_bytes(id).unwrap()).unwrap();
        }
        r
    }

    #[test]
    fn generated_ids_are_unique_hex_of_one_length() {
        let (a, b) = (generate(), generate());
        assert_ne!(a, b);
        let (a, b) = (a.as_str(), b.as_str());
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()), "{a}");
        assert_eq!(a[..16], b[..16], "one prefix per process");
        assert!(is_sane(a.as_bytes()));
    }

    #[test]
    fn a_trusted_proxy_keeps_a_sane_id() {
        assert_eq!(
            from_trusted(&req(&[b"lb-7f3a:42"]), true).as_ref().map(RequestId::as_str),
            Some("lb-7f3a:42")
        );
    }

    #[test]
    fn an_untrusted_client_never_sets_the_id() {
        assert_eq!(from_trusted(&req(&[b"planted"]), false), None);
        assert_eq!(from_trusted(&req(&[]), true), None);
    }

    #[test]
    fn insane_or_repeated_ids_are_replaced() {
        let long = [b'a'; MAX_LEN + 1];
        let max = [b'a'; MAX_LEN];
        assert_eq!(from_trusted(&req(&[&max]), true).map(|s| s.as_str().len()), Some(MAX_LEN));
        for bad in [&long[..], b"", b"has space", b"tab\there", "é".as_bytes()] {
            assert_eq!(from_trusted(&req(&[bad]), true), None, "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(from_trusted(&req(&[b"one", b"two"]), true), None);
        assert!(!is_sane(b"del\x7f") && !is_sane(b"nul\0"), "control characters");
    }
}
