//! Every way a request can end at the edge instead of reaching a sandbox, and its SPEC §4 code and status.
//! `pages` turns one of these into a response; nothing else decides codes or statuses.

/// Why the edge answered itself.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EdgeError {
    #[error("There is nothing here. The preview may have been deleted or the address mistyped.")]
    NotFound,
    /// A custom domain whose owner has not yet proven it with its TXT record: not routed.
    #[error("This domain is not verified yet. Its owner must add the TXT record Portico asked for.")]
    DomainUnverified,
    #[error("This preview is private. Open it from the app that shared it, or add a valid token.")]
    TokenRequired,
    #[error("The token is not valid for this preview.")]
    TokenInvalid,
    #[error("The token for this preview has expired.")]
    TokenExpired,
    /// A password-protected share: the page is the password form.
    #[error("This link is protected by a password.")]
    SharePassword { share_id: String, wrong: bool },
    #[error("Too many requests. Try again in {retry_after_secs} s.")]
    RateLimited { retry_after_secs: u64 },
    #[error("The sandbox did not start in time.")]
    WakeTimeout,
    #[error("The sandbox could not be started.")]
    WakeFailed,
    #[error("The sandbox is asleep and is not set to wake on request.")]
    SandboxHibernated,
    #[error("Nothing is listening on port {port} yet.")]
    UpstreamUnreachable { port: u16 },
    /// Something answered, but not in HTTP: the port is bound by a program that is not a web server.
    #[error("The program on port {port} did not answer in HTTP. Is a web server listening there?")]
    UpstreamBadResponse { port: u16 },
    #[error("The app on port {port} did not answer in time.")]
    UpstreamTimeout { port: u16 },
    #[error("The request could not be understood.")]
    BadRequest,
    /// A deployment with no healthy instance, or whose release this edge cannot fetch.
    #[error("The app is not available right now.")]
    AppUnavailable,
}

impl EdgeError {
    /// The SPEC's error code, sent in `X-Edge-Error` and the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::DomainUnverified => "domain_unverified",
            Self::TokenRequired => "token_required",
            Self::TokenInvalid => "token_invalid",
            Self::TokenExpired => "token_expired",
            Self::SharePassword { .. } => "password_required",
            Self::RateLimited { .. } => "rate_limited",
            Self::WakeTimeout => "wake_timeout",
            Self::WakeFailed => "wake_failed",
            Self::SandboxHibernated => "sandbox_hibernated",
            Self::UpstreamUnreachable { .. } => "upstream_unreachable",
            Self::UpstreamTimeout { .. } => "upstream_timeout",
            Self::UpstreamBadResponse { .. } => "upstream_bad_response",
            Self::BadRequest => "bad_request",
            Self::AppUnavailable => "upstream_unreachable",
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            Self::NotFound | Self::DomainUnverified => 404,
            Self::TokenRequired | Self::TokenInvalid | Self::TokenExpired | Self::SharePassword { .. } => 401,
            Self::RateLimited { .. } => 429,
            Self::WakeTimeout | Self::WakeFailed | Self::SandboxHibernated => 503,
            Self::UpstreamUnreachable { .. } | Self::UpstreamBadResponse { .. } | Self::AppUnavailable => 502,
            Self::UpstreamTimeout { .. } => 504,
            Self::BadRequest => 400,
        }
    }

    /// A short title for the HTML page.
    pub fn title(&self) -> &'static str {
        match self {
            Self::NotFound => "Not found",
            Self::DomainUnverified => "Domain not verified",
            Self::TokenRequired => "Sign-in required",
            Self::TokenInvalid => "Access denied",
            Self::TokenExpired => "Link expired",
            Self::SharePassword { .. } => "Password required",
            Self::RateLimited { .. } => "Slow down",
            Self::WakeTimeout | Self::WakeFailed | Self::SandboxHibernated => "Sandbox unavailable",
            Self::UpstreamUnreachable { .. } => "Starting up",
            Self::UpstreamTimeout { .. } => "Timed out",
            Self::UpstreamBadResponse { .. } => "Bad answer",
            Self::BadRequest => "Bad request",
            Self::AppUnavailable => "Unavailable",
        }
    }

    /// Maps a Pingora failure while reaching the upstream to the SPEC's code.
    pub fn from_upstream(e: &pingora::Error, port: u16) -> Self {
        use pingora::ErrorType::*;
        match e.etype() {
            ConnectTimedout | ReadTimedout | WriteTimedout => Self::UpstreamTimeout { port },
            InvalidHTTPHeader | H1Error | H2Error | InvalidH2 => Self::UpstreamBadResponse { port },
            _ => Self::UpstreamUnreachable { port },
        }
    }
}
