//! Prometheus metrics (SPEC §5). Label values are bounded: tenant ids and fixed enums, never a host,
//! path, IP or token.

use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use prometheus::{
    register_gauge, register_histogram, register_histogram_vec, register_int_counter,
    register_int_counter_vec, register_int_gauge, Encoder, Gauge, Histogram, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, TextEncoder,
};

use crate::state::EdgeState;

// Registration only fails on a duplicate name, which is a programming error caught by any test run.
#[allow(clippy::expect_used)]
pub static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "portico_requests_total",
        "Requests answered by the edge",
        &["tenant", "route", "status"]
    )
    .expect("register portico_requests_total")
});

#[allow(clippy::expect_used)]
pub static TOKEN_CHECKS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "portico_token_checks_total",
        "Credential checks by kind and outcome",
        &["kind", "outcome"]
    )
    .expect("register portico_token_checks_total")
});

#[allow(clippy::expect_used)]
pub static CREDENTIAL_LOOKUPS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "portico_credential_lookups_total",
        "Hashed credentials not in the snapshot, by what the look-up found (found, not_found, over_budget, error)",
        &["outcome"]
    )
    .expect("register portico_credential_lookups_total")
});

#[allow(clippy::expect_used)]
pub static CREDENTIAL_LOOKUPS_SENT: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "portico_credential_lookups_sent_total",
        "Credential look-up requests sent to control"
    )
    .expect("register portico_credential_lookups_sent_total")
});

#[allow(clippy::expect_used)]
pub static RATELIMIT_DECISIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "portico_ratelimit_decisions_total",
        "Rate-limit checks by tenant, key (ip, token, auth_failures) and decision (allowed, limited)",
        &["tenant", "key", "decision"]
    )
    .expect("register portico_ratelimit_decisions_total")
});

/// One observation per check, so its quantiles say what share of requests comes from keys at or below a
/// rate: the limit that would refuse no more than 1 % of today's requests is the 99th percentile.
#[allow(clippy::expect_used)]
pub static RATELIMIT_OBSERVED_RPS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "portico_ratelimit_observed_rps",
        "Request rate (per second) of the checked key at decision time; for auth_failures, its failure rate",
        &["tenant", "key"],
        vec![
            0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0,
            5000.0
        ]
    )
    .expect("register portico_ratelimit_observed_rps")
});

#[allow(clippy::expect_used)]
pub static UPSTREAM_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "portico_upstream_seconds",
        "Time from sending a request upstream to its response header",
        vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
    )
    .expect("register portico_upstream_seconds")
});

#[allow(clippy::expect_used)]
pub static WAKES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "portico_wakes_total",
        "Wakes this edge asked control for, one per sandbox however many requests waited, by outcome \
         (woken, failed, timeout, disabled)",
        &["outcome"]
    )
    .expect("register portico_wakes_total")
});

#[allow(clippy::expect_used)]
pub static WAKE_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "portico_wake_seconds",
        "Time from the first request for a hibernated sandbox to the wake's outcome",
        vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0]
    )
    .expect("register portico_wake_seconds")
});

#[allow(clippy::expect_used)]
pub static CONFIG_VERSION: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("portico_config_version", "Feed version of the routing state in force")
        .expect("register portico_config_version")
});

#[allow(clippy::expect_used)]
pub static CONFIG_AGE: LazyLock<Gauge> = LazyLock::new(|| {
    register_gauge!(
        "portico_config_age_seconds",
        "Seconds since control last confirmed the routing state (-1: never since start)"
    )
    .expect("register portico_config_age_seconds")
});

/// Certificates this edge holds, by `state`: `served`, `expired` (left out of the store), `invalid` (files
/// in `--certs-dir` that could not be used). Never labelled by host name.
#[allow(clippy::expect_used)]
pub static CERTIFICATES: LazyLock<prometheus::IntGaugeVec> = LazyLock::new(|| {
    prometheus::register_int_gauge_vec!(
        "portico_certificates",
        "Certificates held by the edge, by state (served, expired, invalid)",
        &["state"]
    )
    .expect("register portico_certificates")
});

#[allow(clippy::expect_used)]
pub static CERTIFICATE_SOONEST_EXPIRY: LazyLock<Gauge> = LazyLock::new(|| {
    register_gauge!(
        "portico_certificate_soonest_expiry_seconds",
        "Seconds until the first served certificate expires (-1: none served)"
    )
    .expect("register portico_certificate_soonest_expiry_seconds")
});

#[allow(clippy::expect_used)]
pub static ACCESS_LOG_DROPPED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "portico_access_log_dropped_total",
        "Access-log lines dropped because the writer was behind (the request was not held up)"
    )
    .expect("register portico_access_log_dropped_total")
});

/// Touches every metric so that all series families appear from the first scrape.
pub fn init() {
    LazyLock::force(&REQUESTS);
    LazyLock::force(&TOKEN_CHECKS);
    LazyLock::force(&RATELIMIT_DECISIONS);
    LazyLock::force(&RATELIMIT_OBSERVED_RPS);
    LazyLock::force(&CREDENTIAL_LOOKUPS);
    LazyLock::force(&CREDENTIAL_LOOKUPS_SENT);
    LazyLock::force(&UPSTREAM_SECONDS);
    LazyLock::force(&WAKES);
    LazyLock::force(&WAKE_SECONDS);
    LazyLock::force(&CONFIG_VERSION);
    LazyLock::force(&CONFIG_AGE);
    LazyLock::force(&ACCESS_LOG_DROPPED);
    for state in ["served", "expired", "invalid"] {
        CERTIFICATES.with_label_values(&[state]).set(0);
    }
    CERTIFICATE_SOONEST_EXPIRY.set(-1.0);
}

/// Serves `GET /metrics` on the metrics address.
pub struct MetricsApp {
    pub state: Arc<EdgeState>,
}

#[async_trait]
impl ServeHttp for MetricsApp {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let builder = http::Response::builder();
        if session.req_header().uri.path() != "/metrics" {
            return builder.status(404).body(b"not found\n".to_vec()).unwrap_or_default();
        }
        CONFIG_VERSION.set(self.state.load().version as i64);
        CONFIG_AGE.set(self.state.config_age_secs().unwrap_or(-1.0));
        let mut body = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&prometheus::gather(), &mut body) {
            tracing::error!(error = %e, "encoding metrics");
            return builder.status(500).body(Vec::new()).unwrap_or_default();
        }
        builder
            .status(200)
            .header("content-type", encoder.format_type())
            .header("content-length", body.len())
            .body(body)
            .unwrap_or_default()
    }
}
