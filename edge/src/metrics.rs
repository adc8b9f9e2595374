//! Prometheus metrics (SPEC §5). Label values are bounded: tenant ids and fixed enums, never a host,
//! path, IP or token.

use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use prometheus::{
    register_gauge, register_histogram, register_int_counter_vec, register_int_gauge, Encoder, Gauge,
    Histogram, IntCounterVec, IntGauge, TextEncoder,
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
pub static UPSTREAM_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "portico_upstream_seconds",
        "Time from sending a request upstream to its response header",
        vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
    )
    .expect("register portico_upstream_seconds")
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

/// Touches every metric so that all series families appear from the first scrape.
pub fn init() {
    LazyLock::force(&REQUESTS);
    LazyLock::force(&TOKEN_CHECKS);
    LazyLock::force(&UPSTREAM_SECONDS);
    LazyLock::force(&CONFIG_VERSION);
    LazyLock::force(&CONFIG_AGE);
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
