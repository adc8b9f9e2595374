#![allow(clippy::unwrap_used)]

use super::*;
use crate::snapshot::{ActiveVersion, RateLimits, VersionTarget};

/// One of every kind of record, with each optional field both present and absent, and text that is not
/// ASCII where a tenant could put it.
fn snapshot() -> Snapshot {
    let sandbox = |id: &str, hash: Option<&str>| Sandbox {
        id: id.into(),
        tenant_id: "tn_a".into(),
        address: "10.0.0.1".into(),
        state: SandboxState::Hibernated,
        default_visibility: Visibility::Public,
        wake_policy: WakePolicy::Off,
        preview_auth_sha256: hash.map(|h| crate::tokens::Sha256::from_hex(h).unwrap()),
        allow_preflight: hash.is_some(),
    };
    Snapshot {
        version: 42,
        settings: Settings {
            host_templates: vec!["{port}-{sandbox}.sandbox.localhost".into()],
            default_frame_ancestors: vec!["https://app.example".into()],
            default_rate_limits: RateLimits::default(),
            upstream_allow: crate::upstream::default_allow(),
        },
        tenants: vec![Tenant {
            id: "tn_a".into(),
            branding: None,
            frame_ancestors: Some(vec!["https://ü.example".into()]),
            rate_limits: None,
            preview_domain: Some("preview.acme.dev".into()),
            upstream_cidrs: None,
        }],
        sandboxes: vec![
            sandbox("sb0001", None),
            sandbox("a-sandbox-id-longer-than-twenty-four-bytes", Some(&"ab".repeat(32))),
        ],
        previews: vec![Preview {
            id: "pv_1".into(),
            slug: "myslug".into(),
            tenant_id: "tn_a".into(),
            sandbox_id: "sb0001".into(),
            port: 65535,
            visibility: Visibility::Private,
        }],
        verify_keys: vec![VerifyKey { kid: "k1".into(), public_key: "AAAA".into() }],
        revocations: vec![Revocation { jti: "j1".into(), expires_at: u64::MAX }],
        shares: vec![
            Share {
                id: "sh_1".into(),
                tenant_id: "tn_a".into(),
                preview_id: "pv_1".into(),
                sha256: "cd".repeat(32),
                expires_at: Some(1_900_000_000),
                password: true,
            },
            Share {
                id: "sh_2".into(),
                tenant_id: "tn_a".into(),
                preview_id: "pv_1".into(),
                sha256: "ef".repeat(32),
                expires_at: None,
                password: false,
            },
        ],
        deployments: vec![Deployment {
            id: "dp_1".into(),
            tenant_id: "tn_a".into(),
            app: "shop".into(),
            workspace: "acme".into(),
            domains: vec!["shop.example".into()],
            unverified_domains: vec![],
            active: Some(ActiveVersion {
                id: "v1".into(),
                number: 1,
                target: VersionTarget::Release { sha256: "00".repeat(32) },
            }),
        }],
        certificates: vec![],
        acme_challenges: vec![AcmeChallenge { token: "t".into(), key_authorization: "t.k".into() }],
    }
}

fn packed(s: &Snapshot) -> Vec<u8> {
    let mut out = Vec::new();
    encode(s, &mut out).unwrap();
    out
}

#[test]
fn a_snapshot_decodes_to_what_was_encoded() {
    let s = snapshot();
    let bytes = packed(&s);
    assert_eq!(decode(&bytes).unwrap(), s);
    assert_eq!(decode(&bytes).unwrap().version, 42);
    assert_eq!(decode(&packed(&Snapshot::default())).unwrap(), Snapshot::default());
}

#[test]
fn every_cut_short_or_extended_input_is_an_error_not_a_panic() {
    let bytes = packed(&snapshot());
    for end in 0..bytes.len() {
        assert!(decode(&bytes[..end]).is_err(), "cut at {end} of {}", bytes.len());
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(decode(&longer), Err(PackedError::Trailing(at)) if at == bytes.len()));
}

#[test]
fn a_stream_read_in_small_pieces_decodes_as_the_whole_slice_does() {
    let s = snapshot();
    let bytes = packed(&s);
    // A buffer of 7 bytes: most values straddle two reads.
    let stream = std::io::BufReader::with_capacity(7, &bytes[..]);
    let (mut sandboxes, mut previews, mut shares) = (Vec::new(), Vec::new(), Vec::new());
    let rest = decode_with(stream, |r| sandboxes.push(r), |r| previews.push(r), |r| shares.push(r)).unwrap();
    assert_eq!(Snapshot { sandboxes, previews, shares, ..rest }, s);
    for end in [bytes.len() / 2, bytes.len() - 1] {
        let stream = std::io::BufReader::with_capacity(7, &bytes[..end]);
        assert!(matches!(decode_with(stream, drop, drop, drop), Err(PackedError::Truncated(_))));
    }
}

#[test]
fn damaged_inputs_say_what_is_wrong() {
    let bytes = packed(&snapshot());
    assert!(matches!(decode(b"{\"version\":1}"), Err(PackedError::Magic | PackedError::Truncated(_))));
    let mut other = bytes.clone();
    other[MAGIC.len()] = 9;
    assert!(matches!(decode(&other), Err(PackedError::Format { found: 9 })));
    // Every single byte flipped: an error or another valid snapshot, never a panic or a hang.
    for i in 0..bytes.len() {
        let mut damaged = bytes.clone();
        damaged[i] ^= 0xff;
        let _ = decode(&damaged);
    }
}

#[test]
fn a_huge_count_in_a_damaged_input_reserves_nothing_it_cannot_fill() {
    let mut bytes = packed(&Snapshot::default());
    // The sandboxes' count is the byte after the JSON section; make it 2^63-ish.
    let at = bytes.len() - 3;
    bytes.splice(at..at + 1, [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
    assert!(matches!(decode(&bytes), Err(PackedError::Truncated(_))));
}

#[test]
fn the_json_section_ignores_fields_a_newer_control_adds() {
    let mut out = Vec::new();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT.to_le_bytes());
    out.extend_from_slice(&7u64.to_le_bytes());
    let json = br#"{"settings":{"host_templates":[],"default_frame_ancestors":[],"added":1},"tenants":[],"new_part":[1]}"#;
    bytes(&mut out, json).unwrap();
    out.extend_from_slice(&[0, 0, 0]);
    let s = decode(&out).unwrap();
    assert_eq!(s.version, 7);
    assert!(s.sandboxes.is_empty());
}

#[test]
fn the_media_type_names_the_format() {
    assert!(MEDIA_TYPE.ends_with(&format!(".v{FORMAT}")));
}

#[test]
fn records_that_do_not_match_their_count_are_an_error_not_a_snapshot() {
    let s = snapshot();
    let rest = Rest {
        settings: &s.settings,
        tenants: &s.tenants,
        verify_keys: &[],
        revocations: &[],
        deployments: &[],
        certificates: &[],
        acme_challenges: &[],
    };
    let mut out = Vec::new();
    let short = Records { len: 3, iter: &s.sandboxes };
    let previews = Records { len: 0, iter: &s.previews[..0] };
    let shares = Records { len: 0, iter: &s.shares[..0] };
    assert!(encode_parts(1, &rest, short, previews, shares, &mut out).is_err());
}
