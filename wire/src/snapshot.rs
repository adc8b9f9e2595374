//! The routing state an edge holds, as it travels over the feed and rests in the edge's `--state-dir`.
//!
//! The feed starts with a whole [`Snapshot`] and continues with [`Change`]s, each naming the feed version it
//! brings the edge to, so an edge that reconnects with `since=<its version>` catches up with no gap.

pub use compact_str::CompactString;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    Private,
    Public,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SandboxState {
    Running,
    Hibernated,
    Waking,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum WakePolicy {
    OnRequest,
    Off,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Branding {
    pub logo_url: String,
    pub accent_color: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub support_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_name: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Rate {
    pub rps: u32,
    pub burst: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PerMinute {
    pub per_minute: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RateLimits {
    pub public_per_ip: Rate,
    pub private_per_token: Rate,
    pub auth_failures_per_ip: PerMinute,
}

impl Default for RateLimits {
    /// Generous enough for a dev server's burst of module requests on first load.
    fn default() -> Self {
        Self {
            public_per_ip: Rate { rps: 100, burst: 400 },
            private_per_token: Rate { rps: 200, burst: 800 },
            auth_failures_per_ip: PerMinute { per_minute: 30 },
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Tenant {
    pub id: String,
    #[serde(default)]
    pub branding: Option<Branding>,
    /// `None`: the platform default applies.
    #[serde(default)]
    pub frame_ancestors: Option<Vec<String>>,
    /// `None`: the platform default (`Settings::default_rate_limits`) applies.
    #[serde(default)]
    pub rate_limits: Option<RateLimits>,
    /// Only present once verified: an unverified domain must not route.
    #[serde(default)]
    pub preview_domain: Option<String>,
    /// The admin's narrowing of the upstream policy for this tenant; `None`: the global policy alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Vec<String>>))]
    pub upstream_cidrs: Option<Vec<crate::Cidr>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Sandbox {
    // Inline strings (up to 24 bytes, as ids and addresses are): an edge holds a million of these, and a
    // route lookup reads the id in the record it already fetched instead of following another pointer.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub id: CompactString,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub tenant_id: CompactString,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub address: CompactString,
    pub state: SandboxState,
    pub default_visibility: Visibility,
    pub wake_policy: WakePolicy,
    /// SHA-256 of the sandbox's preview-auth token (hex on the wire); the token itself never leaves
    /// control's response.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub preview_auth_sha256: Option<crate::tokens::Sha256>,
    /// CORS preflights (which carry no credential) of a running private sandbox go through unauthenticated.
    #[serde(default)]
    pub allow_preflight: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Preview {
    // Inline, as the sandbox's: a preview lookup compares the slug in the record it fetched and finds the
    // sandbox by an id it holds, with no pointer to follow for either.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub id: CompactString,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub slug: CompactString,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub tenant_id: CompactString,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub sandbox_id: CompactString,
    pub port: u16,
    pub visibility: Visibility,
}

/// A public key edges verify `mp_` preview tokens with, named by the `kid` in each token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VerifyKey {
    pub kid: String,
    /// Ed25519 public key, base64url without padding.
    pub public_key: String,
}

/// A revoked preview token, kept until it would have expired anyway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Revocation {
    pub jti: String,
    /// Unix seconds.
    pub expires_at: u64,
}

/// A share link (`ms_` token) of one preview, known to edges by the token's SHA-256 only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Share {
    pub id: String,
    pub tenant_id: String,
    pub preview_id: String,
    /// Hex SHA-256 of the `ms_` token.
    pub sha256: String,
    /// Unix seconds; `None`: until revoked.
    #[serde(default)]
    pub expires_at: Option<u64>,
    /// Whether a password must be given before the share opens.
    #[serde(default)]
    pub password: bool,
}

/// What control knows of a hashed credential an edge has not seen in its snapshot yet (a token minted
/// a moment ago).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CredentialLookup {
    Share { share: Share },
    PreviewAuth { sandbox_id: String },
}

/// How an edge checks a runtime version's instances: `GET path` expecting 2xx/3xx, or a TCP connect when
/// there is no path, every `interval_ms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HealthCheck {
    #[serde(default)]
    pub path: Option<String>,
    pub interval_ms: u64,
}

/// What a deployment version serves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum VersionTarget {
    /// Load-balanced instances (`ip:port`).
    Runtime {
        instances: Vec<String>,
        #[serde(default)]
        health_check: Option<HealthCheck>,
    },
    /// A static release, served by the edge itself; the id is the SHA-256 of its `.tar.gz`.
    Release { sha256: String },
}

/// The version a deployment serves now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ActiveVersion {
    pub id: String,
    pub number: u64,
    pub target: VersionTarget,
}

/// A published app: reached at `{app}.{workspace}` through the deployment host template and at its
/// custom domains (exact hosts).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Deployment {
    pub id: String,
    pub tenant_id: String,
    pub app: String,
    pub workspace: String,
    /// Verified custom domains: routed.
    #[serde(default)]
    pub domains: Vec<String>,
    /// Custom domains whose ownership is not proven yet: the edge answers 404 `domain_unverified`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unverified_domains: Vec<String>,
    /// `None` until a version is promoted: the host answers 404.
    #[serde(default)]
    pub active: Option<ActiveVersion>,
}

/// A certificate the edges serve over HTTPS, by the names in its SAN: uploaded through the API or issued
/// by ACME. `hostname` names the record (`*.example.app` for a wildcard).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Certificate {
    pub hostname: String,
    /// Full chain, leaf first.
    pub cert_pem: String,
    pub key_pem: String,
}

/// Never prints the private key.
impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate").field("hostname", &self.hostname).finish_non_exhaustive()
    }
}

