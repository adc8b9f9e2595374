use ring::rand::SystemRandom;
use ring::signature::KeyPair;

use super::*;

fn keypair() -> Ed25519KeyPair {
    let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("keygen");
    Ed25519KeyPair::from_pkcs8(doc.as_ref()).expect("key")
}

fn claims() -> PreviewClaims {
    PreviewClaims {
        kid: "k1".into(),
        tid: "tn_a".into(),
        sbx: "abcd1234".into(),
        port: Some(3000),
        scp: vec![SCOPE_READ.into()],
        exp: 2_000,
        jti: "j1".into(),
    }
}

#[test]
fn a_signed_token_verifies_until_it_expires() {
    let key = keypair();
    let public = key.public_key().as_ref().to_vec();
    let token = sign_preview_token(&claims(), &key);
    assert!(token.starts_with("mp_"));
    let lookup = |kid: &str| (kid == "k1").then_some(public.as_slice());
    assert_eq!(verify_preview_token(&token, 1_999, lookup), Ok(claims()));
    assert_eq!(verify_preview_token(&token, 2_000, lookup), Err(TokenError::Expired));
}

#[test]
fn tampering_with_claims_or_signature_is_detected() {
    let key = keypair();
    let public = key.public_key().as_ref().to_vec();
    let lookup = |_: &str| Some(public.as_slice());
    let token = sign_preview_token(&claims(), &key);
    let (payload, sig) = token.split_once('.').expect("dot");

    let mut other = claims();
    other.sbx = "zzzz9999".into();
    let forged_payload = sign_preview_token(&other, &key);
    let forged = format!("{}.{sig}", forged_payload.split_once('.').expect("dot").0);
    assert_eq!(verify_preview_token(&forged, 0, lookup), Err(TokenError::BadSignature));

    let mut bad_sig = sig.to_string();
    bad_sig.replace_range(0..1, if bad_sig.starts_with('A') { "B" } else { "A" });
    assert_eq!(
        verify_preview_token(&format!("{payload}.{bad_sig}"), 0, lookup),
        Err(TokenError::BadSignature)
    );
}

#[test]
fn another_keys_signature_or_unknown_kid_fails() {
    let (key, other) = (keypair(), keypair());
    let other_public = other.public_key().as_ref().to_vec();
    let token = sign_preview_token(&claims(), &key);
    assert_eq!(
        verify_preview_token(&token, 0, |_| Some(other_public.as_slice())),
        Err(TokenError::BadSignature)
    );
    assert_eq!(verify_preview_token(&token, 0, |_| None), Err(TokenError::UnknownKey));
}

#[test]
fn malformed_tokens_of_every_kind_are_refused_without_panic() {
    let long = format!("mp_{}", "A".repeat(MAX_TOKEN_LEN));
    for bad in [
        "",
        "mp_",
        "mp_.",
        "mp_abc",
        "mp_abc.",
        "mp_.abc",
        "mp_!!!.###",
        "ms_abc",
        "mp_e30.AAAA",
        &long,
        "mp_eyJraWQiOjF9.AAAA",
        "mp_ÿÿÿ.ÿ",
        "mp_a.b.c",
    ] {
        let r = verify_preview_token(bad, 0, |_| None);
        assert!(matches!(r, Err(TokenError::Malformed) | Err(TokenError::UnknownKey)), "{bad:?} gave {r:?}");
    }
}

/// Unknown claims are ignored (mixed versions), which must not let a token whose key is unknown through.
#[test]
fn claims_with_unknown_fields_still_need_a_known_key() {
    let payload = B64.encode(br#"{"kid":"k1","tid":"t","sbx":"s","scp":[],"exp":9,"jti":"j","admin":true}"#);
    assert_eq!(verify_preview_token(&format!("mp_{payload}.AAAA"), 0, |_| None), Err(TokenError::UnknownKey));
}

#[test]
fn sha256_hex_is_lowercase_hex() {
    assert_eq!(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

/// A token minted by a newer control may carry a claim this edge does not know; its signature still holds
/// and the claims the edge knows still decide.
#[test]
fn a_token_with_a_claim_added_by_a_newer_control_still_verifies() {
    let key = keypair();
    let public = key.public_key().as_ref().to_vec();
    let lookup = |kid: &str| (kid == "k1").then_some(public.as_slice());
    let mut payload = serde_json::to_value(claims()).expect("json");
    payload["added_claim"] = serde_json::json!({"nested": [1, 2]});
    let signed = format!("{PREVIEW_TOKEN_PREFIX}{}", B64.encode(serde_json::to_vec(&payload).expect("json")));
    let token = format!("{signed}.{}", B64.encode(key.sign(signed.as_bytes()).as_ref()));
    assert_eq!(verify_preview_token(&token, 1_999, lookup), Ok(claims()));
}

#[test]
fn a_digest_reads_back_from_its_hex_in_either_case_and_nothing_else_parses() {
    let h = Sha256::of("sandbox-token");
    assert_eq!(h.to_hex(), sha256_hex("sandbox-token"));
    assert_eq!(Sha256::from_hex(&h.to_hex()), Some(h));
    assert_eq!(Sha256::from_hex(&h.to_hex().to_uppercase()), Some(h));
    for bad in ["", "ab", &"g".repeat(64), &"a".repeat(63), &"a".repeat(65), &"é".repeat(32)] {
        assert_eq!(Sha256::from_hex(bad), None, "{bad:?}");
    }
    // On the wire: the hex string, as before it was held as bytes.
    let json = serde_json::to_string(&h).expect("serialises");
    assert_eq!(json, format!("\"{}\"", h.to_hex()));
    assert_eq!(serde_json::from_str::<Sha256>(&json).expect("parses"), h);
    assert!(serde_json::from_str::<Sha256>("\"not hex\"").is_err());
}
