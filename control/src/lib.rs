//! Portico's control service: the JSON API platforms configure Portico with (SPEC §3), its database, and
//! the feed that edges follow.

mod acme;
mod api;
mod auth;
mod certificates;
mod config;
mod credentials;
mod db;
mod deployments;
mod dns;
mod error;
mod feed;
mod guessing;
mod keys;
mod metrics;
mod notify;
mod quotas;
mod releases;
mod service;
mod state;
mod validate;
mod wake;

pub use config::{ControlConfig, ControlError};
pub use error::ApiError;
pub use feed::snapshots::DEFAULT_LAG as DEFAULT_FEED_SNAPSHOT_LAG;
pub use quotas::Quotas;
pub use releases::ReleaseLimits;
pub use service::{check, check_wake_url, Control};
