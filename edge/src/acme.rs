//! ACME HTTP-01: any edge answers `/.well-known/acme-challenge/{token}` for any host, from the challenges
//! control publishes in the feed, so the CA may reach whichever edge its DNS lookup lands on.

use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};

use crate::state::Snapshot;

const PREFIX: &str = "/.well-known/acme-challenge/";

/// Whether the request is for an ACME challenge (whatever the answer).
pub fn is_challenge(req: &RequestHeader) -> bool {
    req.uri.path().starts_with(PREFIX)
}

/// The answer to a challenge request: 200 with the key authorization, or 404 for a token not (or no
/// longer) published. `None` when the request is not a challenge.
pub fn answer(snap: &Snapshot, req: &RequestHeader) -> Option<pingora::Result<(ResponseHeader, Bytes)>> {
    let token = req.uri.path().strip_prefix(PREFIX)?;
    let body = snap.acme_challenges.get(token).map(|k| Bytes::from(k.to_string()));
    let status = if body.is_some() { 200 } else { 404 };
    let body = body.unwrap_or_else(|| Bytes::from_static(b"no such challenge\n"));
    Some(response(status, body))
}

fn response(status: u16, body: Bytes) -> pingora::Result<(ResponseHeader, Bytes)> {
    let mut header = ResponseHeader::build(status, Some(3))?;
    header.insert_header(http::header::CONTENT_TYPE, "text/plain")?;
    header.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    header.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    Ok((header, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn req(path: &str) -> RequestHeader {
        RequestHeader::build("GET", path.as_bytes(), None).expect("request")
    }

    #[test]
    fn published_tokens_are_answered_with_their_key_authorization_and_others_are_404() {
        let mut snap = Snapshot::empty();
        snap.acme_challenges.insert("tok123".into(), Arc::from("tok123.thumb"));
        let (head, body) =
            answer(&snap, &req("/.well-known/acme-challenge/tok123")).expect("challenge").expect("ok");
        assert_eq!((head.status.as_u16(), &body[..]), (200, &b"tok123.thumb"[..]));
        let (head, _) =
            answer(&snap, &req("/.well-known/acme-challenge/other")).expect("challenge").expect("ok");
        assert_eq!(head.status.as_u16(), 404);
        assert!(answer(&snap, &req("/index.html")).is_none());
    }
}
