//! Certificates (admin key): platform wildcards and other certificates uploaded as PEM, and an early
//! renewal of an ACME-managed name. Answers show names and validity; key material never leaves.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use portico_certs::{CertError, Certificate};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::Admin;
use crate::certificates::{self, UPLOAD};
use crate::db::Write;
use crate::error::{ApiError, ApiJson, ApiResult, PathId};
use crate::{acme, App};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutCertificate {
    cert_pem: String,
    key_pem: String,
}

fn hostname(raw: &str) -> ApiResult<String> {
    let name = raw.trim_end_matches('.').to_ascii_lowercase();
    if !portico_certs::valid_name(&name) {
        return Err(ApiError::invalid(
            "hostname",
            "must be a host name or a one-label wildcard such as *.sandbox.example.app",
        ));
    }
    Ok(name)
}

/// `PUT /v1/certificates/{hostname}`: stores the certificate; every edge serves it within a second.
pub async fn put(
    State(app): State<App>,
    _: Admin,
    PathId(raw): PathId,
    ApiJson(body): ApiJson<PutCertificate>,
) -> ApiResult<Json<Value>> {
    let hostname = hostname(&raw)?;
    let cert = Certificate::from_pem(body.cert_pem.as_bytes(), body.key_pem.as_bytes()).map_err(|e| {
        let field =
            if matches!(e, CertError::NoKey | CertError::KeyMismatch) { "key_pem" } else { "cert_pem" };
        ApiError::invalid(field, e)
    })?;
    if !cert.names.contains(&hostname) && !cert.covers(&hostname) {
        let names = cert.names.join(", ");
        return Err(ApiError::invalid("cert_pem", format!("the certificate names {names}, not {hostname}")));
    }
    if cert.not_after.saturating_mul(1000) <= crate::db::now_ms() {
        return Err(ApiError::invalid("cert_pem", "the certificate has expired"));
    }
    let mut write = Write::begin(&app.pool).await?;
    certificates::put(&mut write, &hostname, &body.cert_pem, &body.key_pem, UPLOAD, &cert).await?;
    write.commit(&app.notify).await?;
    let mut conn = app.pool.acquire().await?;
    let row =
        certificates::get(&mut conn, &hostname).await?.ok_or_else(|| ApiError::not_found("certificate"))?;
    Ok(Json(row.view()))
}

/// `GET /v1/certificates`: every certificate, uploaded or issued, with its ACME state where ACME manages it.
pub async fn list(State(app): State<App>, _: Admin) -> ApiResult<Json<Vec<Value>>> {
    let mut conn = app.pool.acquire().await?;
    let rows = certificates::list(&mut conn).await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let mut v = row.view();
        if row.source == certificates::ACME {
            v["certificate"] = certificates::status(&mut conn, &row.hostname).await?;
        }
        out.push(v);
    }
    Ok(Json(out))
}

/// `DELETE /v1/certificates/{hostname}`: edges stop serving it within a second. A name ACME still
/// manages gets a new certificate on its next round.
pub async fn delete(State(app): State<App>, _: Admin, PathId(raw): PathId) -> ApiResult<StatusCode> {
    let hostname = hostname(&raw)?;
    let mut write = Write::begin(&app.pool).await?;
    if !certificates::remove(&mut write, &hostname).await? {
        return Err(ApiError::not_found("certificate"));
    }
    write.commit(&app.notify).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/certificates/{hostname}/renew`: orders a new certificate for an ACME-managed name now
/// (after a key compromise, or to test renewal), instead of at two thirds of its lifetime.
pub async fn renew(
    State(app): State<App>,
    _: Admin,
    PathId(raw): PathId,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let hostname = hostname(&raw)?;
    if !acme::renew_now(&app, &hostname).await? {
        return Err(ApiError::NotFound(format!("{hostname} is not managed by ACME")));
    }
    Ok((StatusCode::ACCEPTED, Json(json!({ "hostname": hostname, "renewal": "scheduled" }))))
}
