//! `mp_` preview tokens: arbitrary strings, and genuine tokens with byte edits. Input: a mode byte, eight
//! bytes of `now`, then the token (mode even) or edits of a genuine token (mode odd: `position, byte`
//! pairs; byte 0 deletes).
//! Invariants: no panic; a token that verifies is unexpired and is exactly a token the key signed (no
//! edit of a genuine token, nor any other string, passes).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use portico_wire::tokens::{sign_preview_token, verify_preview_token, PreviewClaims, SCOPE_READ};
use ring::signature::{Ed25519KeyPair, KeyPair};

struct Keys {
    signer: Ed25519KeyPair,
    public: Vec<u8>,
    /// Another genuine key, under another kid: it must not verify the signer's tokens.
    other: Vec<u8>,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let pair = |seed: u8| match Ed25519KeyPair::from_seed_unchecked(&[seed; 32]) {
            Ok(k) => k,
            Err(e) => panic!("test key: {e}"),
        };
        let signer = pair(7);
        let public = signer.public_key().as_ref().to_vec();
        let other = pair(8).public_key().as_ref().to_vec();
        Keys { signer, public, other }
    })
}

/// The claims every genuine token carries; `exp` comes from the input.
fn claims(exp: u64) -> PreviewClaims {
    PreviewClaims {
        kid: "k1".into(),
        tid: "tn_a".into(),
        sbx: "sbxa0001".into(),
        port: Some(3000),
        scp: vec![SCOPE_READ.into()],
        exp,
        jti: "j1".into(),
    }
}

fuzz_target!(|data: &[u8]| {
    let keys = keys();
    let Some((&mode, rest)) = data.split_first() else { return };
    let Some((now, rest)) = rest.split_first_chunk::<8>() else { return };
    let now = u64::from_le_bytes(*now);
    let token = if mode % 2 == 0 {
        rest.to_vec()
    } else {
        // The genuine token expires a little after `now`, or (mode bit 1) is already expired.
        let exp = if mode & 2 == 0 { now.saturating_add(60) } else { now.saturating_sub(1) };
        let mut token = sign_preview_token(&claims(exp), &keys.signer).into_bytes();
        for edit in rest.chunks_exact(3) {
            let at = u16::from_le_bytes([edit[0], edit[1]]) as usize % (token.len() + 1);
            match edit[2] {
                0 if at < token.len() => {
                    token.remove(at);
                }
                b => token.insert(at, b),
            }
        }
        token
    };
    let Ok(token) = std::str::from_utf8(&token) else { return };

    let lookup = |kid: &str| match kid {
        "k1" => Some(keys.public.as_slice()),
        "k2" => Some(keys.other.as_slice()),
        "k3" => Some(&b"not a key"[..]),
        _ => None,
    };
    if let Ok(c) = verify_preview_token(token, now, lookup) {
        assert!(now < c.exp, "{token:?} verified at {now} but expires at {}", c.exp);
        assert_eq!(c.kid, "k1", "{token:?} verified under a key that signed nothing");
        assert_eq!(token, sign_preview_token(&c, &keys.signer), "an altered token verified");
    }
});
