//! Usage counts edges send to control: requests and response bytes per sandbox or deployment and minute.
//!
//! A batch is named by its edge and sequence number when it is formed and resent under the same name
//! until control acknowledges it, so a resent batch is recognised and counted once.

use serde::{Deserialize, Serialize};

/// What the counted requests reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum UsageSubject {
    Sandbox,
    Deployment,
}

/// Counts for one subject in one minute.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UsageEntry {
    pub tenant_id: String,
    pub subject: UsageSubject,
    pub id: String,
    /// Unix milliseconds of the start of the minute the requests were answered in.
    pub minute: u64,
    pub requests: u64,
    pub bytes_out: u64,
}

/// The body of `POST /v1/edge/usage`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UsageBatch {
    /// Random per edge process.
    pub edge_id: String,
    /// Increases by one per batch formed by that edge process.
    pub seq: u64,
    pub entries: Vec<UsageEntry>,
}
