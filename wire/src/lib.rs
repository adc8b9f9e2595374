//! What control and edges agree on. Anything serialised between the two is defined here, once.

pub mod hosts;
pub mod ids;
pub mod snapshot;

pub use hosts::{
    normalize_host, HostMatch, HostTemplate, TemplateError, TemplateKind, DEFAULT_HOST_TEMPLATES,
};
pub use snapshot::{
    Branding, Change, FeedMessage, PerMinute, Preview, Rate, RateLimits, Sandbox, SandboxState, Settings,
    Snapshot, Tenant, Visibility, WakePolicy,
};
