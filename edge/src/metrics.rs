//! Prometheus metrics (SPEC §5) and the probes an operator's checks call, all on the metrics listener:
//! `GET /metrics`, `GET /healthz` (the process answers) and `GET /readyz` (it has a routing state that
//! control confirmed recently). Label values are bounded: tenant ids and fixed enums, never a host, path,
//! IP or token.

use std::sync::{Arc, LazyLock, OnceLock};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use prometheus::{
    register_gauge, register_histogram, register_histogram_vec, register_int_counter,
    register_int_counter_vec, register_int_gauge, Encoder, Gauge, GaugeVec, Histogram, HistogramVec,
    IntCounter, IntCounterVec, IntGauge, TextEncoder,
};

use crate::state::{unix_ms, EdgeState};

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

/// A credential of kind `kind` (`auth::Kind::index`: index, label) passed; each kind's series found once.
pub fn token_check_passed(kind: (usize, &str)) {
    static PASSED: [OnceLock<IntCounter>; 3] = [const { OnceLock::new() }; 3];
    PASSED[kind.0].get_or_init(|| TOKEN_CHECKS.with_label_values(&[kind.1, "ok"])).inc();
}

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

/// One tenant's series of the per-request metrics, each found by label the first time it is used and then
/// kept with the tenant's snapshot entry: a label look-up hashes every label and takes the vector's lock,
/// several times per request otherwise. Only series that have counted something exist, as before. The
/// handles (~700 bytes) are allocated at the tenant's first request: a tenant without traffic costs a word.
#[derive(Debug, Default)]
pub struct TenantMetrics(OnceLock<Box<Handles>>);

#[derive(Debug, Default)]
struct Handles {
    /// `portico_ratelimit_decisions_total`, by key kind and decision.
    decisions: [[OnceLock<IntCounter>; 2]; 3],
    /// `portico_ratelimit_observed_rps`, by key kind.
    observed: [OnceLock<Histogram>; 3],
    /// `portico_requests_total`, by route kind and the statuses most answers have (others by label).
    requests: [[OnceLock<IntCounter>; COMMON_STATUSES.len()]; 3],
}

/// The statuses whose request counters a tenant keeps at hand.
const COMMON_STATUSES: [u16; 12] = [200, 204, 206, 301, 302, 304, 401, 403, 404, 429, 502, 503];

impl TenantMetrics {
    fn handles(&self) -> &Handles {
        self.0.get_or_init(Box::default)
    }

    /// `kind` and `decision` index the labels `key` and `decision` (see `ratelimit::KeyKind`, `Outcome`).
    pub fn decision(&self, tenant: &str, kind: (usize, &str), decision: (usize, &str)) -> &IntCounter {
        self.handles().decisions[kind.0][decision.0]
            .get_or_init(|| RATELIMIT_DECISIONS.with_label_values(&[tenant, kind.1, decision.1]))
    }

    pub fn observed_rps(&self, tenant: &str, kind: (usize, &str)) -> &Histogram {
        self.handles().observed[kind.0]
            .get_or_init(|| RATELIMIT_OBSERVED_RPS.with_label_values(&[tenant, kind.1]))
    }

    /// Counts one answered request of a route of kind `route` (index, label) with `status`.
    pub fn request(&self, tenant: &str, route: (usize, &str), status: u16) {
        let code = http::StatusCode::from_u16(status).ok();
        let label = status_label(code.as_ref());
        match COMMON_STATUSES.iter().position(|s| *s == status) {
            Some(i) => self.handles().requests[route.0][i]
                .get_or_init(|| REQUESTS.with_label_values(&[tenant, route.1, label]))
                .inc(),
            None => REQUESTS.with_label_values(&[tenant, route.1, label]).inc(),
        }
    }
}

/// A status code is a bounded label (three digits); 0 means no response was written.
pub fn status_label(code: Option<&http::StatusCode>) -> &str {
    code.map_or("0", |c| c.as_str())
}

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