/// An ACME HTTP-01 challenge any edge answers at `/.well-known/acme-challenge/{token}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AcmeChallenge {
    pub token: String,
    pub key_authorization: String,
}

/// Settings that come from control's command line rather than the API.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Settings {
    pub host_templates: Vec<String>,
    pub default_frame_ancestors: Vec<String>,
    /// For tenants that set none (control's `--default-*` flags).
    #[serde(default)]
    pub default_rate_limits: RateLimits,
    /// Where edges may dial (`--upstream-allow`). A state file from before the policy existed gets
    /// `control`'s default rather than nothing, so an upgraded edge still serves private-range sandboxes.
    #[serde(default = "crate::upstream::default_allow")]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub upstream_allow: Vec<crate::Cidr>,
}

/// `Default` is the empty state at version 0 (no host templates: it routes nothing).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Snapshot {
    pub version: u64,
    pub settings: Settings,
    pub tenants: Vec<Tenant>,
    pub sandboxes: Vec<Sandbox>,
    pub previews: Vec<Preview>,
    #[serde(default)]
    pub verify_keys: Vec<VerifyKey>,
    #[serde(default)]
    pub revocations: Vec<Revocation>,
    #[serde(default)]
    pub shares: Vec<Share>,
    #[serde(default)]
    pub deployments: Vec<Deployment>,
    #[serde(default)]
    pub certificates: Vec<Certificate>,
    #[serde(default)]
    pub acme_challenges: Vec<AcmeChallenge>,
}

/// One change to the state, carrying the object's whole current value (or its deletion).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Change {
    Settings { settings: Settings },
    UpsertTenant { tenant: Tenant },
    DeleteTenant { id: String },
    UpsertSandbox { sandbox: Sandbox },
    DeleteSandbox { id: String },
    UpsertPreview { preview: Preview },
    DeletePreview { id: String },
    UpsertVerifyKey { key: VerifyKey },
    DeleteVerifyKey { kid: String },
    UpsertRevocation { revocation: Revocation },
    DeleteRevocation { jti: String },
    UpsertShare { share: Share },
    DeleteShare { id: String },
    UpsertDeployment { deployment: Deployment },
    DeleteDeployment { id: String },
    UpsertCertificate { certificate: Certificate },
    DeleteCertificate { hostname: String },
    UpsertAcmeChallenge { challenge: AcmeChallenge },
    DeleteAcmeChallenge { token: String },
}

/// One answer of the feed endpoint. Read with [`FeedMessage::deserialize`] or, keeping the snapshot's
/// JSON text, as a [`FeedAnswer`]: both in one pass over the input (see [`FeedFields`]).
// One value per long-poll answer, moved once: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FeedMessage {
    /// The whole state at `snapshot.version`: the first answer, or when the edge is too far behind.
    Snapshot { snapshot: Snapshot },
    /// The changes after the edge's version, in order; applying them all brings it to `version`.
    Changes { version: u64, changes: Vec<Change> },
}

/// A [`FeedMessage`] whose snapshot is left as the JSON text control sent: the edge parses it from there
/// and writes the same text as its state dir's base, instead of serialising its state again.
#[derive(Debug)]
pub enum FeedAnswer<'a> {
    Snapshot(&'a serde_json::value::RawValue),
    Changes { version: u64, changes: Vec<Change> },
}

/// The fields of a feed answer, read in any order, unknown ones skipped (a newer control may add some).
/// A derived internally tagged enum would first copy the whole answer into an untyped tree, to find its
/// `type`: for a first snapshot of a million sandboxes that doubled the edge's parsing time and memory.
struct FeedFields<S> {
    kind: Option<FeedKind>,
    snapshot: Option<S>,
    version: Option<u64>,
    changes: Option<Vec<Change>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum FeedKind {
    Snapshot,
    Changes,
}

impl<'de, S: Deserialize<'de>> Deserialize<'de> for FeedFields<S> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields<S>(std::marker::PhantomData<S>);
        impl<'de, S: Deserialize<'de>> serde::de::Visitor<'de> for Fields<S> {
            type Value = FeedFields<S>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a feed answer (an object with a `type`)")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = FeedFields { kind: None, snapshot: None, version: None, changes: None };
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match key.as_ref() {
                        "type" => out.kind = Some(map.next_value()?),
                        "snapshot" => out.snapshot = Some(map.next_value()?),
                        "version" => out.version = Some(map.next_value()?),
                        "changes" => out.changes = Some(map.next_value()?),
                        _ => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_map(Fields(std::marker::PhantomData))
    }
}

