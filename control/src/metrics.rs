//! `GET /metrics` on control: the certificate states only control knows (ACME's pending, issued and
//! failed), read from the database at scrape time so every replica reports the same. Labels are the fixed
//! states: never a host name.

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};

use crate::certificates;
use crate::db::now_ms;
use crate::error::ApiResult;
use crate::state::App;

#[utoipa::path(
    get,
    operation_id = "metrics",
    path = "/metrics",
    tag = "meta",
    summary = "Prometheus metrics: certificate states",
    responses(
        (status = 200, description = "Prometheus text format", content_type = "text/plain", body = String),
        (status = 500, response = crate::api::doc::Internal),
    )
)]
pub async fn handler(State(app): State<App>) -> ApiResult<Response> {
    let states: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, COUNT(*) FROM acme_hosts GROUP BY state").fetch_all(&app.pool).await?;
    let mut conn = app.pool.acquire().await?;
    let certs = certificates::list(&mut conn).await?;
    let uploaded = certs.iter().filter(|c| c.source == "upload").count();
    let soonest = certs.iter().map(|c| c.not_after).min();

    let count = |s: &str| states.iter().find(|(state, _)| state == s).map_or(0, |(_, n)| *n);
    let mut out = String::from(
        "# HELP portico_certificates Certificates by state: ACME orders (pending, issued, failed) and uploads.\n\
         # TYPE portico_certificates gauge\n",
    );
    for state in ["pending", "issued", "failed"] {
        out.push_str(&format!("portico_certificates{{state=\"{state}\"}} {}\n", count(state)));
    }
    out.push_str(&format!("portico_certificates{{state=\"uploaded\"}} {uploaded}\n"));
    out.push_str(
        "# HELP portico_certificate_soonest_expiry_seconds Seconds until the first certificate expires.\n\
         # TYPE portico_certificate_soonest_expiry_seconds gauge\n",
    );
    if let Some(not_after) = soonest {
        out.push_str(&format!(
            "portico_certificate_soonest_expiry_seconds {}\n",
            (not_after - now_ms()) / 1000
        ));
    }
    Ok(([(CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}
