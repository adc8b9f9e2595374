//! `GET /metrics` on control. Every name starts with `portico_control_`, so control's and the edges'
//! series never collide when one Prometheus scrapes both (or `portico up` runs both in one process).
//! Values are read at scrape time — certificate states from the database, so every replica reports the
//! same — into a registry built for that scrape: nothing global to keep consistent. Labels are fixed
//! enums and the version: never a host name.

use std::sync::atomic::{AtomicI64, Ordering};

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use prometheus::{Encoder, Gauge, GaugeVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::certificates;
use crate::error::{ApiError, ApiResult};
use crate::state::{App, AppState};

/// Feed long-polls open in this process: about one per edge following this replica.
static FEED_POLLS: AtomicI64 = AtomicI64::new(0);

/// Counts one open long-poll for as long as it lives.
pub struct FeedPoll(());

impl FeedPoll {
    pub fn open() -> Self {
        FEED_POLLS.fetch_add(1, Ordering::Relaxed);
        Self(())
    }
}

impl Drop for FeedPoll {
    fn drop(&mut self) {
        FEED_POLLS.fetch_sub(1, Ordering::Relaxed);
    }
}

#[utoipa::path(
    get,
    operation_id = "metrics",
    path = "/metrics",
    tag = "meta",
    summary = "Prometheus metrics (`portico_control_*`): database, feed, certificates, process",
    responses(
        (status = 200, description = "Prometheus text format", content_type = "text/plain", body = String),
        (status = 500, response = crate::api::doc::Internal),
    )
)]
pub async fn handler(State(app): State<App>) -> ApiResult<Response> {
    let registry = Registry::new_custom(Some("portico_control".into()), None).map_err(internal)?;
    let gauge = |name: &str, help: &str| -> ApiResult<IntGauge> {
        let g = IntGauge::new(name, help).map_err(internal)?;
        registry.register(Box::new(g.clone())).map_err(internal)?;
        Ok(g)
    };
    let build = IntGaugeVec::new(Opts::new("build_info", "The running build (always 1)"), &["version"])
        .map_err(internal)?;
    registry.register(Box::new(build.clone())).map_err(internal)?;
    build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
    let feed_version = gauge("feed_version", "The newest feed version this replica knows of")?;
    feed_version.set(i64::try_from(*app.notify.borrow()).unwrap_or(i64::MAX));
    gauge("feed_long_polls", "Feed long-polls open now: about one per edge following this replica")?
        .set(FEED_POLLS.load(Ordering::Relaxed));
    let database_up = gauge("database_up", "1 when the database answered this scrape, else 0")?;

    // Without the database the rest is unknown: its series are left out rather than reported as zero.
    match certificate_metrics(&app, &registry).await {
        Ok(()) => database_up.set(1),
        Err(e) => tracing::warn!(error = %e, "metrics: the database did not answer"),
    }
    #[cfg(target_os = "linux")]
    registry
        .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
        .map_err(internal)?;

    let mut body = Vec::new();
    let encoder = TextEncoder::new();
    encoder.encode(&registry.gather(), &mut body).map_err(internal)?;
    Ok((StatusCode::OK, [(CONTENT_TYPE, encoder.format_type().to_string())], body).into_response())
}

/// `certificates{state}` (ACME's `pending`, `issued`, `failed`, and `uploaded`) and, when there is any
/// certificate, `certificate_soonest_expiry_timestamp_seconds`.
async fn certificate_metrics(app: &AppState, registry: &Registry) -> ApiResult<()> {
    let states: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, COUNT(*) FROM acme_hosts GROUP BY state").fetch_all(&app.pool).await?;
    let mut conn = app.pool.acquire().await?;
    let certs = certificates::list(&mut conn).await?;
    let count = |s: &str| states.iter().find(|(state, _)| state == s).map_or(0, |(_, n)| *n);
    let by_state = GaugeVec::new(
        Opts::new("certificates", "Certificates by state: ACME orders (pending, issued, failed) and uploads"),
        &["state"],
    )
    .map_err(internal)?;
    registry.register(Box::new(by_state.clone())).map_err(internal)?;
    for state in ["pending", "issued", "failed"] {
        by_state.with_label_values(&[state]).set(count(state) as f64);
    }
    let uploaded = certs.iter().filter(|c| c.source == "upload").count();
    by_state.with_label_values(&["uploaded"]).set(uploaded as f64);
    if let Some(not_after_ms) = certs.iter().map(|c| c.not_after).min() {
        let soonest = Gauge::new(
            "certificate_soonest_expiry_timestamp_seconds",
            "Unix time the first certificate control holds expires (absent: none)",
        )
        .map_err(internal)?;
        registry.register(Box::new(soonest.clone())).map_err(internal)?;
        soonest.set((not_after_ms / 1000) as f64);
    }
    Ok(())
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(format!("metrics: {e}"))
}
