//! Password shares: the form body and the session cookie value. Input: a mode byte, eight bytes each of
//! `now` and of an age/expiry, then `share id\npassword\nrest` (raw bytes).
//! Invariants: no panic; a form is accepted only with a CSRF token this key made for this share within
//! the hour, and gives back the password as typed; a genuine session verifies until it expires; a value
//! that verifies is exactly one `issue` made (edits of a genuine one never pass).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use portico_edge::auth::password::Sessions;
use portico_fuzz::form_decode;

const CSRF_TTL_SECS: u64 = 3600;

fn sessions() -> &'static Sessions {
    static SESSIONS: OnceLock<Sessions> = OnceLock::new();
    SESSIONS.get_or_init(|| Sessions::new("edge-token"))
}

/// The form as the branded page submits it.
fn form(password: &str, csrf: &str) -> String {
    let enc = |s| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
    format!("password={}&csrf={}", enc(password), enc(csrf))
}

/// An accepted body's CSRF token is one this key made for `share_id`, at most an hour before `now`.
fn check_accepted(s: &Sessions, share_id: &str, body: &[u8], now: u64) {
    let body = String::from_utf8_lossy(body);
    let csrf = body
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(n, _)| *n == "csrf")
        .map(|(_, v)| form_decode(v))
        .unwrap_or_default();
    let (ts, mac) = csrf.split_once('.').unwrap_or_default();
    let ts: u64 = ts.parse().unwrap_or_else(|_| panic!("accepted csrf {csrf:?}"));
    assert!(ts <= now && now - ts <= CSRF_TTL_SECS, "csrf of {ts} accepted at {now}");
    assert!(s.csrf(share_id, ts).ends_with(&format!(".{mac}")), "forged csrf {csrf:?} for {share_id:?}");
}

fuzz_target!(|data: &[u8]| {
    let s = sessions();
    let Some((&mode, rest)) = data.split_first() else { return };
    let Some((now, rest)) = rest.split_first_chunk::<8>() else { return };
    let Some((n, rest)) = rest.split_first_chunk::<8>() else { return };
    let (now, n) = (u64::from_le_bytes(*now), u64::from_le_bytes(*n));
    let mut parts = rest.splitn(3, |b| *b == b'\n');
    let (Ok(share_id), Ok(password), raw) = (
        std::str::from_utf8(parts.next().unwrap_or_default()),
        std::str::from_utf8(parts.next().unwrap_or_default()),
        parts.next().unwrap_or_default(),
    ) else {
        return;
    };

    // The form: a genuine one made `n % 2h` seconds ago, and the raw bytes as a body.
    let made = now.saturating_sub(n % (2 * CSRF_TTL_SECS));
    let genuine = form(password, &s.csrf(share_id, made));
    let result = s.submitted_password(share_id, genuine.as_bytes(), now);
    let fresh = now - made <= CSRF_TTL_SECS;
    let want = (fresh && !password.is_empty()).then(|| password.to_string());
    assert_eq!(result.ok(), want, "genuine form {genuine:?} at {now}");
    if let Ok(p) = s.submitted_password(share_id, raw, now) {
        assert!(!p.is_empty());
        check_accepted(s, share_id, raw, now);
    }

    // The session cookie: a genuine one expiring at `n`, and either the raw bytes or the genuine one with
    // edits (mode odd: `position, byte` pairs; byte 0 deletes).
    let issued = s.issue(share_id, n);
    let want = (n > now && !share_id.contains('.')).then(|| (share_id.to_string(), n));
    assert_eq!(s.verify(&issued, now), want, "{issued:?} at {now}");
    let value = if mode % 2 == 0 {
        raw.to_vec()
    } else {
        let mut value = issued.clone().into_bytes();
        for edit in raw.chunks_exact(3) {
            let at = u16::from_le_bytes([edit[0], edit[1]]) as usize % (value.len() + 1);
            match edit[2] {
                0 if at < value.len() => {
                    value.remove(at);
                }
                b => value.insert(at, b),
            }
        }
        value
    };
    let Ok(value) = std::str::from_utf8(&value) else { return };
    if let Some((id, exp)) = s.verify(value, now) {
        assert!(exp > now, "{value:?} expired at {exp} verified at {now}");
        assert_eq!(value, s.issue(&id, exp), "an altered session value verified");
    }
});
