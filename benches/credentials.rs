//! The credential check at the edge: an `mp_` token's Ed25519 signature checked on first sight, then the
//! whole check once its signature is remembered; a share token found by hash in the snapshot; and the
//! miss path (a hash the snapshot does not know, refused once the look-up budget is spent). All but the
//! first go through `Authenticator::authenticate`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use portico_edge::auth::password::Sessions;
use portico_edge::auth::{Authenticator, Credential, Transport};
use portico_edge::control::Control;
use portico_edge::lookup::Lookup;
use portico_edge::route::resolve;
use portico_edge::state::Snapshot;
use portico_wire::tokens::{self, PreviewClaims, SCOPE_READ};
use portico_wire::{
    self as wire, Preview, Sandbox, SandboxState, Settings, Share, Tenant, Visibility, WakePolicy,
};
use ring::signature::{Ed25519KeyPair, KeyPair};

fn snapshot(key: &Ed25519KeyPair, share_token: &str) -> Snapshot {
    Snapshot::from_wire(wire::Snapshot {
        version: 1,
        settings: Settings {
            host_templates: wire::DEFAULT_HOST_TEMPLATES.iter().map(|s| s.to_string()).collect(),
            default_frame_ancestors: vec![],
            default_rate_limits: Default::default(),
            upstream_allow: Vec::new(),
        },
        tenants: vec![Tenant {
            id: "tn_a".into(),
            branding: None,
            frame_ancestors: None,
            rate_limits: Default::default(),
            preview_domain: None,
            upstream_cidrs: None,
        }],
        sandboxes: vec![Sandbox {
            id: "abcd1234".into(),
            tenant_id: "tn_a".into(),
            address: "127.0.0.2".into(),
            state: SandboxState::Running,
            default_visibility: Visibility::Private,
            wake_policy: WakePolicy::OnRequest,
            preview_auth_sha256: Some(tokens::Sha256::of("sandbox-token-0123456789")),
            allow_preflight: false,
        }],
        previews: vec![Preview {
            id: "pv_a".into(),
            slug: "slugaaaa".into(),
            tenant_id: "tn_a".into(),
            sandbox_id: "abcd1234".into(),
            port: 3000,
            visibility: Visibility::Private,
        }],
        verify_keys: vec![wire::VerifyKey {
            kid: "k1".into(),
            public_key: tokens::b64(key.public_key().as_ref()),
        }],
        revocations: (0..10_000)
            .map(|i| wire::Revocation { jti: format!("revoked{i}"), expires_at: u64::MAX })
            .collect(),
        shares: vec![Share {
            id: "sh_a".into(),
            tenant_id: "tn_a".into(),
            preview_id: "pv_a".into(),
            sha256: tokens::sha256_hex(share_token),
            expires_at: None,
            password: false,
        }],
        deployments: vec![],
        certificates: vec![],
        acme_challenges: vec![],
    })
    .expect("valid snapshot")
}

fn checks(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let doc = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).expect("keygen");
    let key = Ed25519KeyPair::from_pkcs8(doc.as_ref()).expect("key");
    let share_token = format!("ms_{}", "s".repeat(43));
    let snap = snapshot(&key, &share_token);
    let route = resolve(&snap, "3000-abcd1234.sandbox.localhost").expect("routes");
    let mp = tokens::sign_preview_token(
        &PreviewClaims {
            kid: "k1".into(),
            tid: "tn_a".into(),
            sbx: "abcd1234".into(),
            port: Some(3000),
            scp: vec![SCOPE_READ.into()],
            exp: u64::MAX / 2,
            jti: "j1".into(),
        },
        &key,
    );
    // Nothing listens on this control URL: a look-up that is sent fails fast, and is not cached.
    let auth = Arc::new(Authenticator::new(
        Lookup::new(Arc::new(Control::new(vec!["http://127.0.0.1:9".into()], "t".into()).expect("client"))),
        Sessions::new("t"),
    ));
    let offer = |t: &str| vec![Credential { token: t.to_string(), transport: Transport::Header }];

    let public = key.public_key().as_ref().to_vec();
    c.bench_function("mp_ token signature verify (Ed25519), first sight", |b| {
        b.iter(|| tokens::verify_preview_token(black_box(&mp), 1, |_| Some(public.as_slice())).is_ok())
    });
    c.bench_function("mp_ token check, signature already verified (10k revocations)", |b| {
        b.iter(|| rt.block_on(auth.authenticate(&snap, &route, black_box(offer(&mp)))).is_ok())
    });
    c.bench_function("share token found by hash in the snapshot", |b| {
        b.iter(|| rt.block_on(auth.authenticate(&snap, &route, black_box(offer(&share_token)))).is_ok())
    });
    // Spend the budget first so that the miss path measured is the edge's own work, not a network call.
    rt.block_on(async {
        for i in 0..200 {
            let _ = auth.authenticate(&snap, &route, offer(&format!("ms_spend{i}"))).await;
        }
    });
    let mut i = 0u64;
    c.bench_function("miss path: unknown share token, look-up budget spent", |b| {
        b.iter(|| {
            i += 1;
            rt.block_on(auth.authenticate(&snap, &route, offer(&format!("ms_unknown{i}")))).is_err()
        })
    });
}

criterion_group!(benches, checks);
criterion_main!(benches);
