//! The routing state an edge holds, as it travels over the feed and rests in the edge's `--state-dir`.
//!
//! The feed starts with a whole [`Snapshot`] and continues with [`Change`]s, each naming the feed version it
//! brings the edge to, so an edge that reconnects with `since=<its version>` catches up with no gap.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    Private,
    Public,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxState {
    Running,
    Hibernated,
    Waking,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WakePolicy {
    OnRequest,
    Off,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Branding {
    pub logo_url: String,
    pub accent_color: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub support_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_name: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub rps: u32,
    pub burst: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerMinute {
    pub per_minute: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
#[serde(deny_unknown_fields)]
pub struct Tenant {
    pub id: String,
    #[serde(default)]
    pub branding: Option<Branding>,
    /// `None`: the platform default applies.
    #[serde(default)]
    pub frame_ancestors: Option<Vec<String>>,
    #[serde(default)]
    pub rate_limits: RateLimits,
    /// Only present once verified: an unverified domain must not route.
    #[serde(default)]
    pub preview_domain: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sandbox {
    pub id: String,
    pub tenant_id: String,
    pub address: String,
    pub state: SandboxState,
    pub default_visibility: Visibility,
    pub wake_policy: WakePolicy,
    /// Hex SHA-256 of the sandbox's preview-auth token; the token itself never leaves control's response.
    #[serde(default)]
    pub preview_auth_sha256: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preview {
    pub id: String,
    pub slug: String,
    pub tenant_id: String,
    pub sandbox_id: String,
    pub port: u16,
    pub visibility: Visibility,
}

/// Settings that come from control's command line rather than the API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub host_templates: Vec<String>,
    pub default_frame_ancestors: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    pub version: u64,
    pub settings: Settings,
    pub tenants: Vec<Tenant>,
    pub sandboxes: Vec<Sandbox>,
    pub previews: Vec<Preview>,
}

/// One change to the state, carrying the object's whole current value (or its deletion).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Change {
    Settings { settings: Settings },
    UpsertTenant { tenant: Tenant },
    DeleteTenant { id: String },
    UpsertSandbox { sandbox: Sandbox },
    DeleteSandbox { id: String },
    UpsertPreview { preview: Preview },
    DeletePreview { id: String },
}

/// One answer of the feed endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum FeedMessage {
    /// The whole state at `snapshot.version`: the first answer, or when the edge is too far behind.
    Snapshot { snapshot: Snapshot },
    /// The changes after the edge's version, in order; applying them all brings it to `version`.
    Changes { version: u64, changes: Vec<Change> },
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
                    },
                },
            ],
        };
        let json = serde_json::to_string(&msg).expect("serialise");
        assert_eq!(serde_json::from_str::<FeedMessage>(&json).expect("parse"), msg);
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = serde_json::from_str::<Change>(r#"{"op":"delete_tenant","id":"x","extra":1}"#);
        assert!(err.is_err());
    }
}