impl<S> FeedFields<S> {
    /// The answer's variant, or which field it lacks.
    fn into_parts<E: serde::de::Error>(self) -> Result<Result<S, (u64, Vec<Change>)>, E> {
        match self.kind.ok_or_else(|| E::missing_field("type"))? {
            FeedKind::Snapshot => Ok(Ok(self.snapshot.ok_or_else(|| E::missing_field("snapshot"))?)),
            FeedKind::Changes => Ok(Err((
                self.version.ok_or_else(|| E::missing_field("version"))?,
                self.changes.ok_or_else(|| E::missing_field("changes"))?,
            ))),
        }
    }
}

impl<'de> Deserialize<'de> for FeedMessage {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match FeedFields::<Snapshot>::deserialize(d)?.into_parts()? {
            Ok(snapshot) => FeedMessage::Snapshot { snapshot },
            Err((version, changes)) => FeedMessage::Changes { version, changes },
        })
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for FeedAnswer<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match FeedFields::<&'a serde_json::value::RawValue>::deserialize(d)?.into_parts()? {
            Ok(snapshot) => FeedAnswer::Snapshot(snapshot),
            Err((version, changes)) => FeedAnswer::Changes { version, changes },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_messages_round_trip_through_json() {
        let msg = FeedMessage::Changes {
            version: 7,
            changes: vec![
                Change::DeletePreview { id: "pv_1".into() },
                Change::UpsertSandbox {
                    sandbox: Sandbox {
                        id: "abcd1234".into(),
                        tenant_id: "tn_1".into(),
                        address: "127.0.0.2".into(),
                        state: SandboxState::Running,
                        default_visibility: Visibility::Private,
                        wake_policy: WakePolicy::OnRequest,
                        preview_auth_sha256: None,
                        allow_preflight: false,
                    },
                },
            ],
        };
        let json = serde_json::to_string(&msg).expect("serialise");
        assert_eq!(serde_json::from_str::<FeedMessage>(&json).expect("parse"), msg);
    }

    #[test]
    fn a_feed_answer_reads_its_fields_in_any_order_and_skips_unknown_ones() {
        let changes =
            r#"{"changes":[{"op":"delete_tenant","id":"x"}],"extra":{"a":[1]},"version":3,"type":"changes"}"#;
        let want =
            FeedMessage::Changes { version: 3, changes: vec![Change::DeleteTenant { id: "x".into() }] };
        assert_eq!(serde_json::from_str::<FeedMessage>(changes).expect("parses"), want);
        let Ok(FeedAnswer::Changes { version: 3, changes }) = serde_json::from_str::<FeedAnswer>(changes)
        else {
            panic!("changes read as a FeedAnswer")
        };
        assert_eq!(changes.len(), 1);

        let snapshot = Snapshot { version: 9, ..Default::default() };
        let json =
            serde_json::to_string(&FeedMessage::Snapshot { snapshot: snapshot.clone() }).expect("json");
        assert!(json.starts_with(r#"{"type":"snapshot","snapshot":{"#), "{json}");
        let Ok(FeedAnswer::Snapshot(raw)) = serde_json::from_str::<FeedAnswer>(&json) else {
            panic!("a snapshot read as a FeedAnswer")
        };
        assert_eq!(raw.get(), serde_json::to_string(&snapshot).expect("json"));
        assert_eq!(serde_json::from_str::<Snapshot>(raw.get()).expect("parses"), snapshot);
    }

    #[test]
    fn a_feed_answer_without_its_fields_is_refused_by_name() {
        for (json, missing) in [
            (r#"{"changes":[],"version":1}"#, "type"),
            (r#"{"type":"snapshot"}"#, "snapshot"),
            (r#"{"type":"changes","changes":[]}"#, "version"),
            (r#"{"type":"changes","version":1}"#, "changes"),
        ] {
            let err = serde_json::from_str::<FeedMessage>(json).expect_err(json).to_string();
            assert!(err.contains(&format!("missing field `{missing}`")), "{json}: {err}");
        }
        let err = serde_json::from_str::<FeedMessage>(r#"{"type":"everything"}"#).expect_err("unknown type");
        assert!(err.to_string().contains("unknown variant"), "{err}");
    }

    /// Control is upgraded before its edges, so an edge must take a change carrying a field it does not know.
    #[test]
    fn unknown_fields_are_ignored() {
        let change = serde_json::from_str::<Change>(r#"{"op":"delete_tenant","id":"x","extra":1}"#);
        assert_eq!(change.expect("parses"), Change::DeleteTenant { id: "x".into() });
    }
}
