//! What control and edges agree on. Anything serialised between the two is defined here, once.

pub mod hosts;
pub mod ids;
pub mod packed;
pub mod snapshot;
pub mod tokens;
pub mod upstream;
pub mod usage;

pub use hosts::{
    normalize_host, HostMatch, HostTemplate, TemplateError, TemplateKind, DEFAULT_HOST_TEMPLATES,
};
pub use snapshot::{
    AcmeChallenge, ActiveVersion, Branding, Certificate, Change, CredentialLookup, Deployment, FeedAnswer,
    FeedMessage, HealthCheck, PerMinute, Preview, Rate, RateLimits, Revocation, Sandbox, SandboxState,
    Settings, Share, Snapshot, Tenant, VerifyKey, VersionTarget, Visibility, WakePolicy,
};
pub use upstream::{Cidr, CidrError};