/// Never synced: the process's uptime, so one alert (`> 120`) catches an edge that lost control and one
/// that never reached it.
#[allow(clippy::expect_used)]
pub static CONFIG_AGE: LazyLock<Gauge> = LazyLock::new(|| {
    register_gauge!(
        "portico_config_age_seconds",
        "Seconds since control last confirmed the routing state; never confirmed: seconds since start"
    )
    .expect("register portico_config_age_seconds")
});

#[allow(clippy::expect_used)]
pub static CONFIG_LAST_SYNC: LazyLock<Gauge> = LazyLock::new(|| {
    register_gauge!(
        "portico_config_last_sync_timestamp_seconds",
        "Unix time control last confirmed the routing state (a saved state: when it was saved); 0: never"
    )
    .expect("register portico_config_last_sync_timestamp_seconds")
});

/// `1`, labelled with the version: which build each edge runs.
#[allow(clippy::expect_used)]
pub static BUILD_INFO: LazyLock<prometheus::IntGaugeVec> = LazyLock::new(|| {
    prometheus::register_int_gauge_vec!("portico_build_info", "The running build (always 1)", &["version"])
        .expect("register portico_build_info")
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

/// Unlabelled; the series is absent while no certificate is served, so "expires within 14 days" is just
/// `portico_certificate_soonest_expiry_timestamp_seconds - time() < 14 * 86400`.
#[allow(clippy::expect_used)]
pub static CERTIFICATE_SOONEST_EXPIRY: LazyLock<GaugeVec> = LazyLock::new(|| {
    prometheus::register_gauge_vec!(
        "portico_certificate_soonest_expiry_timestamp_seconds",
        "Unix time the first served certificate expires (absent: none served)",
        &[]
    )
    .expect("register portico_certificate_soonest_expiry_timestamp_seconds")
});

/// Sets (or, with `None`, removes) the soonest expiry of the served certificates, in unix seconds.
pub fn set_certificate_soonest_expiry(not_after: Option<i64>) {
    match not_after {
        Some(t) => CERTIFICATE_SOONEST_EXPIRY.with_label_values(&[]).set(t as f64),
        None => CERTIFICATE_SOONEST_EXPIRY.reset(),
    }
}
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
    LazyLock::force(&CONFIG_LAST_SYNC);
    LazyLock::force(&CERTIFICATE_SOONEST_EXPIRY);
    BUILD_INFO.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
    LazyLock::force(&ACCESS_LOG_DROPPED);
    for state in ["served", "expired", "invalid"] {
        CERTIFICATES.with_label_values(&[state]).set(0);
    }
    // CPU, memory, open files and start time of this process (`process_*`); registered once.
    #[cfg(target_os = "linux")]
    {
        let collector = prometheus::process_collector::ProcessCollector::for_self();
        if let Err(e) = prometheus::register(Box::new(collector)) {
            if !matches!(e, prometheus::Error::AlreadyReg) {
                tracing::warn!(error = %e, "process metrics unavailable");
            }
        }
    }
}

/// The routing state's age in milliseconds: since control last confirmed it, or since start if never.
fn config_age_ms(state: &EdgeState, now_ms: u64) -> u64 {
    now_ms.saturating_sub(state.last_sync_unix_ms().unwrap_or(state.started_unix_ms()))
}

/// `GET /readyz`: ready while control confirmed the state less than `max_age` ago; else why not.
pub fn readiness(last_sync_ms: Option<u64>, now_ms: u64, max_age: Duration) -> Result<String, String> {
    let Some(last) = last_sync_ms else {
        return Err("never synced with control".into());
    };
    let age = Duration::from_millis(now_ms.saturating_sub(last));
    if age >= max_age {
        return Err(format!("routing state {}s old", age.as_secs()));
    }
    Ok(format!("ready: routing state {}s old", age.as_secs()))
}

/// Serves `/metrics`, `/healthz` and `/readyz` on the metrics address.
pub struct MetricsApp {
    pub state: Arc<EdgeState>,
    /// `/readyz` answers 503 once the state is this old (`--ready-max-age`).
    pub ready_max_age: Duration,
}

fn text(status: u16, body: String) -> http::Response<Vec<u8>> {
    http::Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .header("cache-control", "no-store")
        .body(format!("{body}\n").into_bytes())
        .unwrap_or_default()
}

#[async_trait]
impl ServeHttp for MetricsApp {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let builder = http::Response::builder();
        let now_ms = unix_ms(SystemTime::now());
        match session.req_header().uri.path() {
            "/metrics" => {}
            "/healthz" => return text(200, "ok".into()),
            "/readyz" => {
                return match readiness(self.state.last_sync_unix_ms(), now_ms, self.ready_max_age) {
                    Ok(ready) => text(200, ready),
                    Err(reason) => text(503, reason),
                };
            }
            _ => return text(404, "not found".into()),
        }
        CONFIG_VERSION.set(self.state.load().version as i64);
        CONFIG_AGE.set(config_age_ms(&self.state, now_ms) as f64 / 1000.0);
        CONFIG_LAST_SYNC.set(self.state.last_sync_unix_ms().unwrap_or(0) as f64 / 1000.0);
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

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_secs(60);

    #[test]
    fn a_tenants_kept_handles_count_into_the_labelled_series() {
        let m = TenantMetrics::default();
        let series = |status| REQUESTS.with_label_values(&["tn_handles", "preview", status]).get();
        let (ok, odd) = (series("200"), series("418"));
        m.request("tn_handles", (1, "preview"), 200);
        m.request("tn_handles", (1, "preview"), 200);
        m.request("tn_handles", (1, "preview"), 418);
        assert_eq!((series("200") - ok, series("418") - odd), (2, 1));

        let decisions = || RATELIMIT_DECISIONS.with_label_values(&["tn_handles", "token", "limited"]).get();
        let before = decisions();
        m.decision("tn_handles", (1, "token"), (1, "limited")).inc();
        assert_eq!(decisions() - before, 1);
    }

    #[test]
    fn never_synced_is_not_ready() {
        assert_eq!(readiness(None, 1_000_000, MAX), Err("never synced with control".to_string()));
    }

    #[test]
    fn a_state_confirmed_within_the_max_age_is_ready_and_an_older_one_is_not() {
        let now = 1_000_000_000;
        assert!(readiness(Some(now - 59_000), now, MAX).is_ok());
        assert!(readiness(Some(now), now, MAX).is_ok());
        assert_eq!(readiness(Some(now - 75_400), now, MAX), Err("routing state 75s old".to_string()));
        assert!(readiness(Some(now - 60_000), now, MAX).is_err(), "at the limit it is stale");
    }

    #[test]
    fn a_state_never_confirmed_ages_from_the_start_of_the_process() {
        let state = EdgeState::new(crate::state::Snapshot::empty());
        let now = state.started_unix_ms() + 5_000;
        assert_eq!(config_age_ms(&state, now), 5_000);
        state.set_synced_at(state.started_unix_ms() + 4_000);
        assert_eq!(config_age_ms(&state, now), 1_000);
    }

    #[test]
    fn certificate_expiry_is_a_timestamp_or_absent() {
        init();
        let present = || {
            prometheus::gather()
                .iter()
                .find(|f| f.get_name() == "portico_certificate_soonest_expiry_timestamp_seconds")
                .map(|f| f.get_metric().iter().map(|m| m.get_gauge().get_value()).collect::<Vec<_>>())
                .unwrap_or_default()
        };
        set_certificate_soonest_expiry(Some(1_900_000_000));
        assert_eq!(present(), vec![1_900_000_000.0]);
        set_certificate_soonest_expiry(None);
        assert!(present().is_empty(), "no certificate: no sample, not a sentinel");
    }
}
