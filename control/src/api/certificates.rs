//! Certificates (admin key): platform wildcards and other certificates uploaded as PEM, and an early
//! renewal of an ACME-managed name. Answers show names and validity; key material never leaves.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use portico_certs::{CertError, Certificate};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::doc::{BadRequest, Forbidden, Internal, InvalidField, NotFound, PayloadTooLarge, Unauthorized};
use crate::acme;
use crate::auth::Admin;
use crate::certificates::{self, CertificateView, UPLOAD};
use crate::db::Write;
use crate::error::{ApiError, ApiJson, ApiResult, PathId};
use crate::state::App;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutCertificate {
    /// The full chain, leaf first, PEM.
    cert_pem: String,
    /// The private key, PEM.
    key_pem: String,
}

/// The answer to a renewal request.
#[derive(Serialize, ToSchema)]
pub struct RenewalScheduled {
    hostname: String,
    /// Always `scheduled`.
    renewal: &'static str,
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
#[utoipa::path(
    put,
    operation_id = "certificates_put",
    path = "/v1/certificates/{hostname}",
    tag = "certificates",
    summary = "Upload a certificate (PEM) for a host name or one-label wildcard",
    security(("admin_key" = [])),
    params(("hostname" = String, Path, description = "A host name or `*.example.app`")),
    request_body = PutCertificate,
    responses(
        (status = 200, description = "Stored; edges serve it within a second", body = CertificateView),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 413, response = PayloadTooLarge),
        (status = 422, response = InvalidField),
        (status = 500, response = Internal),
    )
)]
pub async fn put(
    State(app): State<App>,
    _: Admin,
    PathId(raw): PathId,
    ApiJson(body): ApiJson<PutCertificate>,
) -> ApiResult<Json<CertificateView>> {
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
#[utoipa::path(
    get,
    operation_id = "certificates_list",
    path = "/v1/certificates",
    tag = "certificates",
    summary = "List every certificate, uploaded or issued by ACME",
    security(("admin_key" = [])),
    responses(
        (status = 200, description = "The certificates", body = [CertificateView]),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 500, response = Internal),
    )
)]
pub async fn list(State(app): State<App>, _: Admin) -> ApiResult<Json<Vec<CertificateView>>> {
    let mut conn = app.pool.acquire().await?;
    let rows = certificates::list(&mut conn).await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let mut v = row.view();
        if row.source == certificates::ACME {
            v.certificate = Some(certificates::status(&mut conn, &row.hostname).await?);
        }
        out.push(v);
    }
    Ok(Json(out))
}

/// `DELETE /v1/certificates/{hostname}`: edges stop serving it within a second. A name ACME still
/// manages gets a new certificate on its next round.
#[utoipa::path(
    delete,
    operation_id = "certificates_delete",
    path = "/v1/certificates/{hostname}",
    tag = "certificates",
    summary = "Delete a certificate",
    security(("admin_key" = [])),
    params(("hostname" = String, Path, description = "A host name or `*.example.app`")),
    responses(
        (status = 204, description = "Deleted; edges stop serving it within a second"),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 422, response = InvalidField),
        (status = 500, response = Internal),
    )
)]
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
#[utoipa::path(
    post,
    operation_id = "certificates_renew",
    path = "/v1/certificates/{hostname}/renew",
    tag = "certificates",
    summary = "Renew an ACME-managed certificate now",
    security(("admin_key" = [])),
    params(("hostname" = String, Path, description = "A host name ACME manages")),
    responses(
        (status = 202, description = "A new order is scheduled", body = RenewalScheduled),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 422, response = InvalidField),
        (status = 500, response = Internal),
    )
)]
pub async fn renew(
    State(app): State<App>,
    _: Admin,
    PathId(raw): PathId,
) -> ApiResult<(StatusCode, Json<RenewalScheduled>)> {
    let hostname = hostname(&raw)?;
    if !acme::renew_now(&app, &hostname).await? {
        return Err(ApiError::NotFound(format!("{hostname} is not managed by ACME")));
    }
    Ok((StatusCode::ACCEPTED, Json(RenewalScheduled { hostname, renewal: "scheduled" })))
}
